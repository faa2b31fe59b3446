"""The MVTec AD per-region overlap: the PRO curve and the area under it up to a false-positive rate (AUPRO).

Notation: ``N`` images, masks and anomaly maps of ``H x W`` pixels; masks are boolean (``True`` =
anomalous), maps real numbers where larger means more anomalous. :func:`aupro` and :func:`pro_curve` are
exact (every distinct map value is a threshold); :func:`aupro_200_thresholds` is a labelled compatibility
mode that reproduces a common approximation.

References:
    P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger, C. Steger, "The MVTec Anomaly Detection Dataset:
    A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection", IJCV 129, 2021,
    https://doi.org/10.1007/s11263-020-01400-4 -- the per-region overlap (PRO) curve and AUPRO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc

from anomaly_ov.eval.metric_inputs import check_maps_and_masks, check_max_fpr, where_of

# Ground-truth regions are 8-connected components inside one image, as in the MVTec AD evaluation code
# (scipy.ndimage.label with a 3x3 all-ones structuring element). The structure is 3-D so that one call
# labels a whole [N, H, W] stack, but its first and last planes are empty: regions never join across images.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


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
    where = where_of("aupro", context)
    check_max_fpr(max_fpr, where)
    maps, masks = check_maps_and_masks(maps, masks, "aupro", context)
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
    where = where_of("pro_curve", context)
    maps, masks = check_maps_and_masks(maps, masks, "pro_curve", context)
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
    where = where_of("aupro_200_thresholds", context)
    check_max_fpr(max_fpr, where)
    if num_thresholds < 2:
        raise ValueError(f"{where}: `num_thresholds` must be >= 2, got {num_thresholds}")
    maps, masks = check_maps_and_masks(maps, masks, "aupro_200_thresholds", context)
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
