"""Small image files the dataset-reader tests write (imported by tests in this folder, on sys.path)."""

from pathlib import Path

import numpy as np
from PIL import Image


def png(path: Path, size: tuple[int, int] = (16, 12), value: int = 128, mode: str = "RGB") -> Path:
    """A one-value PNG of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)
    return path


def truncated(path: Path) -> Path:
    """A noise PNG cut in the middle of its pixel data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path
