"""Metrics against sklearn, hand-computed values and slow second implementations written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from test_aupro import brute_force_aupro, random_case  # same folder (pytest puts it on sys.path)

from anomaly_ov.data.crops import upsample_maps
from anomaly_ov.eval.metrics import (
    ClassMetrics,
    average_over_classes,
    evaluate_class,
    image_auroc,
    image_average_precision,
    image_f1_max,
    pixel_auroc,
    pixel_average_precision,
    pixel_f1_max,
    pixel_metrics,
)

# --------------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------------


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


# --------------------------------------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------------------------------------


def test_image_metrics_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # 3 of the 4 (positive, negative) pairs are ordered correctly.
    assert image_auroc(labels, scores) == pytest.approx(0.75)
    # Thresholds 0.8 (P=1, R=1/2) and 0.35 (P=2/3, R=1): AP = 1/2 * 1 + 1/2 * 2/3.
    assert image_average_precision(labels, scores) == pytest.approx(5 / 6)
    # F1 at those thresholds: 2/3 and 2 * (2/3) / (5/3) = 0.8.
    assert image_f1_max(labels, scores) == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.3
    labels[:2] = [True, False]
    scores = np.round(rng.random(60) + 0.4 * labels, 1)  # rounding creates ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert image_f1_max(labels, scores) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_image_metrics_reject_single_class_and_bad_input() -> None:
    with pytest.raises(ValueError, match=r"bottle.*all 3 image labels are normal"):
        image_auroc(np.zeros(3), np.array([0.1, 0.2, 0.3]), context="bottle")
    with pytest.raises(ValueError, match="all 2 image labels are anomalous"):
        image_f1_max(np.ones(2, dtype=bool), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="3 entries but `scores` has 2"):
        image_auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="only 0/1"):
        image_average_precision(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        image_auroc(np.array([0, 1]), np.array([0.1, np.nan]))


# --------------------------------------------------------------------------------------------------------
# Pixel level
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_match_sklearn_on_flattened_pixels(seed: int) -> None:
    maps, masks = random_case(seed, num_images=5, size=20, levels=8 + 10 * seed)
    labels, scores = masks.ravel(), maps.ravel()
    result = pixel_metrics(maps, masks)
    assert result.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result.f1_max == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    assert pixel_auroc(maps, masks) == result.auroc
    assert pixel_average_precision(maps, masks) == result.ap
    assert pixel_f1_max(maps, masks) == result.f1_max


def test_pixel_metrics_accept_float32_maps_and_01_masks() -> None:
    maps, masks = random_case(7)
    reference = pixel_metrics(maps.astype(np.float32), masks)
    assert pixel_metrics(maps.astype(np.float32), masks.astype(np.uint8)) == reference
    assert reference.auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel()))


def test_pixel_metrics_errors() -> None:
    maps, masks = random_case(0)
    with pytest.raises(ValueError, match=r"screw.*all .* pixels are normal"):
        pixel_metrics(maps, np.zeros_like(masks), context="screw")
    with pytest.raises(ValueError, match="upsample_maps"):
        pixel_metrics(maps[:, :7], masks)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pixel_metrics(maps[0], masks[0])
    with pytest.raises(ValueError, match="mask > 0"):
        pixel_metrics(maps, masks.astype(np.uint8) * 255)


def test_upsample_maps_bilinear_hand_computed() -> None:
    maps = np.array([[[0.0, 1.0], [0.0, 1.0]]])
    # align_corners=False: output column x samples input x' = (x + 0.5) / 2 - 0.5, clamped to [0, 1].
    expected_row = np.array([0.0, 0.25, 0.75, 1.0])
    out = upsample_maps(maps, (4, 4))
    assert out.shape == (1, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(expected_row, (1, 4, 4)), atol=1e-7)
    same = np.random.default_rng(0).random((2, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(upsample_maps(same, (5, 6)), same)
    np.testing.assert_allclose(upsample_maps(torch.ones(3, 2, 2), (7, 9)), np.ones((3, 7, 9)))
    with pytest.raises(ValueError, match=r"\[N, h, w\]"):
        upsample_maps(np.zeros((4, 4)), (8, 8))


# --------------------------------------------------------------------------------------------------------
# Per-class results and class averages
# --------------------------------------------------------------------------------------------------------


def test_evaluate_class_collects_every_metric() -> None:
    maps, masks = random_case(2)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    result = evaluate_class("pill", labels, scores, maps, masks)
    assert result.name == "pill" and result.num_images == maps.shape[0]
    assert result.image_auroc == pytest.approx(roc_auc_score(labels, scores))
    assert result.pixel_auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert result.aupro == pytest.approx(brute_force_aupro(maps, masks, 0.3), abs=1e-10)
    assert result.to_dict()["aupro"] == result.aupro
    image_only = evaluate_class("headct", labels, scores)
    assert image_only.pixel_auroc is None and image_only.aupro is None
    with pytest.raises(ValueError, match="both `maps` and `masks`"):
        evaluate_class("pill", labels, scores, maps=maps)


def test_average_over_classes_is_unweighted() -> None:
    big = ClassMetrics("big", 1000, 0.9, 0.8, 0.7, 0.95, 0.5, 0.6, 0.85)
    small = ClassMetrics("small", 10, 0.5, 0.4, 0.3, 0.75, 0.3, 0.2, 0.65)
    means = average_over_classes([big, small])
    assert means == pytest.approx(
        {
            "image_auroc": 0.7,
            "image_ap": 0.6,
            "image_f1_max": 0.5,
            "pixel_auroc": 0.85,
            "pixel_ap": 0.4,
            "pixel_f1_max": 0.4,
            "aupro": 0.75,
        }
    )
    image_only = [ClassMetrics("a", 5, 0.6, 0.5, 0.4), ClassMetrics("b", 5, 0.8, 0.7, 0.6)]
    assert average_over_classes(image_only) == pytest.approx(
        {"image_auroc": 0.7, "image_ap": 0.6, "image_f1_max": 0.5}
    )
    with pytest.raises(ValueError, match=r"`pixel_auroc` is missing for classes \['a'\]"):
        average_over_classes([image_only[0], big])
    with pytest.raises(ValueError, match="duplicate"):
        average_over_classes([big, big])
    with pytest.raises(ValueError, match="no class results"):
        average_over_classes([])
