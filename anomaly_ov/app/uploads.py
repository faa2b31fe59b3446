"""What a user of the web app may upload, and the checked reading of it.

An upload is read with the one image reader (:func:`anomaly_ov.data.images.read_image`: EXIF orientation,
16-bit grey scaled to 8 bits, long side limited as the models see it) after two checks that need no
decoding: the file's size in bytes and its pixel count from the header (a decompression bomb or a huge
photo is refused before its pixels are decoded). Every refusal is a :class:`UploadError` whose message
names the file as the user called it and says what to do.
"""

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from anomaly_ov.data.images import SIXTEEN_BIT_MODES, BadInputError, image_size, read_image


class UploadError(ValueError):
    """An upload the app refuses, with a message for the page."""


@dataclass(frozen=True)
class UploadLimits:
    """Limits on one request's uploads.

    Attributes:
        max_bytes: Largest file, in bytes.
        max_pixels: Largest image, in pixels (width x height as stored), checked before decoding.
        max_views: Most images in one request (the views of one object).
        max_question_chars: Longest question, in characters.
    """

    max_bytes: int = 20_000_000
    max_pixels: int = 24_000_000
    max_views: int = 9
    max_question_chars: int = 2000


@dataclass(frozen=True)
class Upload:
    """One uploaded image, read as the models see it.

    Attributes:
        image: The RGB image (long side limited).
        name: The file name as the user gave it.
        note: What was done to it on the way (grey or 16-bit converted, resized), or "".
    """

    image: Image.Image
    name: str
    note: str


def _stored_mode(path: Path) -> str | None:
    try:
        with Image.open(path) as handle:
            return handle.mode
    except (OSError, SyntaxError, ValueError):
        return None  # read_image names the problem


def read_upload(path: str | Path, name: str, limits: UploadLimits, max_side: int | None) -> Upload:
    """Reads one uploaded file after checking its size in bytes and in pixels.

    Args:
        path: Where the server stored the upload (a temporary file).
        name: The file's name as the user gave it (for messages).
        limits: The limits.
        max_side: The long-side limit of the one image reader (the release's 1024; None: off).

    Returns:
        The image and a note of what was converted.

    Raises:
        UploadError: If the file is too large, not an image, truncated, or has too many pixels.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise UploadError(
            f"{name}: the file has {size / 1e6:.1f} MB, more than the limit of "
            f"{limits.max_bytes / 1e6:.1f} MB (serve.yaml limits.max_bytes); upload a smaller file"
        )
    try:
        width, height = image_size(path)
    except BadInputError as error:
        raise UploadError(f"{name}: {error.reason}; upload a PNG, JPEG, BMP, TIFF or WebP image") from None
    if width * height > limits.max_pixels:
        raise UploadError(
            f"{name}: the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the "
            f"limit of {limits.max_pixels / 1e6:.1f} megapixels (serve.yaml limits.max_pixels); downscale it"
        )
    mode = _stored_mode(path)
    try:
        image = read_image(path, max_side)
    except BadInputError as error:
        raise UploadError(f"{name}: {error.reason}; upload a complete image file") from None
    notes = []
    if mode in SIXTEEN_BIT_MODES:
        notes.append("16-bit grey, scaled to 8 bits")
    elif mode in {"L", "LA", "1", "P"}:
        notes.append(f"{'grey' if mode in {'L', 'LA', '1'} else 'palette'} image, converted to RGB")
    if image.size != (width, height):
        notes.append(f"resized from {width}x{height} to {image.width}x{image.height} (long side {max_side})")
    return Upload(image=image, name=name, note="; ".join(notes))
