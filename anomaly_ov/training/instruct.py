"""Stage 2: instruction tuning of Anomaly-OV with DeepSpeed ZeRO through accelerate (SPEC §4).

:class:`InstructTrainer` runs the loop: forward on a micro-batch (the model's own loss, computed only at
labelled positions), ``accelerator.backward`` (DeepSpeed accumulates the gradients and steps the optimizer
and the scheduler at the accumulation boundary), logging, checkpoints and resumption. What trains is set on
the model beforehand (:mod:`anomaly_ov.training.tuning`); the ZeRO config comes with the accelerator
(:mod:`anomaly_ov.training.deepspeed`).

Data order. Each epoch's order is a seeded permutation (or the length-grouped order of
:class:`~anomaly_ov.data.sampling.LengthGroupedSampler`) cut into per-rank batches of
``per_device_batch_size``; ``world_size`` consecutive batches form one micro-step (batch ``i`` goes to rank
``i % world_size``) and ``gradient_accumulation_steps`` micro-steps one optimizer step. The order depends only
on (seed, epoch), so with one sample per batch and a fixed global batch, 1 and N processes see the same
global batches; a last incomplete optimizer step of an epoch is left out (logged, never silent).

Loss. Each micro-batch's loss is the mean cross-entropy over its labelled tokens; DeepSpeed averages the
gradients over accumulation steps and ranks, so an optimizer step follows the mean of its micro-batch losses
(the release's Trainer does the same). The logged loss of a step is that mean over all ranks.

Checkpoints. Every ``save_every_n_steps`` optimizer steps and at the end, ``<run_dir>/checkpoints/step_<N>/``
holds accelerate's state (DeepSpeed's model/optimizer/scheduler shards, every rank's random state) and
``trainer_state.json`` (epoch, position in the epoch, the loss history). A folder is complete once that JSON
exists (it is written last); resuming loads the newest complete one and continues at the next step, so an
interrupted run reproduces the uninterrupted run's losses. ZeRO's optimizer shards belong to the process
count that wrote them: resuming on another count is refused (:func:`check_process_count`).

Faults. A preemption signal (:mod:`anomaly_ov.training.preemption`) stops the run after the current step
with a checkpoint; a step whose gradients are not finite is not applied by DeepSpeed (fp16, bf16, or
float32 with gradient clipping), and :mod:`anomaly_ov.training.nonfinite` stops the run or skips the step; a
rank that dies ends the others with a message naming it (:func:`~anomaly_ov.training.distributed.
rank_failures`).
"""

import json
import logging
import math
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from anomaly_ov.atomic_files import atomic_write_text, write_failure
from anomaly_ov.data.sampling import LengthGroupedSampler
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.training.deepspeed import (
    full_parameters,
    outside_parameters,
    register_outside_parameters,
    zero_stage,
)
from anomaly_ov.training.distributed import rank_failures, set_collective_timeout, write_roster
from anomaly_ov.training.nonfinite import NonFiniteError, NonFinitePolicy
from anomaly_ov.training.preemption import PreemptionGuard, clear_marker, ignore_in_worker, write_marker

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
METRICS_NAME = "metrics.jsonl"
_STEP_PREFIX = "step_"


@dataclass(frozen=True)
class EpochSteps:
    """This rank's micro-batches of one epoch, grouped by optimizer step.

    Attributes:
        steps: ``steps[s][k]``: item indices of this rank's ``k``-th micro-batch of step ``s``.
        samples: Global number of samples of each step.
        left_out: Samples of the epoch in no step (the last incomplete optimizer step).
    """

    steps: list[list[list[int]]]
    samples: list[int]
    left_out: int


def plan_epoch_steps(
    batches: Sequence[Sequence[int]], world_size: int, accumulation: int, rank: int
) -> EpochSteps:
    """Cuts an epoch's per-rank batches (global order) into this rank's optimizer steps.

    Args:
        batches: Per-rank batches in global order: batch ``i`` belongs to rank ``i % world_size``.
        world_size: Number of processes.
        accumulation: Micro-batches per optimizer step on one rank.
        rank: This process's rank.

    Returns:
        The rank's steps; a trailing step with fewer than ``world_size * accumulation`` non-empty batches is
        left out (DeepSpeed steps after exactly ``accumulation`` micro-batches on every rank).
    """
    per_step = world_size * accumulation
    steps: list[list[list[int]]] = []
    samples: list[int] = []
    used = 0
    for start in range(0, len(batches) - per_step + 1, per_step):
        block = [list(batch) for batch in batches[start : start + per_step]]
        if any(len(batch) == 0 for batch in block):
            break
        steps.append(block[rank::world_size])
        samples.append(sum(len(batch) for batch in block))
        used += samples[-1]
    return EpochSteps(steps, samples, sum(len(batch) for batch in batches) - used)


