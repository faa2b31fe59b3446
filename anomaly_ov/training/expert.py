"""Stage 1: training the anomaly expert on frozen-tower features (SPEC §4; the release lacks this code).

The vision tower is frozen, so the expert learns from its features only: read from the
:class:`~anomaly_ov.data.feature_cache.FeatureCache` or computed on the fly by
:class:`~anomaly_ov.data.features.StreamedFeatures`; the loop below is the same for both (it is given a
``featurize`` function that turns a loader batch into a :class:`~anomaly_ov.data.feature_batch.FeatureBatch`).

Loss: class-balanced binary cross-entropy on the image label (no mask supervision),

    loss = sum_i w_{y_i} * BCE(logit_i, y_i) / |global batch|,   w_1 = n / (2 n_1),  w_0 = n / (2 n_0)

with n_1 anomalous and n_0 normal images in the training set, so both classes weigh the same overall.

Recipe (all arguments, configured in ``configs/train_expert.yaml``): AdamW, lr 1e-4, cosine annealing with
warm restarts every half epoch (stepped per optimizer step), 2 epochs, global batch 128. Distributed data
parallel through accelerate; the data order depends only on (seed, epoch) (see
:mod:`anomaly_ov.training.distributed`), and a checkpoint per epoch lets an interrupted run continue exactly
where it stopped -- on the same or another number of processes, since neither the global batches nor the
saved state depend on it. A preemption signal (:mod:`anomaly_ov.training.preemption`) stops the run at the
next step with a mid-epoch checkpoint; a non-finite loss or gradient stops it or skips the step
(:mod:`anomaly_ov.training.nonfinite`); a rank that dies ends the others with a message naming it
(:func:`~anomaly_ov.training.distributed.rank_failures`).
"""

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from anomaly_ov.atomic_files import atomic_copy
from anomaly_ov.checkpoints.training_state import (
    MODEL_FILE,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    save_epoch_checkpoint,
)
from anomaly_ov.data.feature_batch import FeatureBatch
from anomaly_ov.models.expert import AnomalyExpert
from anomaly_ov.models.expert_io import load_expert_weights, save_expert
from anomaly_ov.training.distributed import (
    EpochPlan,
    plan_epoch,
    rank_failures,
    restart_period,
    set_collective_timeout,
    steps_per_epoch,
    write_roster,
)
from anomaly_ov.training.nonfinite import NonFinitePolicy
from anomaly_ov.training.preemption import PreemptionGuard, clear_marker, ignore_in_worker, write_marker

logger = logging.getLogger(__name__)


def class_weights(labels: Sequence[int]) -> tuple[float, float]:
    """Class-balancing weights (normal, anomalous) = (n / (2 n_0), n / (2 n_1)).

    Raises:
        ValueError: If one class is absent (the loss would not be class-balanced).
    """
    num = len(labels)
    num_anomalous = sum(int(label) for label in labels)
    num_normal = num - num_anomalous
    if num_anomalous == 0 or num_normal == 0:
        raise ValueError(
            f"the training set has {num_normal} normal and {num_anomalous} anomalous images; the "
            "class-balanced loss needs both."
        )
    return num / (2 * num_normal), num / (2 * num_anomalous)


def balanced_bce_sum(
    logits: torch.Tensor, labels: torch.Tensor, weights: tuple[float, float]
) -> torch.Tensor:
    """Sum over images of the class-weighted binary cross-entropy.

    Args:
        logits: Score logits, [B].
        labels: 0/1 labels, [B].
        weights: (normal, anomalous) weights from :func:`class_weights`.

    Returns:
        A scalar: ``sum_i w_{y_i} * BCE(logits_i, y_i)``.
    """
    targets = labels.to(logits.dtype)
    per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    image_weights = torch.where(labels.bool(), weights[1], weights[0]).to(logits.dtype)
    return (image_weights * per_image).sum()


