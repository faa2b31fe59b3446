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
where it stopped.
"""

import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

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
from anomaly_ov.training.distributed import plan_epoch, restart_period, steps_per_epoch

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
    """

    losses: list[float]
    epoch_losses: list[float]
    expert_path: Path
    resumed_from_epoch: int
    steps_per_epoch: int


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

    def fit(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list], object],
        featurize: Callable[[object], FeatureBatch],
        labels: Sequence[int],
        resume: bool = True,
    ) -> TrainingResult:
        """Trains for the configured epochs, resuming from the run's last checkpoint if there is one.

        Args:
            dataset: Items whose collated batches ``featurize`` turns into features (item ``i``: image ``i``).
            collate_fn: The dataset's collate function.
            featurize: Batch -> :class:`FeatureBatch` (the tower runs here when streaming).
            labels: 0/1 label of each item.
            resume: Continue from the last finished epoch in ``run_dir`` if any.

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
        start_epoch = 0
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        if checkpoint is not None:
            load_expert_weights(accelerator.unwrap_model(model), checkpoint.model)
            counters = load_training_state(checkpoint, optimizer, scheduler)
            start_epoch, losses, epoch_losses = (
                counters["epoch"],
                counters["losses"],
                counters["epoch_losses"],
            )
            logger.info("resuming %s after epoch %d", self.run_dir, start_epoch)

        dtype = next(self.expert.parameters()).dtype
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
            loader = DataLoader(
                dataset, batch_sampler=plan.micro_batches, collate_fn=collate_fn, num_workers=self.num_workers
            )
            bar = tqdm(
                total=plan.num_steps,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                disable=not (self.progress and accelerator.is_main_process),
            )
            step_loss = torch.zeros((), device=accelerator.device)
            epoch_start = len(losses)
            for position, batch in enumerate(loader):
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
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_loss = accelerator.reduce(step_loss, reduction="sum").item() / plan.step_sizes[step]
                step_loss = torch.zeros((), device=accelerator.device)
                losses.append(global_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{global_loss:.4f}")
                global_step = len(losses)
                if global_step % self.log_every_n_steps == 0 or step == plan.num_steps - 1:
                    accelerator.log(
                        {
                            "train/loss": global_loss,
                            "train/lr": scheduler.get_last_lr()[0],
                            "train/epoch": epoch + (step + 1) / plan.num_steps,
                        },
                        step=global_step,
                    )
            bar.close()
            epoch_losses.append(sum(losses[epoch_start:]) / max(1, len(losses) - epoch_start))
            logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, self.epochs, epoch_losses[-1])
            if accelerator.is_main_process:
                save_epoch_checkpoint(
                    self.run_dir,
                    epoch + 1,
                    partial(save_expert, accelerator.unwrap_model(model)),
                    optimizer,
                    scheduler,
                    {"epoch": epoch + 1, "losses": losses, "epoch_losses": epoch_losses},
                )
                if self.keep_last_checkpoints is not None:
                    prune_checkpoints(self.run_dir, self.keep_last_checkpoints)
            accelerator.wait_for_everyone()

        expert_path = self.run_dir / MODEL_FILE
        if accelerator.is_main_process:
            final = latest_checkpoint(self.run_dir)
            shutil.copyfile(final.model, expert_path)
        accelerator.wait_for_everyone()
        return TrainingResult(losses, epoch_losses, expert_path, start_epoch, num_steps)