def epoch_batches(
    num_items: int,
    per_device_batch_size: int,
    world_size: int,
    seed: int,
    epoch: int,
    lengths: Sequence[int] | None = None,
    multimodal: Sequence[bool] | None = None,
    shuffle: bool = True,
) -> list[list[int]]:
    """The epoch's per-rank batches in global order: seeded shuffle, or length-grouped when lengths are given,
    or the dataset's own order.

    Args:
        num_items: Samples in the dataset.
        per_device_batch_size: Samples per batch.
        world_size: Number of processes.
        seed: Run seed.
        epoch: Epoch index.
        lengths: Token length of each sample: group by length (the release's ``group_by_modality_length``).
        multimodal: Whether each sample has images (with ``lengths``).
        shuffle: Without ``lengths``: a seeded permutation (True) or the dataset's order (False: a file laid
            out in pairs, e.g. an anomalous and a normal image of one class, keeps each pair in one step).
    """
    if lengths is not None:
        sampler = LengthGroupedSampler(
            lengths,
            multimodal if multimodal is not None else [True] * len(lengths),
            batch_size=per_device_batch_size,
            world_size=world_size,
            seed=seed,
        )
        sampler.set_epoch(epoch)
        return sampler.batches()
    order = (
        np.random.default_rng([seed, epoch]).permutation(num_items).tolist() if shuffle else range(num_items)
    )
    return [list(order[i : i + per_device_batch_size]) for i in range(0, num_items, per_device_batch_size)]


@dataclass
class InstructResult:
    """What a stage-2 run produced.

    Attributes:
        losses: Loss of every optimizer step so far (resumed runs included).
        learning_rates: Learning rate of every step.
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: Optimizer steps of the whole schedule.
        resumed_from_step: Steps already done when this invocation started (0 for a fresh run).
        finished: Whether the schedule is complete (False after ``stop_after_steps``).
        left_out_per_epoch: Samples of each epoch in no optimizer step.
        preempted: The signal that stopped this invocation at a checkpoint (None: not stopped by one).
        nonfinite_steps: Steps skipped for non-finite gradients (``nonfinite=skip``), with their samples.
    """

    losses: list[float]
    learning_rates: list[float]
    steps_per_epoch: int
    total_steps: int
    resumed_from_step: int
    finished: bool
    left_out_per_epoch: list[int] = field(default_factory=list)
    preempted: str | None = None
    nonfinite_steps: list[dict] = field(default_factory=list)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA's allocator peak on a GPU, the resident-set peak on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def latest_step_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/step_<N>`` folder of a run, or None."""
    folder = run_dir / CHECKPOINTS_DIR
    found = [
        path
        for path in (folder.iterdir() if folder.is_dir() else [])
        if path.name.startswith(_STEP_PREFIX)
        and path.name[len(_STEP_PREFIX) :].isdigit()
        and (path / STATE_NAME).is_file()
    ]
    return max(found, key=lambda p: int(p.name[len(_STEP_PREFIX) :]), default=None)


def check_process_count(checkpoint: Path, num_processes: int) -> None:
    """Refuses to resume a checkpoint written by another number of processes.

    DeepSpeed's ZeRO checkpoint holds one optimizer shard and one random state per process, cut for that
    count; loading them on another count would fail or mix states, so the run is refused up front.

    Raises:
        ValueError: Naming both counts and the checkpoint.
    """
    state = json.loads((checkpoint / STATE_NAME).read_text())
    written = state.get("num_processes") or len(list(checkpoint.glob("random_states_*.pkl"))) or None
    if written is not None and written != num_processes:
        raise ValueError(
            f"{checkpoint} was written by {written} processes; this run has {num_processes}. ZeRO's "
            "optimizer shards are cut per process, so a stage-2 run resumes on the same count: relaunch with "
            f"{written} processes, or start a new run_dir."
        )


