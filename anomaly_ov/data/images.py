"""Decoded images to 8-bit RGB, keeping their intensity range.

Shared by the dataset readers and the inference commands, so training, evaluation and ``predict`` see the
same pixels for the same file.
"""

import numpy as np
from PIL import Image

# PIL modes of 16-bit grayscale files (PNG, TIFF); "I" is how some formats and Pillow versions hold them.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


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
