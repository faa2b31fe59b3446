"""AITEX (fabric defects): strips -> 256x256 patches with their masks, as the field evaluates it.

Layout (both download variants)::

    <root>/Defect_images/<nnnn_ddd_ff>.png        anomalous strips, 4096 x 256
      or <root>/Defect_images/Defect_images/...   (nested, as some archives extract)
    <root>/Mask_images/<nnnn_ddd_ff>_mask*.png    their masks; several masks of one strip are merged
    <root>/NODefect_images/<fabric>/*.png         defect-free strips

InCTRL (whose numbers Table 2 compares against) cuts each strip into 256x256 patches: a patch is anomalous
when its piece of the mask holds a defect pixel, and its mask is that piece. The patches and their masks are
written under ``out_dir`` (``images/``, ``masks/``); a strip whose side is not a multiple of the patch size
loses the remainder (AITEX's 4096 x 256 strips have none). With ``whole_strips`` the strips themselves are
the samples (their merged masks written under ``out_dir/masks``). One class, "fabric".
"""

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_ov.data.images import BadInputError
from anomaly_ov.data.prepare.layouts import LayoutError, image_files, layout_folder
from anomaly_ov.data.zsad import AnomalySample, sample

logger = logging.getLogger(__name__)

CLASS_NAME = "fabric"
PATCH_SIZE = 256
EXPECTED = (
    "Defect_images/ (or Defect_images/Defect_images/) with the defect strips, Mask_images/ with "
    "<name>_mask*.png and NODefect_images/<fabric>/ with the defect-free strips"
)


def _read_array(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as handle:
            return np.asarray(handle)
    except OSError as error:
        raise BadInputError(path, f"unreadable image ({error})") from None


def strip_mask(masks: list[Path], size: tuple[int, int]) -> np.ndarray:
    """The union of a strip's masks as [H, W] bool, checked against the strip's (width, height) ``size``."""
    union = np.zeros(size[::-1], bool)
    for mask in masks:
        array = _read_array(mask)
        if array.shape[:2] != union.shape:
            raise BadInputError(mask, f"mask size {array.shape[1::-1]} differs from its image size {size}")
        union |= (array if array.ndim == 2 else array.max(axis=-1)) > 0
    return union


def patch_boxes(size: tuple[int, int], patch: int) -> list[tuple[int, int]]:
    """Top-left (x, y) of the whole ``patch`` x ``patch`` tiles of a (width, height) image, row-major.

    A remainder narrower than a patch is dropped.
    """
    width, height = size
    return [(x, y) for y in range(0, height - patch + 1, patch) for x in range(0, width - patch + 1, patch)]


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _cut(image: Path, mask: np.ndarray | None, out_dir: Path, patch: int) -> list[AnomalySample]:
    """The patches of one strip, written to ``out_dir`` (masks only for patches with defect pixels)."""
    array = _read_array(image)
    size = (array.shape[1], array.shape[0])
    boxes = patch_boxes(size, patch)
    if not boxes:
        raise BadInputError(image, f"image size {size} is smaller than one {patch}x{patch} patch")
    samples = []
    for index, (x, y) in enumerate(boxes):
        name = f"{image.stem}_p{index:02d}"
        piece_image = np.ascontiguousarray(array[y : y + patch, x : x + patch])
        path = _save(piece_image, out_dir / "images" / f"{name}.png")
        piece = None if mask is None else mask[y : y + patch, x : x + patch]
        if piece is not None and piece.any():
            mask_path = _save(piece.astype(np.uint8) * 255, out_dir / "masks" / f"{name}_mask.png")
            samples.append(sample(path, 1, CLASS_NAME, mask_path))
        else:
            samples.append(sample(path, 0, CLASS_NAME))
    return samples


def read_aitex(
    root: Path, out_dir: Path | None = None, whole_strips: bool = False, patch_size: int = PATCH_SIZE
) -> list[AnomalySample]:
    """AITEX as patches (default) or whole strips.

    Args:
        root: The extracted AITEX folder.
        out_dir: Where patches and (merged) masks are written (default ``<root>/aitex_prepared``).
        whole_strips: Keep the strips as samples instead of cutting them.
        patch_size: Side of the square patches.

    Returns:
        The samples: normal strips' patches, then the defect strips' patches, in file order.

    Raises:
        LayoutError: If a folder is missing or no defect image is found (never an all-normal dataset).
        BadInputError: If a defect strip has no mask or a mask's size differs from its strip's.
    """
    defect_dir = layout_folder(root, "Defect_images", EXPECTED)
    mask_dir = layout_folder(root, "Mask_images", EXPECTED)
    normal_dir = layout_folder(root, "NODefect_images", EXPECTED)
    defects = image_files(defect_dir)
    if not defects:
        raise LayoutError(defect_dir, EXPECTED, "no defect image found")
    normals = image_files(normal_dir, recursive=True)
    out_dir = out_dir or root / "aitex_prepared"
    samples: list[AnomalySample] = []
    for image in normals:
        samples += [sample(image, 0, CLASS_NAME)] if whole_strips else _cut(image, None, out_dir, patch_size)
    for image in defects:
        masks = sorted(mask_dir.glob(f"{image.stem}_mask*.png"))
        if not masks:
            raise BadInputError(image, f"no mask {image.stem}_mask*.png in {mask_dir}")
        with Image.open(image) as handle:
            size = handle.size
        mask = strip_mask(masks, size)
        if whole_strips:
            merged = (
                masks[0]
                if len(masks) == 1
                else _save(mask.astype(np.uint8) * 255, out_dir / "masks" / f"{image.stem}_mask.png")
            )
            samples.append(sample(image, 1, CLASS_NAME, merged))
        else:
            samples += _cut(image, mask, out_dir, patch_size)
    anomalous = sum(item.label for item in samples)
    logger.info(
        "AITEX: %d normal and %d defect strips -> %d %s (%d anomalous)",
        len(normals), len(defects), len(samples), "strips" if whole_strips else "patches", anomalous,
    )  # fmt: skip
    return samples