@dataclass(frozen=True)
class TrainingResult:
    """What a training run produced.

    Attributes:
        losses: Global mean loss of every optimizer step, from the first epoch (resumed runs included).
        epoch_losses: Mean step loss of each epoch.
        expert_path: The final expert weights (safetensors, ``anomaly_ov.models.expert_io.load_expert``).
        resumed_from_epoch: Epochs already done when this run started (0 for a fresh run).
        steps_per_epoch: Optimizer steps per epoch.
        preempted: The signal that stopped the run before its end (None: it finished), see
            :mod:`~anomaly_ov.training.preemption`; ``expert_path`` is then not written.
        nonfinite_steps: The steps skipped for a non-finite loss or gradient (``trainer.fit.nonfinite=skip``).
    """

    losses: list[float]
    epoch_losses: list[float]
    expert_path: Path
    resumed_from_epoch: int
    steps_per_epoch: int
    preempted: str | None = None
    nonfinite_steps: list[dict] = field(default_factory=list)


class ExpertTrainer:
    """Trains an :class:`~anomaly_ov.models.expert.AnomalyExpert` with the class-balanced BCE.

    Args:
        expert: The expert (its parameters are all trained).
        optimizer_factory: ``optimizer_factory(parameters) -> Optimizer`` (e.g. a partial AdamW).
        scheduler_factory: ``scheduler_factory(optimizer, T_0=restart period in steps) -> LRScheduler``
            (a partial ``CosineAnnealingWarmRestarts``); stepped once per optimizer step.
        accelerator: The accelerate state (device, DDP, trackers).
        run_dir: Where checkpoints and the final weights go.
        epochs: Epochs to train.
        global_batch_size: Images per optimizer step over all processes.
        micro_batch_size: Images per forward/backward on one process (null: the process's whole share).
        restart_every_epochs: Warm-restart period of the schedule in epochs (0.5 = every half epoch).
        seed: Seed of the data order.
        num_workers: Data-loader workers.
        log_every_n_steps: Tracker / log interval.
        progress: Show a progress bar on the main process.
        keep_last_checkpoints: Keep only this many epoch checkpoints (None: all).
        nonfinite: ``stop`` or ``skip`` a step whose loss or gradients are not finite
            (:mod:`~anomaly_ov.training.nonfinite`).
        max_consecutive_nonfinite: With ``skip``, stop after this many non-finite steps in a row.
        collective_timeout_s: How long a collective of the training loop waits for the other ranks.
    """

    def __init__(
        self,
        expert: AnomalyExpert,
        optimizer_factory: Callable[[Iterable[torch.nn.Parameter]], Optimizer],
        scheduler_factory: Callable[..., LRScheduler],
        accelerator: Accelerator,
        run_dir: str | Path,
        epochs: int,
        global_batch_size: int,
        micro_batch_size: int | None = None,
        restart_every_epochs: float = 0.5,
        seed: int = 0,
        num_workers: int = 0,
        log_every_n_steps: int = 10,
        progress: bool = True,
        keep_last_checkpoints: int | None = None,
        nonfinite: str = "stop",
        max_consecutive_nonfinite: int = 3,
        collective_timeout_s: float | None = 600.0,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs={epochs} must be at least 1.")
        self.expert = expert
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.restart_every_epochs = restart_every_epochs
        self.seed = seed
        self.num_workers = num_workers
        self.log_every_n_steps = log_every_n_steps
        self.progress = progress
        self.keep_last_checkpoints = keep_last_checkpoints
        self.nonfinite = NonFinitePolicy(nonfinite, max_consecutive_nonfinite)
        self.collective_timeout_s = collective_timeout_s

    def _batch_ids(self, plan: EpochPlan, step: int, sample_ids: Sequence[str] | None) -> list[str]:
        """The samples of a step's global batch (a collective: every rank calls it)."""
        share = [i for p, batch in enumerate(plan.micro_batches) if plan.step_of[p] == step for i in batch]
        indices = sorted(i for part in gather_object([share]) for i in part)
        return [sample_ids[i] if sample_ids is not None else f"item {i}" for i in indices]

    def _last_checkpoint(self) -> Path | None:
        checkpoint = latest_checkpoint(self.run_dir)
        return None if checkpoint is None else checkpoint.folder

    def fit(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list], object],
        featurize: Callable[[object], FeatureBatch],
        labels: Sequence[int],
        resume: bool = True,
        sample_ids: Sequence[str] | None = None,
    ) -> TrainingResult:
        """Trains for the configured epochs, resuming from the run's last checkpoint if there is one.

        Args:
            dataset: Items whose collated batches ``featurize`` turns into features (item ``i``: image ``i``).
            collate_fn: The dataset's collate function.
            featurize: Batch -> :class:`FeatureBatch` (the tower runs here when streaming).
            labels: 0/1 label of each item.
            resume: Continue from the newest checkpoint in ``run_dir`` if any.
            sample_ids: How messages name each item (its image path); None: by index.

        Returns:
            The losses and the final weights' path.
        """
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} training items.")
        weights = class_weights(labels)
        label_tensor = torch.as_tensor([int(label) for label in labels], dtype=torch.long)
        num_steps = steps_per_epoch(len(dataset), self.global_batch_size, accelerator.num_processes)
        optimizer = self.optimizer_factory(self.expert.parameters())
        scheduler = self.scheduler_factory(
            optimizer, T_0=restart_period(num_steps, self.restart_every_epochs)
        )
        model, optimizer = accelerator.prepare(self.expert, optimizer)

        losses: list[float] = []
        epoch_losses: list[float] = []
        start_epoch, start_step, epoch_start = 0, 0, 0
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        if checkpoint is not None:
            load_expert_weights(accelerator.unwrap_model(model), checkpoint.model)
            counters = load_training_state(checkpoint, optimizer, scheduler)
            start_epoch, losses, epoch_losses = (
                counters["epoch"],
                counters["losses"],
                counters["epoch_losses"],
            )
            start_step = counters.get("step", 0)
            epoch_start = counters.get("epoch_start", len(losses))
            self.nonfinite.load(counters.get("nonfinite"))
            logger.info("resuming %s after epoch %d, step %d", self.run_dir, start_epoch, start_step)
        write_roster(self.run_dir, accelerator.process_index)
        if accelerator.is_main_process:
            clear_marker(self.run_dir)
        set_collective_timeout(self.collective_timeout_s)

        def counters_at(epoch: int, step: int) -> dict:
            return {
                "epoch": epoch,
                "step": step,
                "losses": losses,
                "epoch_losses": epoch_losses,
                "epoch_start": epoch_start,
                "nonfinite": self.nonfinite.state(),
                "num_processes": accelerator.num_processes,
            }

        dtype = next(self.expert.parameters()).dtype
        preempted = None
        guard = PreemptionGuard()
        with guard, rank_failures(accelerator, self.run_dir, self._last_checkpoint):
            for epoch in range(start_epoch, self.epochs):
                model.train()
                plan = plan_epoch(
                    len(dataset),
                    self.global_batch_size,
                    self.micro_batch_size,
                    accelerator.process_index,
                    accelerator.num_processes,
                    self.seed,
                    epoch,
                )
                first_step = start_step if epoch == start_epoch else 0
                first = plan.step_of.index(first_step)
                if first_step == 0:
                    epoch_start = len(losses)
                loader = DataLoader(
                    dataset,
                    batch_sampler=plan.micro_batches[first:],
                    collate_fn=collate_fn,
                    num_workers=self.num_workers,
                    worker_init_fn=ignore_in_worker,
                )
                bar = tqdm(
                    total=plan.num_steps,
                    initial=first_step,
                    desc=f"epoch {epoch + 1}/{self.epochs}",
                    disable=not (self.progress and accelerator.is_main_process),
                )
                step_loss = torch.zeros((), device=accelerator.device)
                for position, batch in enumerate(loader, start=first):
                    step = plan.step_of[position]
                    features = featurize(batch).to(accelerator.device, dtype)
                    targets = label_tensor[features.indices].to(accelerator.device)
                    # Gradients are synchronised only on the last micro-batch of a step.
                    sync = nullcontext() if plan.last_in_step[position] else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        output = model(features.final, features.levels, features.crops_per_image)
                        loss_sum = balanced_bce_sum(output.score_logits.float(), targets, weights)
                        # DDP averages gradients over processes; scaling by the process count makes the
                        # update the gradient of the global-batch mean for any split of the batch.
                        accelerator.backward(loss_sum * accelerator.num_processes / plan.step_sizes[step])
                    step_loss += loss_sum.detach()
                    if not plan.last_in_step[position]:
                        continue
                    global_step = epoch * plan.num_steps + step + 1
                    bad_gradients = any(
                        p.grad is not None and not bool(torch.isfinite(p.grad).all())
                        for p in model.parameters()
                    )
                    flags = torch.stack(
                        [step_loss, torch.tensor(float(bad_gradients), device=step_loss.device)]
                    )
                    totals = accelerator.reduce(flags, reduction="sum").tolist()
                    global_loss = totals[0] / plan.step_sizes[step]
                    step_loss = torch.zeros((), device=accelerator.device)
                    if math.isfinite(global_loss) and totals[1] == 0:
                        optimizer.step()
                        scheduler.step()
                        losses.append(global_loss)
                        self.nonfinite.good_step()
                    else:
                        ids = self._batch_ids(plan, step, sample_ids)
                        record = self.nonfinite.bad_step(
                            global_step, global_loss, ids, self._last_checkpoint()
                        )
                        logger.warning(
                            "step %d skipped: non-finite loss or gradients (%s)", global_step, record
                        )
                    optimizer.zero_grad(set_to_none=True)
                    bar.update(1)
                    bar.set_postfix(loss=f"{global_loss:.4f}")
                    if global_step % self.log_every_n_steps == 0 or step == plan.num_steps - 1:
                        accelerator.log(
                            {
                                "train/loss": global_loss,
                                "train/lr": scheduler.get_last_lr()[0],
                                "train/epoch": epoch + (step + 1) / plan.num_steps,
                            },
                            step=global_step,
                        )
                    if step + 1 < plan.num_steps and guard.requested(accelerator):
                        preempted = guard.signal_name or "a signal on another rank"
                        self._save(epoch, counters_at(epoch, step + 1), optimizer, scheduler, model, step + 1)
                        if accelerator.is_main_process:
                            write_marker(self.run_dir, preempted, global_step, self._last_checkpoint())
                        accelerator.wait_for_everyone()  # no rank leaves before the mark is written
                        break
                bar.close()
                if preempted is not None:
                    break
                epoch_losses.append(sum(losses[epoch_start:]) / max(1, len(losses) - epoch_start))
                logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, self.epochs, epoch_losses[-1])
                epoch_start = len(losses)
                self._save(epoch + 1, counters_at(epoch + 1, 0), optimizer, scheduler, model, 0)
                if epoch + 1 < self.epochs and guard.requested(accelerator):
                    preempted = guard.signal_name or "a signal on another rank"
                    if accelerator.is_main_process:
                        done = (epoch + 1) * num_steps
                        write_marker(self.run_dir, preempted, done, self._last_checkpoint())
                    accelerator.wait_for_everyone()
                    break

        expert_path = self.run_dir / MODEL_FILE
        if accelerator.is_main_process and preempted is None:
            final = latest_checkpoint(self.run_dir)
            # through a temporary file: a full disk never leaves a half expert.safetensors in run_dir
            atomic_copy(final.model, expert_path, "the run's checkpoints are kept (rerun to export it)")
        accelerator.wait_for_everyone()
        return TrainingResult(
            losses, epoch_losses, expert_path, start_epoch, num_steps, preempted, list(self.nonfinite.skipped)
        )

    def _save(self, epoch: int, counters: dict, optimizer, scheduler, model, step: int) -> None:
        """Writes a checkpoint on the main process (``step`` > 0: mid-epoch), then waits for every rank."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            save_epoch_checkpoint(
                self.run_dir,
                epoch,
                partial(save_expert, accelerator.unwrap_model(model)),
                optimizer,
                scheduler,
                counters,
                step=step,
            )
            if self.keep_last_checkpoints is not None:
                prune_checkpoints(self.run_dir, self.keep_last_checkpoints)
        accelerator.wait_for_everyone()
