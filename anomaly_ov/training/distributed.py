"""Data-parallel training on 1 or N processes with the same code (accelerate / DDP).

Launch with ``python`` (one process), ``torchrun --nproc_per_node N`` or ``accelerate launch``; accelerate
reads the launcher's environment, picks NCCL on GPUs and gloo on CPUs, and wraps the model in DDP.

The data order is planned here, not by a framework sampler, so that it depends only on (seed, epoch) and
not on the number of processes: every optimizer step takes the next ``global_batch_size`` items of the
epoch's permutation, and rank ``r`` of ``W`` takes items ``r, r + W, ...`` of it. A run resumed at an epoch
boundary therefore sees exactly the batches it would have seen, and 1 and N processes see the same global
batches. The last, smaller batch of an epoch is kept when every rank gets at least one item.
"""

import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from anomaly_ov.processes import process_alive


@dataclass(frozen=True)
class EpochPlan:
    """This rank's micro-batches of one epoch.

    Attributes:
        micro_batches: Item indices of each micro-batch, in order.
        step_of: Optimizer step (within the epoch) of each micro-batch.
        last_in_step: Whether a micro-batch is this rank's last of its step (the one whose backward
            synchronises the gradients and after which the optimizer steps).
        step_sizes: Global number of items of each step (all ranks together).
    """

    micro_batches: list[list[int]]
    step_of: list[int]
    last_in_step: list[bool]
    step_sizes: list[int]

    @property
    def num_steps(self) -> int:
        """Optimizer steps in the epoch."""
        return len(self.step_sizes)


def steps_per_epoch(num_items: int, global_batch_size: int, world_size: int) -> int:
    """Optimizer steps of an epoch: full global batches, plus the remainder if every rank gets an item."""
    full, remainder = divmod(num_items, global_batch_size)
    return full + int(remainder >= world_size)


def plan_epoch(
    num_items: int,
    global_batch_size: int,
    micro_batch_size: int | None,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
) -> EpochPlan:
    """This rank's share of an epoch (see the module docstring).

    Args:
        num_items: Items in the dataset.
        global_batch_size: Items per optimizer step over all ranks.
        micro_batch_size: Items per forward/backward on one rank (gradient accumulation below the rank's
            share); None: the rank's whole share at once.
        rank: This process's rank.
        world_size: Number of processes.
        seed: Run seed.
        epoch: Epoch index (0-based).

    Returns:
        The plan.

    Raises:
        ValueError: If the global batch is smaller than the number of processes or the dataset too small.
    """
    if global_batch_size < world_size:
        raise ValueError(f"global_batch_size={global_batch_size} is smaller than the {world_size} processes.")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be positive or null.")
    num_steps = steps_per_epoch(num_items, global_batch_size, world_size)
    if num_steps == 0:
        raise ValueError(f"{num_items} training items are fewer than the {world_size} processes.")
    order = np.random.default_rng([seed, epoch]).permutation(num_items).tolist()
    plan = EpochPlan([], [], [], [])
    for step in range(num_steps):
        batch = order[step * global_batch_size : (step + 1) * global_batch_size]
        share = batch[rank::world_size]
        size = micro_batch_size or len(share)
        chunks = [share[i : i + size] for i in range(0, len(share), size)]
        plan.micro_batches.extend(chunks)
        plan.step_of.extend([step] * len(chunks))
        plan.last_in_step.extend([i == len(chunks) - 1 for i in range(len(chunks))])
        plan.step_sizes.append(len(batch))
    return plan


def restart_period(num_steps: int, restart_every_epochs: float) -> int:
    """Optimizer steps between warm restarts of the cosine schedule (at least 1)."""
    if restart_every_epochs <= 0:
        raise ValueError(f"restart_every_epochs={restart_every_epochs} must be positive.")
    return max(1, math.floor(num_steps * restart_every_epochs + 0.5))


def make_accelerator(
    cpu: bool = False,
    mixed_precision: str = "no",
    log_with: str | None = None,
    project_dir: str | None = None,
    timeout_minutes: float = 30.0,
) -> Accelerator:
    """The accelerate state of this process (DDP when launched with several processes).

    Args:
        cpu: Force the CPU even where a GPU is present.
        mixed_precision: "no", "fp16" or "bf16".
        log_with: Experiment tracker ("wandb") or None.
        project_dir: Where trackers write.
        timeout_minutes: Collective timeout while the run sets up (the feature-cache build); training then
            uses ``trainer.fit.collective_timeout_s``.
    """
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))]
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        log_with=log_with,
        project_dir=project_dir,
        kwargs_handlers=handlers,
    )


def start_trackers(
    accelerator: Accelerator,
    log_with: str,
    project: str,
    mode: str,
    config: dict,
    run_dir: Path,
) -> None:
    """Starts the experiment tracker (wandb, offline by default) writing into the run folder.

    Args:
        accelerator: The run's accelerator (built with ``log_with``).
        log_with: Tracker name ("wandb").
        project: Tracker project.
        mode: Tracker mode ("offline", "online", "disabled").
        config: The resolved run config, recorded with the run.
        run_dir: The run folder (the tracker's files go there; the run is named after it).
    """
    accelerator.init_trackers(
        project,
        config=config,
        init_kwargs={log_with: {"mode": mode, "dir": str(run_dir), "name": run_dir.name}},
    )


