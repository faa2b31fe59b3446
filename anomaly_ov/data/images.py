"""The one image reader: a file -> the RGB picture every model part sees.

Shared by stage-1 feature extraction and caching, zero-shot evaluation, the processor (training and
inference), ``predict``, ``chat`` and the benchmark evaluations, so the same file gives the same pixels
everywhere:

* the EXIF orientation is applied (camera JPEGs are stored sideways);
* 16-bit grayscale is scaled to 8 bits, not clipped (:func:`to_rgb`);
* an image whose long side exceeds ``max_side`` (the release: 1024 px) is resized, aspect kept, with PIL's
  default resampling, so that its long side is ``max_side`` -- before anything else, as the release does in
  training and evaluation (SPEC §5). It changes the AnyRes tile grid of most large images;
* every failure is a :class:`BadInputError` naming the file.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL modes of 16-bit grayscale files (PNG, TIFF); "I" is how some formats and Pillow versions hold them.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# The image files every reader and command accepts (lower-case suffixes).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The release's limit on the long side (SPEC §5); configs expose it as max_image_side.
RELEASE_MAX_IMAGE_SIDE = 1024
# the environment variable that sets the decompression-bomb limit (see max_image_pixels)
MAX_PIXELS_ENV = "ANOMALY_OV_MAX_IMAGE_PIXELS"
# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


class BadInputError(ValueError):
    """An image or mask that cannot be used, with the file and the reason.

    Attributes:
        path: The offending file.
        reason: What is wrong with it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class SkippedFile:
    """A file left out under the explicit skip-and-report option.

    Attributes:
        path: The offending file.
        reason: Why it was left out.
    """

    path: str
    reason: str


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with one of :data:`IMAGE_SUFFIXES`."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts an image to RGB, scaling 16-bit grayscale to 8 bits (65535 -> 255).

    PIL's own ``convert("RGB")`` clips every 16-bit value above 255, which turns most 16-bit images (CT,
    MRI, industrial cameras) white.

    Args:
        image: A decoded PIL image of any mode.

    Returns:
        An RGB image of the same size.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8))
    return image.convert("RGB")


def limited_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after the release's long-side limit (unchanged when it already fits).

    Args:
        width: Image width.
        height: Image height.
        max_side: Longest allowed side in pixels, or None for no limit.

    Returns:
        The size the image is resized to: the long side becomes ``max_side``, the short side is scaled by
        the same factor and truncated as the release's scripts do (``int(1024 * h / w)``: 1500x1000 ->
        1024x682), at least 1 pixel.
    """
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise ValueError(f"max_side={max_side} must be positive or None.")
    # integer floor division: the same as the release's int() of a float quotient for every image size
    if width >= height:
        return max_side, max(1, max_side * height // width)
    return max(1, max_side * width // height), max_side


def limit_side(image: Image.Image, max_side: int | None) -> Image.Image:
    """Resizes ``image`` (aspect kept, PIL's default resampling) so its long side is at most ``max_side``."""
    size = limited_size(*image.size, max_side)
    return image if size == image.size else image.resize(size)


def max_image_pixels() -> int | None:
    """The most pixels an image may have (a decompression bomb has more): PIL's ``Image.MAX_IMAGE_PIXELS``
    (89.5 million by default), or ``$ANOMALY_OV_MAX_IMAGE_PIXELS`` (a number, or ``none`` for no limit).

    PIL itself only warns between this limit and twice it; here every image above it is refused.
    """
    setting = os.environ.get(MAX_PIXELS_ENV)
    if setting is None:
        return Image.MAX_IMAGE_PIXELS
    if setting.strip().lower() == "none":
        return None
    try:
        return int(setting)
    except ValueError:
        raise ValueError(f"${MAX_PIXELS_ENV}={setting!r}: expected a number of pixels or 'none'.") from None


def _refuse_hostile(path: str | Path, handle: Image.Image) -> None:
    """Refuses, from the header alone, a decompression bomb and a multi-page TIFF."""
    width, height = handle.size
    limit = max_image_pixels()
    if limit is not None and width * height > limit:
        raise BadInputError(
            path,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} (a decompression "
            f"bomb?); set ${MAX_PIXELS_ENV} to allow larger images",
        )
    # a TIFF of thousands of pages: the models read one picture, so a file of several is refused rather
    # than silently read as its first page (is_animated looks for a second page only)
    if handle.format == "TIFF" and getattr(handle, "is_animated", False):
        raise BadInputError(path, "a TIFF with several pages; save the page to use as a file of its own")


@contextmanager
def _opened(path: str | Path, failure: str) -> Iterator[Image.Image]:
    """Opens an image file; every way it can fail becomes a :class:`BadInputError` naming the file."""
    try:
        with Image.open(path) as handle:
            _refuse_hostile(path, handle)
            yield handle
    except BadInputError:
        raise
    except FileNotFoundError:
        raise BadInputError(path, "image file not found") from None
    except UnidentifiedImageError:
        raise BadInputError(path, "not a readable image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadInputError(path, f"{failure} ({error})") from None


def read_image(path: str | Path, max_side: int | None = RELEASE_MAX_IMAGE_SIDE) -> Image.Image:
    """Reads an image file as the models see it: decoded, upright, RGB, long side limited.

    Args:
        path: The image file.
        max_side: The long-side limit (the release's 1024 by default; None keeps the full size).

    Returns:
        An RGB PIL image.

    Raises:
        BadInputError: If the file is missing, not an image, or truncated (the message names the file).
    """
    with _opened(path, "unreadable or truncated image") as handle:
        # Decoding every pixel here makes a truncated file fail now, not later in a worker.
        handle.load()
        image = to_rgb(ImageOps.exif_transpose(handle))
    return limit_side(image, max_side)


def image_size(path: str | Path, max_side: int | None = None) -> tuple[int, int]:
    """(width, height) of an image as :func:`read_image` returns it, from the header only (no decoding).

    Args:
        path: The image file.
        max_side: The same long-side limit :func:`read_image` applies (None: the stored size).

    Raises:
        BadInputError: If the file is missing or not an image.
    """
    with _opened(path, "unreadable image") as handle:
        width, height = handle.size
        orientation = _exif_orientation(handle)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return limited_size(width, height, max_side)


def _exif_orientation(handle: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image, or None (no EXIF, or EXIF that cannot be read)."""
    try:
        return handle.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError):
        # a header-only look must not fail on a truncated body; decoding will name the file later
        return None
