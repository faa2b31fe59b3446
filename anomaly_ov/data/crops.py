"""The crops the vision tower sees: the one crop function and the stage-1 dataset that yields crops.

Every path that turns an image into what the tower sees goes through :func:`anyres_crops` -- stage-1 feature
extraction and caching, zero-shot evaluation and, through the processor, the multimodal model in training
and inference -- after the one image reader (:func:`anomaly_ov.data.images.read_image`, which applies the
release's long-side limit first). It wraps transformers' ``LlavaOnevisionImageProcessor``:

* **AnyRes** (a single-image sample): the whole image resized (stretched) to the tower's square input,
  then the high-resolution tiles of the best-fitting grid pinpoint, row-major;
* **single crop** (LLaVA-OneVision's meaning: each view of a multi-image sample, or every image when AnyRes
  is off): the image padded to a square (centred, the processor's background colour), then resized to the
  tower's input. An anomaly map of a single crop therefore covers the padding too: :func:`crop_map_to_image`
  cuts it away.

Notation: ``n`` crops of one sample, ``N`` crops of a batch, ``S`` the tower's input side, ``g`` map side.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import LlavaOnevisionImageProcessor
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from anomaly_ov.data.images import (
    RELEASE_MAX_IMAGE_SIDE,
    BadInputError,
    SkippedFile,
    image_size,
    read_image,
)
from anomaly_ov.data.zsad import AnomalySample


@dataclass(frozen=True)
class AnyResCrops:
    """Crops of a batch of images, flattened for the vision tower.

    Attributes:
        pixel_values: Crops of all images, [N, 3, S, S]; each image's crops are contiguous and its first crop
            is the whole image, followed by its tiles in row-major order (AnyRes only).
        crops_per_image: Number of crops of each image (sums to N).
        image_sizes: Original (height, width) of each image.
        single_crop: Whether every image is one padded square crop.
    """

    pixel_values: torch.Tensor
    crops_per_image: list[int]
    image_sizes: list[tuple[int, int]]
    single_crop: bool


def anyres_crops(
    image_processor: LlavaOnevisionImageProcessor,
    images: Sequence[object],
    single_crop: bool = False,
) -> AnyResCrops:
    """Cuts images into the tower's crops with transformers' LLaVA-OneVision image processor.

    The processor pads every image to the largest crop count of the batch; the padding is removed here with
    transformers' own crop count (``image_size_to_num_patches``), as LLaVA-OneVision's model does.

    Args:
        image_processor: The LLaVA-OneVision image processor (its ``image_grid_pinpoints`` define the tiles).
        images: Images the processor accepts (PIL images, arrays or tensors), already read with
            :func:`anomaly_ov.data.images.read_image`.
        single_crop: Encode every image as one crop (padded to a square, no tiles), as LLaVA-OneVision does
            for the views of a multi-image sample.

    Returns:
        The flattened crops and the number of crops per image.
    """
    if len(images) == 0:
        raise ValueError("images is empty.")
    if single_crop:
        # transformers treats a one-image list as a single-image sample (AnyRes tiles); a lone image is
        # duplicated so the processor takes its multi-image path (one square crop per view), then dropped.
        views = list(images) if len(images) > 1 else [images[0], images[0]]
        batch = image_processor([views], return_tensors="pt")
    else:
        batch = image_processor(list(images), return_tensors="pt")
    pixel_values = batch["pixel_values"]
    image_sizes = [(int(h), int(w)) for h, w in batch["image_sizes"].tolist()][: len(images)]
    if single_crop:
        counts = [1] * len(images)
        crops = pixel_values.reshape(-1, *pixel_values.shape[2:])[: len(images)]
    else:
        crop_size = image_processor.size["height"]
        counts = [
            image_size_to_num_patches(size, image_processor.image_grid_pinpoints, crop_size)
            for size in image_sizes
        ]
        crops = torch.cat([image[:count] for image, count in zip(pixel_values, counts, strict=True)], dim=0)
    return AnyResCrops(
        pixel_values=crops, crops_per_image=counts, image_sizes=image_sizes, single_crop=single_crop
    )


def crop_map_to_image(
    crop_map: torch.Tensor,
    image_size: Sequence[int],
    padded_to_square: bool,
    long_side: int | None = None,
) -> torch.Tensor:
    """The anomaly map of the whole image from the map of its whole-image crop.

    An AnyRes whole-image crop is the image stretched to a square, so its map covers the image as it is. A
    single crop was padded to a square (centred) first, so the padding is cut away.

    Args:
        crop_map: Map of the image's first crop, [g, g].
        image_size: Original (height, width).
        padded_to_square: Whether the crop was padded to a square (single-crop mode).
        long_side: Resolution of the result's long side when padding is cut (None: the image's own size;
            a few times the map side keeps memory small when the map is upsampled again later).

    Returns:
        [g, g] map (unchanged when nothing was padded), or the image region [h, w] (aspect of the image)
        when padding was cut.
    """
    values = crop_map.detach().float().cpu()
    height, width = (int(s) for s in image_size)
    if not padded_to_square or height == width:
        return values
    if long_side is not None:
        scale = long_side / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    side = max(height, width)
    square = F.interpolate(values[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    top, left = (side - height) // 2, (side - width) // 2
    return square[top : top + height, left : left + width].clamp(0, 1)


def upsample_maps(maps: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resizes anomaly maps to the ground-truth mask size with bilinear interpolation.

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, the convention of
    the zero-shot anomaly-detection literature for patch-grid maps.

    Args:
        maps: [N, h, w] anomaly maps (numpy array or CPU/GPU tensor).
        size: Target (H, W), normally the mask size.

    Returns:
        [N, H, W] float32 numpy array.

    Raises:
        ValueError: If ``maps`` is not 3-D or ``size`` is not two positive integers.
    """
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"upsample_maps: `size` must be (H, W) with positive entries, got {size}")
    tensor = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if tensor.ndim != 3:
        raise ValueError(f"upsample_maps: `maps` must be [N, h, w], got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().to(torch.float32)
    if tuple(tensor.shape[1:]) != tuple(size):
        tensor = F.interpolate(tensor[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return tensor.cpu().numpy()


@dataclass(frozen=True)
class ImageCrops:
    """Turns a sample into the crops of the vision tower.

    Attributes:
        image_processor: LLaVA-OneVision image processor (its size is the tower's input side, its grid
            pinpoints define the AnyRes tiles, its mean/std the normalisation).
        single_crop: One crop per image (LLaVA-OneVision's padded square) instead of AnyRes (whole image +
            tiles).
        max_image_side: The release's long-side limit applied when reading (None: off).
    """

    image_processor: LlavaOnevisionImageProcessor
    single_crop: bool = False
    max_image_side: int | None = RELEASE_MAX_IMAGE_SIDE

    @property
    def crop_size(self) -> int:
        """Side S of every crop."""
        return int(self.image_processor.size["height"])

    def is_single_crop(self, item: AnomalySample) -> bool:
        """Whether the sample's images are encoded as one crop each (always for multi-view samples)."""
        return self.single_crop or len(item.images) > 1

    def fingerprint(self) -> dict[str, object]:
        """Everything that determines the crops, for keying the feature cache."""
        settings = json.loads(json.dumps(self.image_processor.to_dict(), sort_keys=True, default=str))
        return {
            "image_processor": settings,
            "single_crop": self.single_crop,
            "single_crop_meaning": "padded_square",
            "max_image_side": self.max_image_side,
        }

    def image_num_crops(self, path: Path, single: bool) -> int:
        """Number of crops of one image file, from its header only (no decoding).

        Raises:
            BadInputError: If the image is missing or unreadable.
        """
        if single:
            return 1
        width, height = image_size(path, self.max_image_side)
        return int(
            image_size_to_num_patches(
                (height, width), self.image_processor.image_grid_pinpoints, self.crop_size
            )
        )

    def num_crops(self, item: AnomalySample) -> int:
        """Number of crops of a sample, from the image headers only (see :meth:`image_num_crops`)."""
        single = self.is_single_crop(item)
        return sum(self.image_num_crops(path, single) for path in item.images)

    def image_crops(self, path: Path, single: bool) -> torch.Tensor:
        """The crops of one image file.

        Args:
            path: The image.
            single: One padded square crop (else AnyRes: whole image, then the tiles in row-major order).

        Returns:
            [n, 3, S, S] normalised crops (n = 1 when ``single``).

        Raises:
            BadInputError: If the image is missing, unreadable or truncated.
        """
        image = read_image(path, self.max_image_side)
        return anyres_crops(self.image_processor, [image], single_crop=single).pixel_values

    def __call__(self, item: AnomalySample) -> torch.Tensor:
        """The crops of one sample: its images' crops, concatenated.

        Returns:
            [n, 3, S, S] normalised crops, the whole-image crop of the (first) image first.

        Raises:
            BadInputError: If an image is missing, unreadable or truncated.
        """
        single = self.is_single_crop(item)
        return torch.cat([self.image_crops(path, single) for path in item.images])


@dataclass(frozen=True)
class CropBatch:
    """Crops of a batch of samples.

    Attributes:
        indices: Sample index of each image, [B] (only the samples that could be read).
        pixel_values: Crops of those samples, [N, 3, S, S], each sample's crops contiguous.
        crops_per_image: Crops of each sample (sums to N).
        failures: Samples that could not be read: (sample index, the offending file).
    """

    indices: list[int]
    pixel_values: torch.Tensor
    crops_per_image: list[int]
    failures: list[tuple[int, SkippedFile]]


class CropDataset(Dataset):
    """Yields ``(index, crops or None, failure or None)`` for each sample (bad files never raise in a worker).

    Args:
        samples: The samples.
        crops: The preprocessing.
    """

    def __init__(self, samples: Sequence[AnomalySample], crops: ImageCrops) -> None:
        self.samples = list(samples)
        self.crops = crops

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, SkippedFile | None]:
        try:
            return index, self.crops(self.samples[index]), None
        except BadInputError as error:
            return index, None, SkippedFile(error.path, error.reason)


def collate_crops(items: Sequence[tuple[int, torch.Tensor | None, SkippedFile | None]]) -> CropBatch:
    """Stacks the crops of the readable samples and lists the others."""
    good = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    failures = [(index, failure) for index, _, failure in items if failure is not None]
    pixel_values = torch.cat([pixels for _, pixels in good]) if good else torch.empty(0)
    return CropBatch(
        indices=[index for index, _ in good],
        pixel_values=pixel_values,
        crops_per_image=[int(pixels.shape[0]) for _, pixels in good],
        failures=failures,
    )


def raise_or_collect(
    failures: Sequence[tuple[int, SkippedFile]], skip_bad: bool, skipped: list[SkippedFile]
) -> None:
    """Applies the bad-input policy to a batch's failures: raise on the first, or append them to ``skipped``.

    Raises:
        BadInputError: For the first failure when ``skip_bad`` is False.
    """
    if failures and not skip_bad:
        _, first = failures[0]
        raise BadInputError(Path(first.path), first.reason)
    skipped.extend(failure for _, failure in failures)
