"""Pixel maps as the zero-shot field computes them (SPEC §5 "Field practice", §6).

* :func:`gaussian_smooth` -- the Gaussian of sigma 4 that AnomalyCLIP, AdaCLIP and others apply to the
  upsampled map before the pixel metrics (``scipy.ndimage.gaussian_filter``'s kernel and border rule, in
  torch so a batch of maps is smoothed at once);
* :func:`stitch_tile_maps` -- the map of an image from its AnyRes tiles at tile resolution (each tile's
  27x27 map side by side), instead of the whole-image crop's coarse 27x27 map;
* :func:`field_mask` -- a mask at the field's square resolution (518 px in AnomalyCLIP's protocol);
* :func:`region_layout` -- the pixels of a class whose masks differ in size, laid out so that the pooled
  pixel metrics and the per-region overlap (AUPRO) are computed exactly, each image at its own size.

Notation: ``N`` maps, ``H x W`` pixels, ``g`` the map side of one crop, ``n`` tiles.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_utils import ChannelDimension

FIELD_SIGMA = 4.0
"""The smoothing of the field's pixel maps (sigma in pixels of the mask-sized map)."""


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    # scipy's kernel: radius int(truncate * sigma + 0.5), weights exp(-x^2 / 2 sigma^2), normalised.
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _symmetric_index(size: int, radius: int) -> torch.Tensor:
    # scipy's "reflect" border (d c b a | a b c d | d c b a), for any radius: period 2 * size.
    index = torch.arange(-radius, size + radius) % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def gaussian_smooth(maps: torch.Tensor | np.ndarray, sigma: float = FIELD_SIGMA) -> np.ndarray:
    """Smooths maps with a Gaussian, as ``scipy.ndimage.gaussian_filter(map, sigma)`` does each one.

    Same kernel (truncated at 4 sigma) and border rule ("reflect"); separable, in float64.

    Args:
        maps: [N, H, W] maps at mask size.
        sigma: Standard deviation in pixels (> 0).

    Returns:
        [N, H, W] float32.
    """
    if sigma <= 0:
        raise ValueError(f"gaussian_smooth: sigma must be > 0, got {sigma}")
    values = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    if values.ndim != 3:
        raise ValueError(f"gaussian_smooth: maps must be [N, H, W], got shape {tuple(values.shape)}")
    values = values.detach().to(torch.float64)
    kernel = _gaussian_kernel(sigma).to(values.device)
    radius = kernel.numel() // 2
    count, height, width = values.shape
    # along W, then along H; each pass pads by gathering the symmetric indices
    rows = values[:, :, _symmetric_index(width, radius).to(values.device)].reshape(count * height, 1, -1)
    values = F.conv1d(rows, kernel.view(1, 1, -1)).reshape(count, height, width)
    columns = values[:, _symmetric_index(height, radius).to(values.device)].transpose(1, 2)
    columns = columns.reshape(count * width, 1, -1)
    values = F.conv1d(columns, kernel.view(1, 1, -1)).reshape(count, width, height).transpose(1, 2)
    return values.float().cpu().numpy()


