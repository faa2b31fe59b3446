"""The crops the frozen vision tower sees for each sample, and a dataset that yields them.

An image is cut by transformers' LLaVA-OneVision image processor into its AnyRes crops (the whole image
resized to the tower's square input, then the high-resolution tiles) or, with ``single_crop``, into the
first of them only: the whole image resized (stretched) to the square input. Every view of a multi-view
sample is one such crop. Because the single crop and AnyRes' first crop are the same stretched whole image,
an anomaly map of the first crop maps back onto the image by resizing it to the image size, in both modes.

Notation: ``n`` crops of one sample, ``N`` crops of a batch, ``S`` the tower's input side.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import LlavaOnevisionImageProcessor
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from anomaly_ov.data.images import BadInputError, SkippedFile, image_size, read_image
from anomaly_ov.data.zsad import AnomalySample
from anomaly_ov.models.vision import anyres_crops


@dataclass(frozen=True)
class ImageCrops:
    """Turns a sample into the crops of the vision tower.

    Attributes:
        image_processor: LLaVA-OneVision image processor (its size is the tower's input side, its grid
            pinpoints define the AnyRes tiles, its mean/std the normalisation).
        single_crop: One crop per image instead of AnyRes (whole image + tiles).
    """

    image_processor: LlavaOnevisionImageProcessor
    single_crop: bool = False

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
        return {"image_processor": settings, "single_crop": self.single_crop}

    def image_num_crops(self, path: Path, single: bool) -> int:
        """Number of crops of one image file, from its header only (no decoding).

        Raises:
            BadInputError: If the image is missing or unreadable.
        """
        if single:
            return 1
        width, height = image_size(path)
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
            single: Only the whole-image crop (else AnyRes: whole image, then the tiles in row-major order).

        Returns:
            [n, 3, S, S] normalised crops (n = 1 when ``single``).

        Raises:
            BadInputError: If the image is missing, unreadable or truncated.
        """
        image = read_image(path, max_side=None)
        if single:
            # With one pinpoint of the crop size the processor makes the whole-image crop and one tile.
            side = self.crop_size
            batch = self.image_processor(image, image_grid_pinpoints=[[side, side]], return_tensors="pt")
            return batch["pixel_values"][0, :1]
        return anyres_crops(self.image_processor, [image]).pixel_values

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
