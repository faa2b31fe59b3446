"""Anomaly-detection metrics: image level, pixel level and the per-class summary.

Notation: ``N`` images, masks and anomaly maps of ``H x W`` pixels. Labels and masks are boolean
(``True`` = anomalous); scores and maps are real numbers where larger means more anomalous. Every metric
treats "predicted anomalous at threshold t" as ``score >= t`` and evaluates every distinct score as a
threshold, like :mod:`sklearn.metrics`.

The MVTec AD per-region overlap (AUPRO, exact and the labelled 200-threshold compatibility mode) lives in
:mod:`anomaly_ov.eval.aupro`; the input checks shared with it in :mod:`anomaly_ov.eval.metric_inputs`.

Metrics are computed per class and averaged over classes without weights (:func:`average_over_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomaly_ov.eval.aupro import aupro
from anomaly_ov.eval.metric_inputs import (
    check_labels_and_scores,
    check_maps_and_masks,
    require_both_classes,
    where_of,
)

METRIC_NAMES: tuple[str, ...] = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "aupro",
)


# --------------------------------------------------------------------------------------------------------
# Image level (sklearn)
# --------------------------------------------------------------------------------------------------------


def image_auroc(labels: np.ndarray, scores: np.ndarray, *, context: str | None = None) -> float:
    """Area under the ROC curve of image-level anomaly scores.

    Args:
        labels: [num_images] bool (or 0/1), True = anomalous image.
        scores: [num_images] real anomaly scores, larger = more anomalous.
        context: Names the class / dataset in error messages.

    Returns:
        AUROC in [0, 1] (:func:`sklearn.metrics.roc_auc_score`).

    Raises:
        ValueError: If the labels hold a single class (AUROC is undefined) or the inputs are malformed.
    """
    labels, scores = check_labels_and_scores(labels, scores, "image_auroc", context)
    return float(roc_auc_score(labels, scores))


def image_average_precision(labels: np.ndarray, scores: np.ndarray, *, context: str | None = None) -> float:
    """Average precision (area under the step-wise PR curve) of image-level scores.

    Args:
        labels: [num_images] bool (or 0/1), True = anomalous image.
        scores: [num_images] real anomaly scores.
        context: Names the class / dataset in error messages.

    Returns:
        AP in [0, 1] (:func:`sklearn.metrics.average_precision_score`).
    """
    labels, scores = check_labels_and_scores(labels, scores, "image_average_precision", context)
    return float(average_precision_score(labels, scores))


def image_f1_max(labels: np.ndarray, scores: np.ndarray, *, context: str | None = None) -> float:
    """Best F1 over all thresholds: ``max 2PR / (P + R)`` along the precision-recall curve.

    Args:
        labels: [num_images] bool (or 0/1), True = anomalous image.
        scores: [num_images] real anomaly scores.
        context: Names the class / dataset in error messages.

    Returns:
        F1-max in [0, 1] (from :func:`sklearn.metrics.precision_recall_curve`; points with P + R = 0
        count as F1 = 0).
    """
    labels, scores = check_labels_and_scores(labels, scores, "image_f1_max", context)
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


# --------------------------------------------------------------------------------------------------------
# Pixel level
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelMetrics:
    """Pixel-level metrics of one class, all pixels of all its test images pooled.

    Attributes:
        auroc: Area under the pixel ROC curve.
        ap: Pixel average precision.
        f1_max: Best pixel F1 over all thresholds.
    """

    auroc: float
    ap: float
    f1_max: float


def _ranked_metrics(positive: np.ndarray, negative: np.ndarray) -> PixelMetrics:
    """AUROC, AP and F1-max of two score samples from one sort of each.

    Every metric only needs, for each distinct positive score s, the number of negatives scoring >= s (or
    == s): AUROC is the Mann-Whitney statistic (ties count 1/2); recall only changes at positive scores, so
    AP's sum has terms only there; and at fixed recall F1 is largest at the highest threshold, which is again
    a positive score. This avoids an argsort of all pixels and keeps memory at one sorted copy of each sample.
    """
    num_pos, num_neg = positive.size, negative.size
    positive = np.sort(positive)
    negative = np.sort(negative)
    neg_below = np.searchsorted(negative, positive, side="left")
    neg_at_or_below = np.searchsorted(negative, positive, side="right")
    # int64 sums are exact (<= num_pos * num_neg).
    wins = 2 * int(neg_below.sum()) + int((neg_at_or_below - neg_below).sum())
    auroc = wins / (2.0 * num_pos * num_neg)

    # Thresholds = distinct positive scores; with `positive` ascending, the first index of each value.
    first = np.flatnonzero(np.concatenate(([True], positive[1:] != positive[:-1])))
    true_pos = (num_pos - first).astype(np.float64)
    false_pos = (num_neg - neg_below[first]).astype(np.float64)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / num_pos
    # Ascending thresholds -> descending recall; each threshold adds (R_i - R_{i+1}) * P_i, with R = 0 past
    # the largest score.
    recall_step = recall - np.concatenate((recall[1:], [0.0]))
    ap = float(np.sum(recall_step * precision))
    f1_max = float(np.max(2.0 * true_pos / (true_pos + false_pos + num_pos)))
    return PixelMetrics(auroc=float(auroc), ap=ap, f1_max=f1_max)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, *, context: str | None = None) -> PixelMetrics:
    """Pixel AUROC, AP and F1-max over all pixels of one class, from one sort of each pixel group.

    Equals ``roc_auc_score``, ``average_precision_score`` and the F1-max of ``precision_recall_curve`` of
    sklearn on the flattened arrays (checked in tests) but sorts the normal and anomalous pixels
    separately instead of argsorting all of them, which matters at ~500 x 256 x 256 pixels per class.

    Args:
        maps: [N, H, W] anomaly maps already at mask size (see :func:`upsample_maps`).
        masks: [N, H, W] bool (or 0/1) ground truth, True = anomalous pixel.
        context: Names the class / dataset in error messages.

    Returns:
        :class:`PixelMetrics`.

    Raises:
        ValueError: If shapes differ, values are malformed, or the masks are all normal / all anomalous.
    """
    maps, masks = check_maps_and_masks(maps, masks, "pixel_metrics", context)
    require_both_classes(int(masks.sum()), masks.size, "pixels", where_of("pixel_metrics", context))
    return _ranked_metrics(maps[masks], maps[~masks])


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, *, context: str | None = None) -> float:
    """Pixel AUROC; see :func:`pixel_metrics` for arguments."""
    return pixel_metrics(maps, masks, context=context).auroc


def pixel_average_precision(maps: np.ndarray, masks: np.ndarray, *, context: str | None = None) -> float:
    """Pixel average precision; see :func:`pixel_metrics` for arguments."""
    return pixel_metrics(maps, masks, context=context).ap


def pixel_f1_max(maps: np.ndarray, masks: np.ndarray, *, context: str | None = None) -> float:
    """Pixel F1-max; see :func:`pixel_metrics` for arguments."""
    return pixel_metrics(maps, masks, context=context).f1_max


# --------------------------------------------------------------------------------------------------------
# Per-class results and the unweighted class average
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMetrics:
    """All metrics of one class. Pixel-level fields are None when the class has no masks.

    Attributes:
        name: Class name (e.g. "bottle").
        num_images: Test images of the class.
        image_auroc: Image-level AUROC.
        image_ap: Image-level average precision.
        image_f1_max: Image-level F1-max.
        pixel_auroc: Pixel-level AUROC.
        pixel_ap: Pixel-level average precision.
        pixel_f1_max: Pixel-level F1-max.
        aupro: Exact MVTec AD AUPRO up to ``max_fpr`` (see :func:`aupro`).
    """

    name: str
    num_images: int
    image_auroc: float
    image_ap: float
    image_f1_max: float
    pixel_auroc: float | None = None
    pixel_ap: float | None = None
    pixel_f1_max: float | None = None
    aupro: float | None = None

    def to_dict(self) -> dict[str, str | int | float | None]:
        """Plain dict, ready for JSON."""
        return asdict(self)


def evaluate_class(
    name: str,
    labels: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    max_fpr: float = 0.3,
) -> ClassMetrics:
    """Computes every metric of SPEC §6 for one class.

    Args:
        name: Class name, used in error messages and the result.
        labels: [N] bool, True = anomalous image.
        scores: [N] image anomaly scores.
        maps: [N, H, W] anomaly maps at mask size, or None for datasets without masks.
        masks: [N, H, W] bool masks; required together with ``maps``.
        max_fpr: AUPRO integration limit.

    Returns:
        :class:`ClassMetrics` (pixel fields None without maps).

    Raises:
        ValueError: If only one of ``maps``/``masks`` is given, or on any metric's input error.
    """
    if (maps is None) != (masks is None):
        raise ValueError(f"evaluate_class ({name}): pass both `maps` and `masks`, or neither")
    labels = np.asarray(labels)
    pixel: dict[str, float] = {}
    if maps is not None and masks is not None:
        if np.asarray(maps).shape[0] != labels.shape[0]:
            raise ValueError(
                f"evaluate_class ({name}): {np.asarray(maps).shape[0]} maps for {labels.shape[0]} labels"
            )
        ranked = pixel_metrics(maps, masks, context=name)
        pixel = {
            "pixel_auroc": ranked.auroc,
            "pixel_ap": ranked.ap,
            "pixel_f1_max": ranked.f1_max,
            "aupro": aupro(maps, masks, max_fpr, context=name),
        }
    return ClassMetrics(
        name=name,
        num_images=int(labels.shape[0]),
        image_auroc=image_auroc(labels, scores, context=name),
        image_ap=image_average_precision(labels, scores, context=name),
        image_f1_max=image_f1_max(labels, scores, context=name),
        **pixel,
    )


def average_over_classes(results: Sequence[ClassMetrics]) -> dict[str, float]:
    """Unweighted mean of every metric over classes (SPEC §6: each class counts once).

    A metric is averaged when every class has it and left out when none has it (e.g. pixel metrics on a
    dataset without masks).

    Args:
        results: One :class:`ClassMetrics` per class.

    Returns:
        ``{metric_name: mean}`` for the metrics present in all classes.

    Raises:
        ValueError: If ``results`` is empty, names a class twice, or a metric is present for some classes
            only (a silent partial average would not be comparable).
    """
    if not results:
        raise ValueError("average_over_classes: no class results given")
    names = [result.name for result in results]
    if len(set(names)) != len(names):
        raise ValueError(f"average_over_classes: duplicate class names in {names}")
    metric_fields = [field.name for field in fields(ClassMetrics) if field.name in METRIC_NAMES]
    means: dict[str, float] = {}
    for metric in metric_fields:
        values = [result.to_dict()[metric] for result in results]
        missing = [result.name for result, value in zip(results, values, strict=True) if value is None]
        if len(missing) == len(results):
            continue
        if missing:
            raise ValueError(f"average_over_classes: `{metric}` is missing for classes {missing}")
        means[metric] = float(np.mean(values))
    return means