def stitch_tile_maps(
    tile_maps: torch.Tensor,
    image_size: Sequence[int],
    grid_pinpoints: Sequence[Sequence[int]],
    crop_size: int,
) -> torch.Tensor:
    """The image's map from its AnyRes tiles, at tile resolution, padding cut away.

    LLaVA-OneVision's processor picks the best pinpoint resolution (rows x cols tiles of ``crop_size``),
    resizes the image into it with its aspect kept and pads it centred (transformers'
    ``select_best_resolution`` and ``get_patch_output_size``), then cuts the tiles row-major. The tiles'
    maps are laid out the same way and the padded border removed.

    Args:
        tile_maps: [n, g, g] maps of the tiles (the crops after the whole-image crop), row-major.
        image_size: (height, width) of the image as the processor saw it (after the long-side limit).
        grid_pinpoints: The processor's ``image_grid_pinpoints`` ([[height, width], ...] in pixels).
        crop_size: The tower's input side S.

    Returns:
        [h, w] map of the image region (rows x g by cols x g before the padding is cut).

    Raises:
        ValueError: If the number of tiles does not match the grid the processor chose.
    """
    height, width = (int(side) for side in image_size)
    best_height, best_width = select_best_resolution((height, width), [list(p) for p in grid_pinpoints])
    rows, cols = best_height // crop_size, best_width // crop_size
    count, grid, _ = tile_maps.shape
    if count != rows * cols:
        raise ValueError(
            f"stitch_tile_maps: {count} tile maps for the {rows}x{cols} grid of an image of {height}x{width}"
        )
    canvas = tile_maps.detach().float().cpu().reshape(rows, cols, grid, grid).permute(0, 2, 1, 3)
    canvas = canvas.reshape(rows * grid, cols * grid)
    # the processor's resized image inside the padded best resolution (centred)
    placeholder = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (1, height, width))
    inner_height, inner_width = get_patch_output_size(
        placeholder, (best_height, best_width), ChannelDimension.FIRST
    )
    top, left = (best_height - inner_height) // 2, (best_width - inner_width) // 2
    scale = grid / crop_size  # map cells per processor pixel
    y0, x0 = round(top * scale), round(left * scale)
    y1 = max(y0 + 1, round((top + inner_height) * scale))
    x1 = max(x0 + 1, round((left + inner_width) * scale))
    return canvas[y0:y1, x0:x1]


def field_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """A mask at the field's square resolution, as AnomalyCLIP's test script makes it.

    torchvision's ``Resize((side, side))`` of the 0/255 mask image is PIL's bilinear resize; ``ToTensor``
    then ``> 0.5`` keeps the pixels above 127.5.
    """
    image = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, mode="L")
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR)) > 127.5


def region_layout(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of maps and masks of different sizes as one [1, 1, P] map and mask, regions kept apart.

    The pixel metrics pool pixels, so their order does not matter. The per-region overlap needs each
    ground-truth region (8-connected, per image) to stay one region: each region's pixels are laid out
    contiguously and followed by one normal pixel as a separator, then the remaining normal pixels. On a
    [1, 1, P] array 8-connectivity joins left/right neighbours only, so :func:`~anomaly_ov.eval.aupro.aupro`
    finds exactly the images' regions, and every pixel appears once: the metrics are those of the images
    at their own sizes.

    Args:
        maps: One [H_i, W_i] map per image, at its mask's size.
        masks: One [H_i, W_i] bool mask per image.

    Returns:
        ``(map, mask)``, each [1, 1, P] with P the total pixel count.

    Raises:
        ValueError: If a map and its mask differ in shape, or there are fewer normal pixels than regions.
    """
    structure = np.ones((3, 3), dtype=bool)
    regions: list[np.ndarray] = []
    normals: list[np.ndarray] = []
    for index, (values, mask) in enumerate(zip(maps, masks, strict=True)):
        values, mask = np.asarray(values, np.float32), np.asarray(mask, bool)
        if values.shape != mask.shape:
            raise ValueError(f"region_layout: map {index} has shape {values.shape}, its mask {mask.shape}")
        labels, count = ndimage.label(mask, structure=structure)
        if count:
            inside = labels[mask]
            order = np.argsort(inside, kind="stable")
            bounds = np.cumsum(np.bincount(inside, minlength=count + 1)[1:])[:-1]
            regions += np.split(values[mask][order], bounds)
        normals.append(values[~mask])
    normal = np.concatenate(normals) if normals else np.zeros(0, np.float32)
    if normal.size < len(regions):
        raise ValueError(f"region_layout: {len(regions)} regions but only {normal.size} normal pixels")
    pieces, flags = [], []
    for number, region in enumerate(regions):
        pieces += [region, normal[number : number + 1]]
        flags += [np.ones(region.size, bool), np.zeros(1, bool)]
    pieces.append(normal[len(regions) :])
    flags.append(np.zeros(normal.size - len(regions), bool))
    return np.concatenate(pieces)[None, None], np.concatenate(flags)[None, None]
