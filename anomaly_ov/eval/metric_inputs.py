"""Input checks shared by the anomaly-detection metrics (:mod:`anomaly_ov.eval.metrics`,
:mod:`anomaly_ov.eval.aupro`): shapes, 0/1 labels and masks, finite scores, both classes present.

Every message starts with the metric and the class it was computed for (``where``).
"""

from __future__ import annotations

import numpy as np


def where_of(function: str, context: str | None) -> str:
    """Returns the message prefix naming the metric and, if given, the class: ``"aupro (bottle)"``."""
    return f"{function} ({context})" if context else function


def as_binary(values: np.ndarray, argument: str, where: str) -> np.ndarray:
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


def as_scores(values: np.ndarray, argument: str, where: str) -> np.ndarray:
    """Returns ``values`` if they are finite real numbers; raises naming ``argument`` otherwise."""
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(f"{where}: `{argument}` must hold real numbers, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: `{argument}` contains NaN or infinite values")
    return values


def check_labels_and_scores(
    labels: np.ndarray, scores: np.ndarray, function: str, context: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns [N] bool labels and [N] scores after checking shapes, values and that both classes occur."""
    where = where_of(function, context)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"{where}: `labels` and `scores` must be 1-D [num_images], got shapes "
            f"{labels.shape} and {scores.shape}"
        )
    if labels.shape != scores.shape:
        raise ValueError(f"{where}: `labels` has {labels.size} entries but `scores` has {scores.size}")
    labels = as_binary(labels, "labels", where)
    scores = as_scores(scores, "scores", where)
    require_both_classes(int(labels.sum()), labels.size, "image labels", where)
    return labels, scores


def check_maps_and_masks(
    maps: np.ndarray, masks: np.ndarray, function: str, context: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns [N, H, W] maps and bool masks after checking that shapes agree and values are valid."""
    where = where_of(function, context)
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
    masks = as_binary(masks, "masks", where)
    maps = as_scores(maps, "maps", where)
    return maps, masks


def require_both_classes(num_positive: int, num_total: int, what: str, where: str) -> None:
    """Raises if all ``num_total`` samples are of one class (the ranking metrics are undefined then)."""
    if num_positive == 0 or num_positive == num_total:
        only = "anomalous" if num_positive else "normal"
        raise ValueError(
            f"{where}: the metric is undefined because all {num_total} {what} are {only}; "
            "it needs both normal and anomalous samples"
        )


def check_max_fpr(max_fpr: float, where: str) -> None:
    """Raises unless ``0 < max_fpr <= 1``."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"{where}: `max_fpr` must lie in (0, 1], got {max_fpr}")
