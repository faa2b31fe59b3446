"""Anomaly maps drawn over their images: a colour-mapped heat map blended with the picture.

Notation: ``[h, w]`` an anomaly map at model resolution (e.g. the expert's patch grid), ``H x W`` the
image. Maps are expected in [0, 1] (normalise raw scores first, e.g. by the class-wide min and max, so
that colours are comparable across images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anomaly_ov.data.crops import upsample_maps


def _check_map(anomaly_map: np.ndarray, argument: str) -> np.ndarray:
    values = np.asarray(anomaly_map)
    if values.ndim != 2 or min(values.shape) == 0:
        raise ValueError(
            f"overlay_heatmap: `{argument}` must be a non-empty [h, w] array, got shape {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"overlay_heatmap: `{argument}` must hold numbers, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"overlay_heatmap: `{argument}` contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"overlay_heatmap: `{argument}` must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "normalise the scores first"
        )
    return values


def _colormap(name: str) -> matplotlib.colors.Colormap:
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"overlay_heatmap: unknown matplotlib colormap {name!r}") from None


def overlay_heatmap(
    image: Image.Image, anomaly_map: np.ndarray, alpha: float = 0.5, colormap: str = "jet"
) -> Image.Image:
    """Blends a colour-mapped anomaly map over an image.

    The map is resized to the image with the same bilinear interpolation as the pixel metrics
    (:func:`anomaly_ov.data.crops.upsample_maps`), coloured with a matplotlib colormap and blended:
    ``out = (1 - alpha) * image + alpha * colour(map)``, rounded to 8 bits.

    Args:
        image: Any PIL image; converted to RGB. Output has its size.
        anomaly_map: [h, w] map with values in [0, 1] (1 = most anomalous).
        alpha: Weight of the heat map in [0, 1]; 0 returns the image, 1 the pure heat map.
        colormap: Name of a matplotlib colormap ("jet", "inferno", ...).

    Returns:
        RGB image of size ``image.size``.

    Raises:
        ValueError: If the map is not 2-D, not finite or outside [0, 1], ``alpha`` is outside [0, 1], or
            the colormap is unknown.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_heatmap: `alpha` must lie in [0, 1], got {alpha}")
    values = _check_map(anomaly_map, "anomaly_map")
    cmap = _colormap(colormap)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    height, width = rgb.shape[:2]
    resized = np.clip(upsample_maps(values[None].astype(np.float32), (height, width))[0], 0.0, 1.0)
    heat = cmap(resized)[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * heat
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8), mode="RGB")


def with_colour_bar(image: Image.Image, colormap: str = "jet", label: str = "anomaly") -> Image.Image:
    """The image with a vertical colour bar on its right: the colormap from 0 (bottom) to 1 (top), ticked.

    Args:
        image: An overlay drawn by :func:`overlay_heatmap` with the same colormap.
        colormap: matplotlib colormap name.
        label: Title above the bar.

    Returns:
        RGB image, as high as ``image`` and wider by the bar and its tick labels.
    """
    cmap = _colormap(colormap)
    base = image.convert("RGB")
    height = base.height
    font = ImageFont.load_default(size=max(10, min(16, height // 20)))
    margin = max(4, height // 40)
    bar_width = max(8, height // 25)
    text_width = int(max(font.getlength(text) for text in ("0.00", "1.00", label))) + 2 * margin
    canvas = Image.new("RGB", (base.width + bar_width + text_width + margin, height), "white")
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    top, bottom = 2 * margin + font.size, height - margin
    if bottom - top >= 2:
        # row r of the bar shows the value 1 at the top down to 0 at the bottom
        values = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(bar_width, axis=1)
        colours = np.round(cmap(values)[..., :3] * 255.0).astype(np.uint8)
        left = base.width + margin
        canvas.paste(Image.fromarray(colours, mode="RGB"), (left, top))
        for value in (1.0, 0.5, 0.0):
            y = round(top + (1.0 - value) * (bottom - top - 1))
            draw.line([(left + bar_width, y), (left + bar_width + margin // 2 + 1, y)], fill="black")
            draw.text((left + bar_width + margin, y), f"{value:.2f}", fill="black", font=font, anchor="lm")
        draw.text((left, margin), label, fill="black", font=font, anchor="lt")
    return canvas


def heatmap_grid(
    images: Sequence[Image.Image],
    anomaly_maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_size: tuple[int, int] = (256, 256),
) -> Image.Image:
    """One row per sample: the image, its heat-map overlay and, if given, the ground-truth mask.

    Args:
        images: ``num_samples`` PIL images.
        anomaly_maps: ``num_samples`` maps [h, w] in [0, 1].
        masks: Optional ``num_samples`` bool (or 0/1) masks of any size, drawn white on black.
        alpha: Heat-map weight, see :func:`overlay_heatmap`.
        colormap: matplotlib colormap name.
        tile_size: (width, height) of every tile.

    Returns:
        RGB image of ``num_samples`` rows and 2 (3 with masks) columns of tiles.

    Raises:
        ValueError: If the sequences are empty or of different lengths, or a map is malformed.
    """
    if not images:
        raise ValueError("heatmap_grid: no images given")
    if len(anomaly_maps) != len(images) or (masks is not None and len(masks) != len(images)):
        raise ValueError(
            f"heatmap_grid: got {len(images)} images, {len(anomaly_maps)} maps and "
            f"{'no' if masks is None else len(masks)} masks; the counts must match"
        )
    columns = 2 if masks is None else 3
    width, height = tile_size
    grid = Image.new("RGB", (columns * width, len(images) * height))
    for row, (image, anomaly_map) in enumerate(zip(images, anomaly_maps, strict=True)):
        tile = image.convert("RGB").resize(tile_size, Image.Resampling.BILINEAR)
        tiles = [tile, overlay_heatmap(tile, anomaly_map, alpha=alpha, colormap=colormap)]
        if masks is not None:
            mask = np.asarray(masks[row]).astype(bool)
            tiles.append(Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").resize(tile_size))
        for column, tile_image in enumerate(tiles):
            grid.paste(tile_image, (column * width, row * height))
    return grid


def save_heatmap_grid(
    path: str | Path,
    images: Sequence[Image.Image],
    anomaly_maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_size: tuple[int, int] = (256, 256),
) -> Path:
    """Writes :func:`heatmap_grid` to ``path`` (format from the suffix, e.g. .png), creating folders.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmap_grid(images, anomaly_maps, masks, alpha=alpha, colormap=colormap, tile_size=tile_size).save(path)
    return path
