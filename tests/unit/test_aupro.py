"""AUPRO (exact MVTec AD definition and the 200-threshold compatibility mode) against hand-computed values,
a brute-force second implementation written here and the widespread loop over skimage regions."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure
from sklearn.metrics import auc

from anomaly_ov.eval.aupro import aupro, aupro_200_thresholds, pro_curve

# --------------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------------


def ground_truth_regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, region mask) of every 8-connected region, found with skimage (not scipy)."""
    regions = []
    for index, mask in enumerate(masks):
        labelled = measure.label(mask, connectivity=2)
        regions.extend((index, labelled == value) for value in range(1, labelled.max() + 1))
    return regions


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """MVTec AD AUPRO straight from the definition: every distinct value is a threshold (map >= t)."""
    regions = ground_truth_regions(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        positive = maps >= threshold
        fprs.append((positive & normal).sum() / normal.sum())
        pros.append(np.mean([positive[index][region].mean() for index, region in regions]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x1 <= max_fpr:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            if x0 < max_fpr:
                y_limit = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += 0.5 * (y0 + y_limit) * (max_fpr - x0)
            break
    return area / max_fpr


def reference_200_threshold_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float, steps: int) -> float:
    """The widespread loop, literally: relabel with regionprops at every threshold, strict '>'."""
    low, high = maps.min(), maps.max()
    fprs, pros = [], []
    for threshold in np.arange(low, high, (high - low) / steps):
        binary = maps > threshold
        overlaps = []
        for image_binary, mask in zip(binary, masks, strict=True):
            for region in measure.regionprops(measure.label(mask)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                overlaps.append(image_binary[rows, cols].sum() / region.area)
        pros.append(np.mean(overlaps))
        fprs.append((binary & ~masks).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < max_fpr
    kept = fprs[keep]
    return auc((kept - kept.min()) / (kept.max() - kept.min()), pros[keep])


def random_case(seed: int, num_images: int = 6, size: int = 14, levels: int = 12) -> tuple[np.ndarray, ...]:
    """Quantised maps (many ties), several blobs per image, some images without defect."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), dtype=bool)
    for index in range(num_images):
        if index % 3 == 2:  # defect-free image
            continue
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(0, size - 3, 2)
            height, width = rng.integers(1, 5, 2)
            masks[index, row : row + height, col : col + width] = True
    masks[0, 0, 0] = True  # guarantee at least one defect
    maps = rng.integers(0, levels, masks.shape).astype(np.float64) + 3.0 * masks * rng.random(masks.shape)
    return np.round(maps, 1), masks


# --------------------------------------------------------------------------------------------------------
# AUPRO (exact MVTec AD definition)
# --------------------------------------------------------------------------------------------------------


# One image of one row: pixels 0-1 are one defect region, 2-4 are normal.
ROW_MASK = np.array([[[True, True, False, False, False]]])


@pytest.mark.parametrize(
    ("row", "max_fpr", "expected"),
    [
        # Curve (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1): PRO 0.5 until FPR 1/3, then 1.
        ([0.9, 0.5, 0.7, 0.3, 0.1], 0.3, 0.5),
        ([0.9, 0.5, 0.7, 0.3, 0.1], 0.5, (1 / 6 + 1 / 6) / 0.5),
        ([0.9, 0.5, 0.7, 0.3, 0.1], 1.0, 5 / 6),
        # A tie at 0.5 (defect and normal pixel) gives the diagonal (0,.5) -> (1/3,1); at 0.3 the PRO is
        # interpolated to 0.95: area 0.3 * (0.5 + 0.95) / 2.
        ([0.9, 0.5, 0.5, 0.3, 0.1], 0.3, 0.5 * (0.5 + 0.95)),
        # Perfect ranking: PRO 1 at FPR 0.
        ([1.0, 1.0, 0.0, 0.0, 0.0], 0.3, 1.0),
        # Defect ranked lowest: PRO stays 0 until FPR 1.
        ([0.0, 0.0, 1.0, 1.0, 1.0], 0.3, 0.0),
    ],
)
def test_aupro_hand_computed(row: list[float], max_fpr: float, expected: float) -> None:
    maps = np.array([[row]])
    assert aupro(maps, ROW_MASK, max_fpr) == pytest.approx(expected, abs=1e-12)
    assert brute_force_aupro(maps, ROW_MASK, max_fpr) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 0.5, 1.0])
def test_aupro_matches_brute_force(seed: int, max_fpr: float) -> None:
    maps, masks = random_case(seed, levels=6 + 8 * seed)
    assert aupro(maps, masks, max_fpr) == pytest.approx(brute_force_aupro(maps, masks, max_fpr), abs=1e-10)


def test_aupro_when_a_curve_point_lies_exactly_on_max_fpr() -> None:
    # 10 normal pixels: FPR takes the values k / 10, so 0.3 is a curve point (no interpolation).
    maps = np.array([[[5.0, 1.0, 9.0, 8.0, 7.0, 6.0, 4.0, 3.0, 2.0, 1.5, 0.5, 0.2]]])
    masks = np.zeros_like(maps, dtype=bool)
    masks[0, 0, :2] = True
    for max_fpr in (0.3, 0.2, 0.25):
        assert aupro(maps, masks, max_fpr) == pytest.approx(
            brute_force_aupro(maps, masks, max_fpr), abs=1e-12
        )


def test_regions_are_8_connected() -> None:
    # A diagonal pair (one region under 8-connectivity, two under 4) and an isolated pixel.
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 4, 4] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 4, 4] = 1.0  # only the isolated pixel is found at the top threshold
    fpr, pro, thresholds = pro_curve(maps, masks)
    assert thresholds[1] == 1.0 and fpr[1] == 0.0
    assert pro[1] == pytest.approx(1 / 2)  # mean of (pair: 0/2, single: 1/1); 4-connectivity gives 1/3


def test_pro_curve_integrates_to_aupro() -> None:
    maps, masks = random_case(3)
    fpr, pro, thresholds = pro_curve(maps, masks)
    assert (fpr[0], pro[0], fpr[-1]) == (0.0, 0.0, 1.0)
    assert pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-15) and np.all(np.diff(thresholds) < 0)
    assert thresholds.size == np.unique(maps).size + 1
    inside = fpr <= 0.3
    x, y = fpr[inside], pro[inside]
    next_x, next_y = fpr[inside.sum()], pro[inside.sum()]
    y_limit = y[-1] + (next_y - y[-1]) * (0.3 - x[-1]) / (next_x - x[-1])
    area = np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + 0.5 * (y[-1] + y_limit) * (0.3 - x[-1])
    assert aupro(maps, masks) == pytest.approx(area / 0.3, abs=1e-12)


def test_aupro_is_invariant_to_monotone_rescaling_and_dtype() -> None:
    maps, masks = random_case(4)
    reference = aupro(maps, masks)
    assert aupro(3.0 * maps - 7.0, masks) == pytest.approx(reference, abs=1e-12)
    assert aupro(maps.astype(np.float32), masks.astype(np.uint8)) == pytest.approx(reference, abs=1e-12)


def test_aupro_errors() -> None:
    maps, masks = random_case(0)
    with pytest.raises(ValueError, match=r"aupro \(carpet\).*no mask contains an anomalous pixel"):
        aupro(maps, np.zeros_like(masks), context="carpet")
    with pytest.raises(ValueError, match="no pixel is normal"):
        aupro(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(maps, masks, max_fpr=0.0)
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(maps, masks, max_fpr=1.5)
    with pytest.raises(ValueError, match="differ"):
        aupro(maps, masks[:, :, :-1])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(bad, masks)


# --------------------------------------------------------------------------------------------------------
# 200-threshold compatibility mode
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_200_threshold_mode_reproduces_the_widespread_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, masks = random_case(seed, num_images=4, size=12)
    maps = (rng.random(masks.shape) + 0.8 * masks).astype(np.float32)
    steps = 40  # the reference relabels at every step, keep it small
    ours = aupro_200_thresholds(maps, masks, num_thresholds=steps)
    assert ours == pytest.approx(reference_200_threshold_aupro(maps, masks, 0.3, steps), abs=1e-12)


def test_200_threshold_mode_is_an_approximation_and_labelled() -> None:
    maps, masks = random_case(5, levels=1000)
    exact = aupro(maps, masks)
    approximate = aupro_200_thresholds(maps, masks)
    # Close, but a different number (strict '>' thresholds, no interpolation, rescaled FPR axis).
    assert approximate != pytest.approx(exact, abs=1e-6)
    assert abs(approximate - exact) < 0.15
    assert "COMPATIBILITY MODE" in aupro_200_thresholds.__doc__
    assert "NOT the MVTec AD AUPRO" in aupro_200_thresholds.__doc__
    with pytest.raises(ValueError, match="all map values are equal"):
        aupro_200_thresholds(np.zeros(masks.shape), masks)
