"""Heat-map overlays: size, blending arithmetic, where the colour changes, and input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.inference.heatmap import heatmap_grid, overlay_heatmap, save_heatmap_grid

GREY = (100, 100, 100)


def grey_image(width: int = 40, height: int = 30) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def test_overlay_has_image_size_and_is_rgb() -> None:
    out = overlay_heatmap(grey_image(40, 30), np.random.default_rng(0).random((4, 5)))
    assert out.size == (40, 30) and out.mode == "RGB"
    # Grayscale and RGBA inputs are converted.
    assert overlay_heatmap(grey_image().convert("L"), np.zeros((3, 3))).mode == "RGB"
    assert overlay_heatmap(grey_image().convert("RGBA"), np.zeros((3, 3))).size == (40, 30)


def test_zero_map_gives_the_blend_of_image_and_the_colormap_bottom() -> None:
    # jet(0) is dark blue (0, 0, 0.5): 0.5 * 100 + 0.5 * 255 * (0, 0, 0.5) = (50, 50, 113.75) -> 114.
    out = np.asarray(overlay_heatmap(grey_image(), np.zeros((4, 4)), alpha=0.5))
    assert np.all(out == np.array([50, 50, 114], dtype=np.uint8))
    # jet(1) is dark red (0.5, 0, 0); alpha 0.25: 0.75 * 100 + 0.25 * 127.5 = 106.875 -> 107, 75, 75.
    out = np.asarray(overlay_heatmap(grey_image(), np.ones((2, 2)), alpha=0.25))
    assert np.all(out == np.array([107, 75, 75], dtype=np.uint8))
    # alpha 0 returns the image itself.
    assert np.all(np.asarray(overlay_heatmap(grey_image(), np.ones((2, 2)), alpha=0.0)) == GREY)


def test_pixels_change_where_the_map_is_high() -> None:
    anomaly_map = np.zeros((8, 8))
    anomaly_map[:, 4:] = 1.0  # right half anomalous
    out = np.asarray(overlay_heatmap(grey_image(64, 64), anomaly_map)).astype(int)
    left, right = out[:, :24], out[:, 40:]
    assert np.all(left == left[0, 0]) and np.all(right == right[0, 0])
    assert right[0, 0, 0] > left[0, 0, 0]  # red where high
    assert left[0, 0, 2] > right[0, 0, 2]  # blue where low


def test_other_colormap_changes_the_colour() -> None:
    jet = np.asarray(overlay_heatmap(grey_image(), np.zeros((2, 2)), colormap="jet"))
    gray = np.asarray(overlay_heatmap(grey_image(), np.zeros((2, 2)), colormap="gray"))
    assert np.all(gray == 50) and not np.array_equal(jet, gray)


@pytest.mark.parametrize(
    ("anomaly_map", "kwargs", "message"),
    [
        (np.zeros((2, 3, 3)), {}, r"\[h, w\]"),
        (np.zeros((0, 3)), {}, r"\[h, w\]"),
        (np.full((3, 3), 1.5), {}, r"\[0, 1\]"),
        (np.full((3, 3), -0.1), {}, r"\[0, 1\]"),
        (np.full((3, 3), np.nan), {}, "NaN"),
        (np.zeros((3, 3)), {"alpha": 1.2}, "alpha"),
        (np.zeros((3, 3)), {"colormap": "no_such_map"}, "no_such_map"),
    ],
)
def test_bad_inputs_raise_clear_errors(anomaly_map: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overlay_heatmap(grey_image(), anomaly_map, **kwargs)


def test_grid_layout_and_save(tmp_path: Path) -> None:
    images = [grey_image(), grey_image(20, 20)]
    maps = [np.zeros((4, 4)), np.ones((4, 4))]
    masks = [np.zeros((30, 40), dtype=bool), np.ones((20, 20), dtype=bool)]
    grid = heatmap_grid(images, maps, masks, tile_size=(32, 24))
    assert grid.size == (3 * 32, 2 * 24)
    pixels = np.asarray(grid)
    assert np.all(pixels[:24, 64:] == 0) and np.all(pixels[24:, 64:] == 255)  # mask column
    assert np.all(pixels[:24, :32] == GREY)  # original column
    assert heatmap_grid(images, maps, tile_size=(32, 24)).size == (2 * 32, 2 * 24)
    path = save_heatmap_grid(tmp_path / "sub" / "grid.png", images, maps, masks, tile_size=(32, 24))
    assert np.array_equal(np.asarray(Image.open(path)), pixels)
    with pytest.raises(ValueError, match="counts must match"):
        heatmap_grid(images, maps[:1])