def quiet_other_ranks(is_main_process: bool) -> None:
    """Leaves progress logging to the main process: the others log warnings and errors only.

    Every process inherits the same Hydra log handlers (console and ``<run_dir>/<task>.log``); without this
    each INFO line would appear once per process.
    """
    if not is_main_process:
        logging.getLogger().setLevel(logging.WARNING)


def shutdown(accelerator: Accelerator) -> None:
    """Ends the trackers and tears the process group down explicitly.

    gloo sometimes aborts at interpreter exit when the group is left to the garbage collector; destroying it
    here, after a barrier, lets every process exit cleanly.
    """
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


ROSTER_DIR = "ranks"
# the words of gloo's and NCCL's errors when a peer is gone or does not answer
_COLLECTIVE_FAILURE_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket")


class RankFailureError(RuntimeError):
    """A collective operation failed because another rank died or stopped answering."""


def set_collective_timeout(seconds: float | None) -> None:
    """Sets how long a collective waits for the other ranks (no effect on one process).

    A rank that dies is usually noticed at once (its sockets close); one that hangs, or a transport that
    does not notice, holds the others until this timeout (PyTorch's default is 30 minutes).
    """
    if seconds is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    c10d = torch.distributed.distributed_c10d
    # every group: DeepSpeed's data-parallel groups were created with the set-up timeout
    for group in [None, *getattr(getattr(c10d, "_world", None), "pg_map", {})]:
        c10d.set_timeout(timedelta(seconds=seconds), group)


def write_roster(run_dir: Path, rank: int) -> None:
    """Records this rank's host and process id in ``<run_dir>/ranks/rank_<r>.json`` (read after a failure)."""
    folder = run_dir / ROSTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid()}
    (folder / f"rank_{rank}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def describe_other_ranks(run_dir: Path, rank: int, world_size: int) -> str:
    """Which other ranks are gone, from the roster: a process on this host is checked, others are not.

    Returns:
        E.g. ``"rank 1 (pid 4242 on node3) is gone"`` or ``"ranks 2, 3 on node4 could not be checked"``.
    """
    host = socket.gethostname()
    dead, unchecked = [], []
    for other in range(world_size):
        if other == rank:
            continue
        path = run_dir / ROSTER_DIR / f"rank_{other}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            unchecked.append(f"rank {other} (no roster entry)")
            continue
        where = f"pid {record['pid']} on {record['host']}"
        if record["host"] != host:
            unchecked.append(f"rank {other} ({where})")
        elif not process_alive(int(record["pid"])):
            dead.append(f"rank {other} ({where})")
    parts = []
    if dead:
        parts.append(f"{', '.join(dead)} {'is' if len(dead) == 1 else 'are'} gone")
    if unchecked:
        parts.append(f"{', '.join(unchecked)} could not be checked from here")
    return "; ".join(parts) or "every other rank is still running here (one stopped answering)"


def is_collective_failure(error: BaseException) -> bool:
    """Whether an exception is, or was caused by, a failed collective (a dead or hung peer).

    The chain of causes is followed: a checkpoint writer may wrap the collective's error in its own.
    """
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, torch.distributed.DistError):
            return True
        text = str(error).lower()
        if isinstance(error, RuntimeError) and any(word in text for word in _COLLECTIVE_FAILURE_WORDS):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


@contextmanager
def rank_failures(accelerator: Accelerator, run_dir: Path, last_checkpoint) -> Iterator[None]:
    """Turns a failed collective of a multi-process run into a :class:`RankFailureError` saying what happened.

    Args:
        accelerator: The run's accelerator.
        run_dir: The run folder (its roster names the ranks).
        last_checkpoint: ``last_checkpoint() -> Path | None``: the newest complete checkpoint.

    Raises:
        RankFailureError: Naming this rank, the ranks that are gone and the last complete checkpoint.
    """
    try:
        yield
    except Exception as error:
        if accelerator.num_processes == 1 or not is_collective_failure(error):
            raise
        checkpoint = last_checkpoint()
        resume = (
            f"the last complete checkpoint is {checkpoint}; rerun the same command with run_dir={run_dir} "
            "to continue from it"
            if checkpoint is not None
            else "no checkpoint was completed; a rerun starts from the beginning"
        )
        message = (
            f"rank {accelerator.process_index} of {accelerator.num_processes}: a collective operation "
            f"failed ({describe_other_ranks(run_dir, accelerator.process_index, accelerator.num_processes)})"
            f"; {resume}. Cause: {str(error).splitlines()[0][:300]}"
        )
        logging.getLogger(__name__).error(message)
        raise RankFailureError(message) from error
