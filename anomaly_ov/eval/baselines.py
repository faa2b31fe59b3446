"""Trivial no-model baselines that a zero-shot number must beat to mean anything.

The darkness baseline (fixed before any model was scored on ELPV, issue 17): on electroluminescence images
a defective solar cell is often darker overall (cracks and inactive regions emit no light), so the cell's
mean grey level alone already ranks cells. Its score is

    darkness(image) = 1 - mean over pixels of grey / 255

with ``grey`` the image's 8-bit luma as PIL computes it (``Image.convert("L")``: ITU-R 601-2,
``L = R * 299/1000 + G * 587/1000 + B * 114/1000``; an 8-bit grey image is its own luma), read at its stored
size. No training, no parameters; larger = darker = more anomalous. Its image AUROC equals that of the
negated mean grey level, which any monotone rescaling leaves unchanged.
"""

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from anomaly_ov.data.images import read_image
from anomaly_ov.data.zsad import AnomalySample
from anomaly_ov.eval.metrics import image_auroc


def darkness_score(image: np.ndarray) -> float:
    """The darkness of an image: ``1 - mean(grey) / 255`` (see the module docstring).

    Args:
        image: uint8 grey image [H, W] (already the luma), or its float values in [0, 255].

    Returns:
        A score in [0, 1]: 0 for an all-white image, 1 for an all-black one.

    Raises:
        ValueError: If the image is not two-dimensional or is empty.
    """
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"darkness_score takes a non-empty grey image [H, W], got shape {grey.shape}")
    return float(1.0 - grey.mean() / 255.0)


def darkness_of_file(path: object) -> float:
    """:func:`darkness_score` of an image file, its luma as PIL's ``convert("L")`` of the RGB image read.

    Raises:
        BadInputError: If the file is missing or unreadable (naming it).
    """
    return darkness_score(np.asarray(read_image(path, max_side=None).convert("L")))


def baseline_aurocs(
    samples: Sequence[AnomalySample],
    groups: Mapping[str, Callable[[AnomalySample], bool]],
    score: Callable[[object], float] = darkness_of_file,
) -> dict[str, dict[str, float]]:
    """Image AUROC of a no-model score on groups of samples (e.g. ELPV's all / mono / poly cells).

    Args:
        samples: The labelled samples (each scored once, by its first image).
        groups: ``{group name: predicate}``; a group holds the samples its predicate accepts.
        score: ``score(image path) -> float``, larger = more anomalous (default: :func:`darkness_of_file`).

    Returns:
        ``{group: {"image_auroc": ..., "num_images": ..., "num_anomalous": ...}}``.

    Raises:
        ValueError: If a group holds a single class (AUROC undefined), naming the group.
    """
    scores = np.asarray([score(item.image) for item in samples], dtype=np.float64)
    labels = np.asarray([item.label for item in samples], dtype=bool)
    results: dict[str, dict[str, float]] = {}
    for name, accepts in groups.items():
        chosen = np.asarray([accepts(item) for item in samples], dtype=bool)
        results[name] = {
            "image_auroc": image_auroc(labels[chosen], scores[chosen], context=f"group {name!r}"),
            "num_images": int(chosen.sum()),
            "num_anomalous": int(labels[chosen].sum()),
        }
    return results
