"""The report's figures (matplotlib, Agg backend, PNG): training curves and ROC curves.

Every function takes plain numbers and writes one PNG; nothing here reads a run folder.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: the report is built on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from anomaly_ov.eval.metrics import image_auroc


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (the first points average what exists so far).

    Args:
        values: [N] series.
        window: Window length (>= 1).

    Returns:
        [N] smoothed series.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    data = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], data]))
    ends = np.arange(1, len(data) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def training_curves(
    path: Path,
    stage1_losses: Sequence[float],
    stage1_steps_per_epoch: int,
    stage2: Mapping[str, tuple[Sequence[int], Sequence[float]]],
) -> None:
    """Two panels: the expert's loss per step (stage 1) and each stage-2 run's loss per logged step.

    Args:
        path: The PNG to write.
        stage1_losses: [S1] stage-1 loss per optimizer step.
        stage1_steps_per_epoch: For the epoch-mean line (0: none).
        stage2: ``{run name: (steps, losses)}``.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = np.arange(1, len(stage1_losses) + 1)
    left.plot(steps, stage1_losses, color="0.7", linewidth=0.8, label="per step")
    window = max(stage1_steps_per_epoch, 1)
    left.plot(steps, moving_average(stage1_losses, window), color="C0", label=f"mean of {window} steps")
    left.set(title="Stage 1: expert (class-balanced BCE)", xlabel="optimizer step", ylabel="loss")
    left.legend(fontsize=8)
    for index, (name, (run_steps, losses)) in enumerate(stage2.items()):
        color = f"C{index + 1}"
        right.plot(run_steps, losses, color=color, alpha=0.3, linewidth=0.8)
        smooth = moving_average(losses, max(len(losses) // 15, 1))
        right.plot(run_steps, smooth, color=color, label=name)
    right.set(
        title="Stage 2: instruction tuning (token cross-entropy)", xlabel="optimizer step", ylabel="loss"
    )
    if stage2:
        right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def roc_curves(
    path: Path, panels: Mapping[str, Mapping[str, tuple[Sequence[bool], Sequence[float]]]]
) -> dict[str, dict[str, float]]:
    """ROC curves, one panel per image group, one curve per score; AUROC in the legend.

    Args:
        path: The PNG to write.
        panels: ``{panel title: {curve name: (labels [N], scores [N])}}``; a curve whose labels hold one
            class only is left out (its ROC is undefined).

    Returns:
        ``{panel: {curve: AUROC}}`` of the curves drawn (pooled over the panel's images, not per class).
    """
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    aurocs: dict[str, dict[str, float]] = {}
    for axis, (title, curves) in zip(axes[0], panels.items(), strict=True):
        aurocs[title] = {}
        axis.plot([0, 1], [0, 1], linestyle=":", color="0.6", linewidth=1)
        for index, (name, (labels, scores)) in enumerate(curves.items()):
            truth = np.asarray(labels, dtype=bool)
            if truth.all() or not truth.any():
                continue
            values = np.asarray(scores, dtype=np.float64)
            false_positive, true_positive, _ = roc_curve(truth, values)
            auroc = image_auroc(truth, values, context=f"{title}: {name}")
            aurocs[title][name] = auroc
            axis.plot(false_positive, true_positive, color=f"C{index}", label=f"{name} (AUROC {auroc:.2f})")
        axis.set(
            title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1)
        )
        axis.set_aspect("equal")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return aurocs
