"""Writes the manifest of AITEX (fabric defects) from its published layout; one class, "fabric".

Layout::

    <root>/Defect_images/<nnnn_ddd_ff>.png        anomalous images (4096 x 256)
    <root>/Mask_images/<nnnn_ddd_ff>_mask*.png    their masks; an image with several masks gets their union,
                                                   written to <out folder>/aitex_merged_masks/
    <root>/NODefect_images/<fabric>/*.png         normal images

    python scripts/prepare_aitex.py --root datasets/AITEX  # -> datasets/AITEX/manifest.jsonl
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_ov.data.manifest import prepare_cli
from anomaly_ov.data.zsad import IMAGE_SUFFIXES, AnomalySample, BadInputError, sample

CLASS_NAME = "fabric"


def _union_mask(masks: list[Path], out_folder: Path, stem: str) -> Path:
    """Writes the union of several masks of one image and returns its path."""
    arrays = []
    for mask in masks:
        with Image.open(mask) as handle:
            arrays.append(np.asarray(handle.convert("L")) > 0)
    if len({a.shape for a in arrays}) != 1:
        raise BadInputError(masks[0], f"the masks {[m.name for m in masks]} of one image differ in size")
    out_folder.mkdir(parents=True, exist_ok=True)
    path = out_folder / f"{stem}_mask.png"
    Image.fromarray(np.logical_or.reduce(arrays).astype(np.uint8) * 255).save(path)
    return path


def read_aitex(root: Path, merged_masks: Path | None = None) -> list[AnomalySample]:
    """All AITEX images: the defect-free ones (normal) and the defect images with their masks."""
    defect_dir, mask_dir, normal_dir = root / "Defect_images", root / "Mask_images", root / "NODefect_images"
    for folder in (defect_dir, mask_dir, normal_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"AITEX folder not found: {folder}")
    merged_masks = merged_masks or root / "aitex_merged_masks"
    samples = [
        sample(image, 0, CLASS_NAME)
        for image in sorted(normal_dir.rglob("*"))
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]
    for image in sorted(p for p in defect_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        masks = sorted(mask_dir.glob(f"{image.stem}_mask*.png"))
        if not masks:
            raise BadInputError(image, f"no mask {image.stem}_mask*.png in {mask_dir}")
        mask = masks[0] if len(masks) == 1 else _union_mask(masks, merged_masks, image.stem)
        samples.append(sample(image, 1, CLASS_NAME, mask))
    return samples


if __name__ == "__main__":
    sys.exit(prepare_cli("AITEX", read_aitex))
