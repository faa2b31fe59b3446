"""Anomaly-detection metrics: image level, pixel level and the MVTec AD per-region overlap (AUPRO).

Notation: ``N`` images, masks and anomaly maps of ``H x W`` pixels. Labels and masks are boolean
(``True`` = anomalous); scores and maps are real numbers where larger means more anomalous. Every metric
treats "predicted anomalous at threshold t" as ``score >= t`` and evaluates every distinct score as a
threshold, like :mod:`sklearn.metrics` -- except :func:`aupro_200_thresholds`, a labelled compatibility
mode that reproduces a common approximation.

Metrics are computed per class and averaged over classes without weights (:func:`average_over_classes`).

References:
    P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger, C. Steger, "The MVTec Anomaly Detection Dataset:
    A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection", IJCV 129, 2021,
    https://doi.org/10.1007/s11263-020-01400-4 -- the per-region overlap (PRO) curve and AUPRO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

# Ground-truth regions are 8-connected components inside one image, as in the MVTec AD evaluation code
# (scipy.ndimage.label with a 3x3 all-ones structuring element). The structure is 3-D so that one call
# labels a whole [N, H, W] stack, but its first and last planes are empty: regions never join across images.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True

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
# Input checks
# --------------------------------------------------------------------------------------------------------


def _where(function: str, context: str | None) -> str:
    return f"{function} ({context})" if context else function


def _as_binary(values: np.ndarray, argument: str, where: str) -> np.ndarray:
    """Returns ``values`` as bool, accepting bool arrays or numeric arrays that hold only 0 and 1."""
    if values.dtype == np.bool_:
        return values
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{where}: `{argument}` must be boolean or 0/1 numbers, got dtype {values.dtype}")
    if not np.all((values == 0) | (values == 1)):
        found = np.unique(values[(values != 0) & (values != 1)])[:5]
        raise ValueError(
            f"{where}: `{argument}` must hold only 0/1 (or bool); found other values such as {found.tolist()}"
            " -- binarise it first (e.g. a 0/255 PNG mask: `mask > 0`)"
        )
    return values.astype(bool)


def _as_scores(values: np.ndarray, argument: str, where: str) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(f"{where}: `{argument}` must hold real numbers, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: `{argument}` contains NaN or infinite values")
    return values


def _check_labels_and_scores(
    labels: np.ndarray, scores: np.ndarray, function: str, context: str | None
) -> tuple[np.ndarray, np.ndarray]:
    where = _where(function, context)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"{where}: `labels` and `scores` must be 1-D [num_images], got shapes "
            f"{labels.shape} and {scores.shape}"
        )
    if labels.shape != scores.shape:
        raise ValueError(f"{where}: `labels` has {labels.size} entries but `scores` has {scores.size}")
    labels = _as_binary(labels, "labels", where)
    scores = _as_scores(scores, "scores", where)
    _require_both_classes(int(labels.sum()), labels.size, "image labels", where)
    return labels, scores


def _check_maps_and_masks(
    maps: np.ndarray, masks: np.ndarray, function: str, context: str | None
) -> tuple[np.ndarray, np.ndarray]:
    where = _where(function, context)
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3 or masks.ndim != 3:
        raise ValueError(
            f"{where}: `maps` and `masks` must be [N, H, W], got shapes {maps.shape} and {masks.shape}"
        )
    if maps.shape != masks.shape:
        raise ValueError(
            f"{where}: `maps` {maps.shape} and `masks` {masks.shape} differ; maps must already be at mask "
            "size (see upsample_maps)"
        )
    masks = _as_binary(masks, "masks", where)
    maps = _as_scores(maps, "maps", where)
    return maps, masks


def _require_both_classes(num_positive: int, num_total: int, what: str, where: str) -> None:
    if num_positive == 0 or num_positive == num_total:
        only = "anomalous" if num_positive else "normal"
        raise ValueError(
            f"{where}: the metric is undefined because all {num_total} {what} are {only}; "
            "it needs both normal and anomalous samples"
        )


def _check_max_fpr(max_fpr: float, where: str) -> None:
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"{where}: `max_fpr` must lie in (0, 1], got {max_fpr}")


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
    labels, scores = _check_labels_and_scores(labels, scores, "image_auroc", context)
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
    labels, scores = _check_labels_and_scores(labels, scores, "image_average_precision", context)
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
    labels, scores = _check_labels_and_scores(labels, scores, "image_f1_max", context)
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


# --------------------------------------------------------------------------------------------------------
# Pixel level
# --------------------------------------------------------------------------------------------------------


def upsample_maps(maps: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resizes anomaly maps to the ground-truth mask size with bilinear interpolation.

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, the convention of
    the zero-shot anomaly-detection literature for patch-grid maps.

    Args:
        maps: [N, h, w] anomaly maps (numpy array or CPU/GPU tensor).
        size: Target (H, W), normally the mask size.

    Returns:
        [N, H, W] float32 numpy array.

    Raises:
        ValueError: If ``maps`` is not 3-D or ``size`` is not two positive integers.
    """
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"upsample_maps: `size` must be (H, W) with positive entries, got {size}")
    tensor = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if tensor.ndim != 3:
        raise ValueError(f"upsample_maps: `maps` must be [N, h, w], got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().to(torch.float32)
    if tuple(tensor.shape[1:]) != tuple(size):
        tensor = F.interpolate(tensor[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return tensor.cpu().numpy()


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
    maps, masks = _check_maps_and_masks(maps, masks, "pixel_metrics", context)
    _require_both_classes(int(masks.sum()), masks.size, "pixels", _where("pixel_metrics", context))
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
# Per-region overlap (MVTec AD)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Regions:
    """Anomalous pixels with their ground-truth region.

    Attributes:
        scores: [A] map values of the anomalous pixels (C order of ``maps[masks]``).
        region: [A] region index in [0, num_regions) of each of those pixels.
        sizes: [num_regions] pixel count of each region.
    """

    scores: np.ndarray
    region: np.ndarray
    sizes: np.ndarray

    @property
    def num_regions(self) -> int:
        return self.sizes.size

    def pro_weights(self) -> np.ndarray:
        """[A] weight ``1 / (num_regions * |region|)`` of each anomalous pixel.

        Summed over the detected pixels they give the PRO: the mean over regions of the detected fraction.
        """
        return 1.0 / (self.num_regions * self.sizes[self.region].astype(np.float64))


def _regions(maps: np.ndarray, masks: np.ndarray, where: str) -> _Regions:
    # Only images with defects are labelled; their pixels appear in maps[masks] in the same C order.
    defective = np.flatnonzero(masks.any(axis=(1, 2)))
    if defective.size == 0:
        raise ValueError(
            f"{where}: the per-region overlap is undefined because no mask contains an anomalous pixel"
        )
    if masks.all():
        raise ValueError(f"{where}: the false-positive rate is undefined because no pixel is normal")
    labels, num_regions = ndimage.label(masks[defective], structure=_REGION_STRUCTURE)
    region = labels[labels > 0] - 1
    sizes = np.bincount(region, minlength=num_regions)
    return _Regions(scores=maps[masks], region=region, sizes=sizes)


def _num_normal_within(max_fpr: float, num_normal: int) -> int:
    """Largest count c with ``c / num_normal <= max_fpr`` in floating point, as the curve is compared."""
    count = min(int(np.floor(max_fpr * num_normal)), num_normal)
    while count < num_normal and (count + 1) / num_normal <= max_fpr:
        count += 1
    while count > 0 and count / num_normal > max_fpr:
        count -= 1
    return count


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, *, context: str | None = None) -> float:
    """Normalised area under the per-region overlap (PRO) curve up to ``max_fpr``, exactly as in MVTec AD.

    Definition (Bergmann et al., IJCV 2021, https://doi.org/10.1007/s11263-020-01400-4, and the official
    MVTec AD evaluation code): ground-truth regions are the 8-connected components of every mask (scipy's
    3x3 all-ones structure). At a threshold t a pixel is positive when ``map >= t``; the PRO is the mean
    over all regions of all images of the fraction of the region that is positive, and the FPR is the
    fraction of all normal pixels (mask == 0, over all images, including defect-free images) that are
    positive. The curve has one point per distinct map value, starts at (0, 0), and is integrated with
    the trapezoid rule from FPR 0 to ``max_fpr``, the PRO at ``max_fpr`` interpolated linearly between
    its neighbours; the area is divided by ``max_fpr``.

    Computation: no threshold loop and no argsort of all pixels. A trapezoid between consecutive curve
    points only has width where normal pixels join the positives, so the area is a sum over normal pixels
    n (score s_n) of ``(PRO(> s_n) + PRO(>= s_n)) / (2 * num_normal)``, where PRO(.) sums the weights
    ``w_j = 1 / (num_regions * |region of j|)`` of the anomalous pixels j (score a_j) above the threshold.
    Swapping the two sums gives ``sum_j w_j * (#{n: s_n <= a_j} + #{n: s_n < a_j}) / (2 * num_normal)``:
    binary searches of the anomalous scores in one sorted array of normal scores. Only the normal pixels
    inside the integration range are sorted (selected by an O(P) partition); the segment that crosses
    ``max_fpr`` adds the interpolated part. Cost O(P + K log K + A log A) for K normal pixels in range and
    A anomalous pixels. Agrees with a brute force over every threshold to ~1e-12 (the official code keeps
    the FPR in float32, so it can differ in the 7th digit).

    Args:
        maps: [N, H, W] anomaly maps at mask size (see :func:`upsample_maps`).
        masks: [N, H, W] bool (or 0/1) ground truth, True = anomalous pixel; defect-free images have an
            all-False mask and contribute normal pixels only.
        max_fpr: Upper integration limit of the FPR, in (0, 1]; 0.3 in the MVTec AD protocol.
        context: Names the class / dataset in error messages.

    Returns:
        AUPRO in [0, 1].

    Raises:
        ValueError: If shapes differ, values are malformed, no pixel is anomalous or none is normal.
    """
    where = _where("aupro", context)
    _check_max_fpr(max_fpr, where)
    maps, masks = _check_maps_and_masks(maps, masks, "aupro", context)
    regions = _regions(maps, masks, where)
    # Sorted queries make the binary searches below walk memory in order (several times faster).
    order = np.argsort(regions.scores)
    anomalous = regions.scores[order]
    weights = regions.pro_weights()[order]

    normal = maps[~masks]
    num_normal = normal.size
    num_inside = _num_normal_within(max_fpr, num_normal)
    partial_area = 0.0
    if num_inside == num_normal:
        inside = np.sort(normal)
    else:
        # The (num_inside + 1)-th largest normal score is the threshold whose curve point first passes
        # max_fpr: normal pixels above it are inside the integration range.
        pivot = num_normal - num_inside - 1
        normal.partition(pivot)
        crossing = normal[pivot]
        upper = normal[pivot + 1 :]
        inside = upper[upper > crossing]
        inside.sort()
        fpr_before = inside.size / num_normal
        fpr_after = (inside.size + np.count_nonzero(normal == crossing)) / num_normal
        if fpr_before < max_fpr:
            pro_before = float(weights[anomalous > crossing].sum())
            pro_after = float(weights[anomalous >= crossing].sum())
            pro_at_limit = pro_before + (pro_after - pro_before) * (max_fpr - fpr_before) / (
                fpr_after - fpr_before
            )
            partial_area = 0.5 * (pro_before + pro_at_limit) * (max_fpr - fpr_before)

    normal_at_or_below = np.searchsorted(inside, anomalous, side="right")
    normal_below = np.searchsorted(inside, anomalous, side="left")
    inside_area = 0.5 * float(np.dot(weights, normal_at_or_below + normal_below)) / num_normal
    return (inside_area + partial_area) / max_fpr


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, *, context: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full PRO curve of MVTec AD, one point per distinct map value (for plots and checks).

    Same definition as :func:`aupro` (which integrates it without building it). Sorts all pixels: prefer
    :func:`aupro` for the number.

    Args:
        maps: [N, H, W] anomaly maps at mask size.
        masks: [N, H, W] bool (or 0/1) ground truth.
        context: Names the class / dataset in error messages.

    Returns:
        ``(fpr, pro, thresholds)``, each [num_distinct + 1]: the first point is (0, 0) at threshold +inf,
        then thresholds in decreasing order; FPR and PRO are non-decreasing and end at (1, 1).
    """
    where = _where("pro_curve", context)
    maps, masks = _check_maps_and_masks(maps, masks, "pro_curve", context)
    regions = _regions(maps, masks, where)
    thresholds = np.unique(maps)[::-1]
    normal = np.sort(maps[~masks])
    false_pos = normal.size - np.searchsorted(normal, thresholds, side="left")
    order = np.argsort(regions.scores)
    anomalous = regions.scores[order]
    # weight_from[i] = total PRO weight of the anomalous pixels ranked i and above (ascending order).
    weight_from = np.concatenate((np.cumsum(regions.pro_weights()[order][::-1])[::-1], [0.0]))
    pro = weight_from[np.searchsorted(anomalous, thresholds, side="left")]
    return (
        np.concatenate(([0.0], false_pos / normal.size)),
        np.concatenate(([0.0], np.minimum(pro, 1.0))),
        np.concatenate(([np.inf], thresholds.astype(np.float64))),
    )


def aupro_200_thresholds(
    maps: np.ndarray,
    masks: np.ndarray,
    max_fpr: float = 0.3,
    num_thresholds: int = 200,
    *,
    context: str | None = None,
) -> float:
    """COMPATIBILITY MODE, NOT the MVTec AD AUPRO: the 200-threshold approximation of many repositories.

    Reproduces the routine that most zero-shot anomaly-detection code bases report as "AUPRO" (it
    descends from CFlow-AD and is used by APRIL-GAN, AnomalyCLIP, AdaCLIP and others), so that numbers
    can be compared with theirs. Its numbers are not comparable with :func:`aupro`:

    * thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` over the whole class, a pixel is
      positive when ``map > t`` (strict);
    * per threshold, the PRO (mean over 8-connected regions of all images of the detected fraction, the
      same regions as ``skimage.measure.label``'s default) and the FPR over normal pixels;
    * only points with ``FPR < max_fpr`` (strict) are kept -- no interpolation at ``max_fpr`` -- and their
      FPRs are min-max rescaled to [0, 1] before ``sklearn.metrics.auc``. The rescaling stretches the
      kept range to the full unit interval instead of dividing by ``max_fpr``.

    Regions are labelled once (they do not depend on the threshold); each threshold is a pass over the
    pixels.

    Args:
        maps: [N, H, W] anomaly maps at mask size.
        masks: [N, H, W] bool (or 0/1) ground truth.
        max_fpr: FPR cut-off for kept points, in (0, 1].
        num_thresholds: Number of threshold steps between the minimum and the maximum map value.
        context: Names the class / dataset in error messages.

    Returns:
        The compatibility-mode AUPRO.

    Raises:
        ValueError: On malformed inputs, constant maps, or fewer than two curve points with distinct FPR
            below ``max_fpr``.
    """
    where = _where("aupro_200_thresholds", context)
    _check_max_fpr(max_fpr, where)
    if num_thresholds < 2:
        raise ValueError(f"{where}: `num_thresholds` must be >= 2, got {num_thresholds}")
    maps, masks = _check_maps_and_masks(maps, masks, "aupro_200_thresholds", context)
    regions = _regions(maps, masks, where)
    normal = maps[~masks]
    low, high = maps.min(), maps.max()
    if not high > low:
        raise ValueError(f"{where}: all map values are equal ({low}); no thresholds to sweep")
    # numpy scalars of the maps' dtype, as the reference routine computes its thresholds.
    thresholds = np.arange(low, high, (high - low) / num_thresholds)
    fprs = np.empty(thresholds.size)
    pros = np.empty(thresholds.size)
    for index, threshold in enumerate(thresholds):
        detected = np.bincount(
            regions.region, weights=regions.scores > threshold, minlength=regions.num_regions
        )
        pros[index] = np.mean(detected / regions.sizes)
        fprs[index] = np.count_nonzero(normal > threshold) / normal.size
    keep = fprs < max_fpr
    kept_fprs, kept_pros = fprs[keep], pros[keep]
    if kept_fprs.size < 2 or kept_fprs.max() == kept_fprs.min():
        raise ValueError(
            f"{where}: fewer than two thresholds with distinct FPR below max_fpr={max_fpr}; the "
            "compatibility AUPRO is undefined for these maps"
        )
    rescaled = (kept_fprs - kept_fprs.min()) / (kept_fprs.max() - kept_fprs.min())
    return float(auc(rescaled, kept_pros))


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
