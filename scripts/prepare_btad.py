"""Writes the manifest of BTAD (beanTech Anomaly Detection) from its published layout.

Layout (``BTech_Dataset_transformed``)::

    <root>/<01|02|03>/train/ok/*               normal training images (not in the manifest)
    <root>/<01|02|03>/test/ok/*                normal test images
    <root>/<01|02|03>/test/ko/*                anomalous test images
    <root>/<01|02|03>/ground_truth/ko/<stem>.* their masks (same stem, .png or .bmp)

    python scripts/prepare_btad.py --root datasets/BTAD    # -> datasets/BTAD/manifest.jsonl
"""

import sys
from pathlib import Path

from anomaly_ov.data.manifest import prepare_cli
from anomaly_ov.data.zsad import IMAGE_SUFFIXES, AnomalySample, BadInputError, sample


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"BTAD folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_btad(root: Path) -> list[AnomalySample]:
    """The test images of every BTAD product, anomalous ones with their masks."""
    products = sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
    if not products:
        raise FileNotFoundError(f"no BTAD product folders (<product>/test/) under {root}")
    samples = []
    for product in products:
        samples += [sample(image, 0, product.name) for image in _images(product / "test" / "ok")]
        masks = {mask.stem: mask for mask in _images(product / "ground_truth" / "ko")}
        for image in _images(product / "test" / "ko"):
            if image.stem not in masks:
                raise BadInputError(image, f"no mask with this name in {product / 'ground_truth' / 'ko'}")
            samples.append(sample(image, 1, product.name, masks[image.stem]))
    return samples


if __name__ == "__main__":
    sys.exit(prepare_cli("BTAD", read_btad))
