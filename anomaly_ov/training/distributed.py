"""Data-parallel training on 1 or N processes with the same code (accelerate / DDP).

Launch with ``python`` (one process), ``torchrun --nproc_per_node N`` or ``accelerate launch``; accelerate
reads the launcher's environment, picks NCCL on GPUs and gloo on CPUs, and wraps the model in DDP.

The data order is planned here, not by a framework sampler, so that it depends only on (seed, epoch) and
not on the number of processes: every optimizer step takes the next ``global_batch_size`` items of the
epoch's permutation, and rank ``r`` of ``W`` takes items ``r, r + W, ...`` of it. A run resumed at an epoch
boundary therefore sees exactly the batches it would have seen, and 1 and N processes see the same global
batches. The last, smaller batch of an epoch is kept when every rank gets at least one item.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator


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
) -> Accelerator:
    """The accelerate state of this process (DDP when launched with several processes).

    Args:
        cpu: Force the CPU even where a GPU is present.
        mixed_precision: "no", "fp16" or "bf16".
        log_with: Experiment tracker ("wandb") or None.
        project_dir: Where trackers write.
    """
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with=log_with, project_dir=project_dir)


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