class InstructTrainer:
    """Fits Anomaly-OV on instruction data with DeepSpeed ZeRO (see the module docstring).

    Args:
        model: The model, its trainable parameters already chosen (:func:`~anomaly_ov.training.tuning.
            apply_tuning`).
        optimizer_factory: ``optimizer_factory(parameters) -> Optimizer`` (a partial AdamW).
        scheduler_factory: ``scheduler_factory(optimizer, num_warmup_steps=, num_training_steps=)`` (a partial
            ``transformers.get_cosine_schedule_with_warmup``); stepped by DeepSpeed per optimizer step.
        accelerator: A DeepSpeed accelerator
            (:func:`~anomaly_ov.training.deepspeed.make_deepspeed_accelerator`).
        run_dir: Where checkpoints and ``metrics.jsonl`` go.
        epochs: Epochs to train.
        warmup_ratio: Warm-up steps as a fraction of all steps (rounded up, as transformers' Trainer).
        gradient_checkpointing: Recompute the LLM's activations in the backward pass.
        group_by_length: Length-grouped batches (needs ``lengths`` in :meth:`fit`).
        shuffle: Without ``group_by_length``: a seeded order per epoch (True) or the dataset's order (False).
        seed: Seed of the data order.
        num_workers: DataLoader workers (images are decoded there).
        log_every_n_steps: Log interval in optimizer steps.
        save_every_n_steps: Checkpoint interval in optimizer steps (the end is always saved).
        keep_last_checkpoints: Keep only this many checkpoints (None: all).
        stop_after_steps: End this invocation after this many optimizer steps in all (checkpointed), without
            changing the schedule; rerunning with the same ``run_dir`` continues (None: run to the end).
        progress: Progress bar on the main process.
        nonfinite: ``stop`` or ``skip`` a step whose loss or gradients are not finite
            (:mod:`~anomaly_ov.training.nonfinite`).
        max_consecutive_nonfinite: With ``skip``, stop after this many non-finite steps in a row.
        collective_timeout_s: How long a collective of the training loop waits for the other ranks (the
            accelerator's ``timeout_minutes`` covers the set-up, when the main process reads the mixture).
    """

    def __init__(
        self,
        model: AnomalyOV,
        optimizer_factory: Callable[[Iterable[nn.Parameter]], Optimizer],
        scheduler_factory: Callable[..., LRScheduler],
        accelerator: Accelerator,
        run_dir: str | Path,
        epochs: int = 1,
        warmup_ratio: float = 0.03,
        gradient_checkpointing: bool = True,
        group_by_length: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        log_every_n_steps: int = 1,
        save_every_n_steps: int = 500,
        keep_last_checkpoints: int | None = 2,
        stop_after_steps: int | None = None,
        progress: bool = True,
        nonfinite: str = "stop",
        max_consecutive_nonfinite: int = 3,
        collective_timeout_s: float | None = 600.0,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs={epochs} must be at least 1.")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1).")
        if save_every_n_steps < 1 or log_every_n_steps < 1:
            raise ValueError("save_every_n_steps and log_every_n_steps must be positive.")
        if keep_last_checkpoints is not None and keep_last_checkpoints < 1:
            raise ValueError(f"keep_last_checkpoints={keep_last_checkpoints} must be positive or null.")
        self.model = model
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.warmup_ratio = warmup_ratio
        self.gradient_checkpointing = gradient_checkpointing
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.log_every_n_steps = log_every_n_steps
        self.save_every_n_steps = save_every_n_steps
        self.keep_last_checkpoints = keep_last_checkpoints
        self.stop_after_steps = stop_after_steps
        self.progress = progress
        self.nonfinite = NonFinitePolicy(nonfinite, max_consecutive_nonfinite)
        self.collective_timeout_s = collective_timeout_s
        self.engine: nn.Module | None = None

    # ------------------------------------------------------------------ setup

    @property
    def per_device_batch_size(self) -> int:
        """Samples per micro-batch on one rank (from the DeepSpeed config)."""
        return int(self.accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"])

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on one rank (from the DeepSpeed config: accelerate copies it into
        ``accelerator.gradient_accumulation_steps`` only in ``prepare``).
        """
        return int(self.accelerator.state.deepspeed_plugin.deepspeed_config["gradient_accumulation_steps"])

    def _epoch(self, num_items: int, epoch: int, lengths, multimodal) -> EpochSteps:
        accelerator = self.accelerator
        batches = epoch_batches(
            num_items,
            self.per_device_batch_size,
            accelerator.num_processes,
            self.seed,
            epoch,
            lengths if self.group_by_length else None,
            multimodal if self.group_by_length else None,
            self.shuffle,
        )
        return plan_epoch_steps(
            batches, accelerator.num_processes, self.accumulation, accelerator.process_index
        )

    def _prepare(self, total_steps: int) -> None:
        model = self.model
        if self.gradient_checkpointing:
            # non-reentrant: works with frozen inputs (LoRA on a frozen embedding) and with ZeRO-3
            model.llava.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        model.llava.config.use_cache = False
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("the model has no trainable parameter (see training.tuning.apply_tuning).")
        optimizer = self.optimizer_factory(parameters)
        scheduler = self.scheduler_factory(
            optimizer,
            num_warmup_steps=math.ceil(self.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        # accelerate hands a LambdaLR to DeepSpeed's engine only for DeepSpeed's own schedule types; it is
        # stepped here, once per optimizer step (accelerate's wrapper would step it once per process), and
        # saved with the state by the wrapper accelerate registers
        self.engine, self.optimizer, _ = self.accelerator.prepare(model, optimizer, scheduler)
        self.scheduler = scheduler
        if zero_stage(self.accelerator) == 3:
            register_outside_parameters(self.accelerator.unwrap_model(self.engine), outside_parameters(model))

    # ------------------------------------------------------------------ checkpoints

    def _save(self, state: dict) -> None:
        accelerator = self.accelerator
        final = self.run_dir / CHECKPOINTS_DIR / f"{_STEP_PREFIX}{state['global_step']:07d}"
        if accelerator.is_main_process and final.exists():
            shutil.rmtree(final)
        accelerator.wait_for_everyone()
        # frozen weights (the tower, the expert, a LoRA base) are rebuilt from the config, not saved
        try:
            accelerator.save_state(str(final), exclude_frozen_parameters=True)
        except (OSError, RuntimeError) as error:
            # a full disk: name the folder; without its state.json no resume reads it (the earlier
            # checkpoints are what a rerun continues from)
            if accelerator.is_main_process:
                shutil.rmtree(final, ignore_errors=True)
            raise write_failure(error, final, "the earlier checkpoints are kept") from error
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # last, and atomically: a complete state.json marks the folder complete
            kept = "the earlier checkpoints are kept"
            atomic_write_text(final / STATE_NAME, json.dumps(state) + "\n", kept)
            if self.keep_last_checkpoints is not None:
                complete = sorted(
                    p
                    for p in final.parent.iterdir()
                    if p.name.startswith(_STEP_PREFIX) and (p / STATE_NAME).is_file()
                )
                for old in complete[: -self.keep_last_checkpoints]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def _resume(self) -> dict | None:
        checkpoint = latest_step_checkpoint(self.run_dir)
        if checkpoint is None:
            return None
        self.accelerator.load_state(str(checkpoint), load_module_strict=False)
        state = json.loads((checkpoint / STATE_NAME).read_text())
        logger.info("resuming %s at step %d", self.run_dir, state["global_step"])
        return state

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list], dict],
        lengths: Sequence[int] | None = None,
        multimodal: Sequence[bool] | None = None,
        resume: bool = True,
        sample_ids: Sequence[str] | None = None,
    ) -> InstructResult:
        """Trains for the configured epochs, continuing the run's newest checkpoint if there is one.

        Args:
            dataset: Encoded samples (``processor.collate`` batches them).
            collate_fn: Samples -> model inputs (``input_ids``, ``labels``, ``attention_mask``, images).
            lengths: Token length of each sample (for ``group_by_length``).
            multimodal: Whether each sample has images (for ``group_by_length``).
            resume: Continue from the newest complete checkpoint in ``run_dir``.
            sample_ids: How messages name each sample (the record's id); None: by index.

        Returns:
            The loss history and the schedule's length.
        """
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        if self.group_by_length and lengths is None:
            raise ValueError("group_by_length needs the samples' lengths.")
        first = self._epoch(len(dataset), 0, lengths, multimodal)
        steps_per_epoch = len(first.steps)
        if steps_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} samples do not fill one optimizer step of a global batch "
                f"({accelerator.num_processes} processes x {self.accumulation} accumulation x "
                f"{self.per_device_batch_size} per device)."
            )
        total_steps = steps_per_epoch * self.epochs
        self._prepare(total_steps)
        state = {
            "global_step": 0,
            "losses": [],
            "learning_rates": [],
            "left_out": [],
            "num_processes": accelerator.num_processes,
        }
        if resume and (loaded := self._resume()) is not None:
            state = loaded
            self.nonfinite.load(state.get("nonfinite"))
        resumed_from = state["global_step"]
        write_roster(self.run_dir, accelerator.process_index)
        set_collective_timeout(self.collective_timeout_s)
        metrics_path = self.run_dir / METRICS_NAME
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            kept = []
            if metrics_path.is_file():  # lines logged after the checkpoint we resume from will be redone
                kept = [
                    line
                    for line in metrics_path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resumed_from
                ]
            metrics_path.write_text("".join(f"{line}\n" for line in kept))
            clear_marker(self.run_dir)
        stop_at = total_steps if self.stop_after_steps is None else min(total_steps, self.stop_after_steps)

        bar = tqdm(
            total=total_steps,
            initial=resumed_from,
            desc="finetune",
            disable=not (self.progress and accelerator.is_main_process),
        )
        self.engine.train()
        window = {"time": time.perf_counter(), "tokens": 0, "samples": 0}
        global_step = resumed_from
        preempted = None
        guard = PreemptionGuard()
        with guard, rank_failures(accelerator, self.run_dir, lambda: latest_step_checkpoint(self.run_dir)):
            while global_step < stop_at and preempted is None:
                epoch, position = divmod(global_step, steps_per_epoch)
                plan = first if epoch == 0 else self._epoch(len(dataset), epoch, lengths, multimodal)
                if position == 0 and len(state["left_out"]) <= epoch:
                    state["left_out"].append(plan.left_out)
                    if plan.left_out:
                        logger.info(
                            "epoch %d: %d samples fill no optimizer step and are left out",
                            epoch,
                            plan.left_out,
                        )
                micro = [batch for step in plan.steps[position:] for batch in step]
                # the loader's workers are seeded from their own generator, so the global random state (LoRA
                # dropout) follows the steps alone and a resumed run draws what the uninterrupted one drew
                loader = DataLoader(
                    dataset,
                    batch_sampler=micro,
                    collate_fn=collate_fn,
                    num_workers=self.num_workers,
                    generator=torch.Generator().manual_seed(self.seed * 100003 + epoch),
                    worker_init_fn=ignore_in_worker,
                )
                iterator = iter(loader)
                for step in range(position, steps_per_epoch):
                    if global_step >= stop_at:
                        break
                    loss_sum = torch.zeros((), device=accelerator.device)
                    tokens = 0
                    for _ in range(self.accumulation):
                        batch = _to_device(dict(next(iterator)), accelerator.device)
                        tokens += int(batch["attention_mask"].sum())
                        with accelerator.accumulate(self.engine):
                            output = self.engine(**batch)
                            accelerator.backward(output.loss)
                        loss_sum += output.loss.detach().float()
                    learning_rate = float(self.scheduler.get_last_lr()[0])  # the rate this step used
                    global_step += 1
                    loss = accelerator.reduce(loss_sum / self.accumulation, reduction="mean").item()
                    applied = self.engine.was_step_applied()
                    if applied and math.isfinite(loss):
                        self.scheduler.step()
                        self.nonfinite.good_step()
                        state["losses"].append(loss)
                    else:
                        self._nonfinite_step(global_step, loss, applied, plan.steps[step], sample_ids)
                        state["losses"].append(None)
                    state["learning_rates"].append(learning_rate)
                    window["tokens"] += int(
                        accelerator.reduce(torch.tensor(tokens, device=accelerator.device)).item()
                    )
                    window["samples"] += plan.samples[step]
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{learning_rate:.2e}")
                    logged = global_step % self.log_every_n_steps == 0 or global_step == stop_at
                    if logged and state["losses"][-1] is not None:
                        self._log(global_step, epoch, step, steps_per_epoch, loss, learning_rate, window)
                    state.update(global_step=global_step, nonfinite=self.nonfinite.state())
                    saved = global_step % self.save_every_n_steps == 0 or global_step == stop_at
                    if saved:
                        self._save(state)
                    if global_step < stop_at and guard.requested(accelerator):
                        preempted = guard.signal_name or "a signal on another rank"
                        if not saved:
                            self._save(state)
                        if accelerator.is_main_process:
                            write_marker(
                                self.run_dir, preempted, global_step, latest_step_checkpoint(self.run_dir)
                            )
                        accelerator.wait_for_everyone()  # no rank leaves before the mark is written
                        break
        bar.close()
        return InstructResult(
            losses=state["losses"],
            learning_rates=state["learning_rates"],
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            resumed_from_step=resumed_from,
            finished=global_step >= total_steps,
            left_out_per_epoch=state["left_out"],
            preempted=preempted,
            nonfinite_steps=list(self.nonfinite.skipped),
        )

    def _nonfinite_step(
        self,
        global_step: int,
        loss: float,
        applied: bool,
        step_batches: list[list[int]],
        sample_ids: Sequence[str] | None,
    ) -> None:
        """A step with a non-finite loss or gradients: stop, or record it as skipped (a collective)."""
        indices = sorted(i for part in gather_object([[i for b in step_batches for i in b]]) for i in part)
        ids = [sample_ids[i] if sample_ids is not None else f"item {i}" for i in indices]
        if applied:
            # DeepSpeed checks gradients only in fp16, bf16, or float32 with clipping: this update happened
            raise NonFiniteError(
                f"step {global_step}: non-finite loss ({loss}) and DeepSpeed applied the update (float32 "
                "without gradient clipping does not check the gradients); the run stops; the last "
                f"checkpoint, {latest_step_checkpoint(self.run_dir)}, is kept. Samples of the batch: "
                f"{', '.join(ids)}"
            )
        record = self.nonfinite.bad_step(global_step, loss, ids, latest_step_checkpoint(self.run_dir))
        logger.warning("step %d skipped: non-finite loss or gradients (%s)", global_step, record)
        if self.accelerator.is_main_process:
            line = {"step": global_step, "loss": None, "skipped": "nonfinite", "sample_ids": ids}
            with (self.run_dir / METRICS_NAME).open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    def _log(
        self,
        global_step: int,
        epoch: int,
        step: int,
        steps_per_epoch: int,
        loss: float,
        lr: float,
        window: dict,
    ) -> None:
        accelerator = self.accelerator
        seconds = max(time.perf_counter() - window["time"], 1e-9)
        peak = torch.tensor([peak_memory_gib(accelerator.device)], device=accelerator.device)
        record = {
            "step": global_step,
            "epoch": epoch + (step + 1) / steps_per_epoch,
            "loss": loss,
            "lr": lr,
            "tokens_per_s": window["tokens"] / seconds,
            "samples_per_s": window["samples"] / seconds,
            "peak_memory_gib": float(accelerator.gather(peak).max().item()),  # the fullest rank
        }
        window.update(time=time.perf_counter(), tokens=0, samples=0)
        accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=global_step)
        if accelerator.is_main_process:
            with (self.run_dir / METRICS_NAME).open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            logger.info(
                "step %d: loss %.4f lr %.2e %.0f tokens/s %.2f samples/s peak %.2f GiB",
                global_step,
                loss,
                lr,
                record["tokens_per_s"],
                record["samples_per_s"],
                record["peak_memory_gib"],
            )

    # ------------------------------------------------------------------ export

    def export(self, save: Callable[[AnomalyOV], None]) -> list[list[float]]:
        """Calls ``save(model)`` on the main process with every weight whole (ZeRO-3 gathers them).

        Args:
            save: Writes the model (e.g. ``save_anomaly_ov`` into a folder).

        Returns:
            Per rank, a checksum (float64 sum and absolute sum) of every trained parameter as that rank holds
            it: identical lists mean identical weights on every rank.
        """
        accelerator = self.accelerator
        model = accelerator.unwrap_model(self.engine)
        with full_parameters(model, zero_stage(accelerator)):
            sums = [
                value
                for _, parameter in sorted(model.named_parameters())
                if parameter.requires_grad
                for value in (parameter.double().sum().item(), parameter.double().abs().sum().item())
            ]
            if accelerator.is_main_process:
                save(model)
            accelerator.wait_for_everyone()
        return gather_object([sums])
