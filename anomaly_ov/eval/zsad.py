"""Zero-shot anomaly-detection evaluation of the expert (SPEC §6, Table 2).

For each dataset and each class, one class at a time (memory is bounded by one class's maps and masks,
never a whole dataset's): the expert scores every image (image AUROC, AP, F1-max) and, when the class has
masks, the anomaly map of each image's whole-image crop is upsampled to its mask size for the pixel AUROC,
AP, F1-max and AUPRO (:mod:`anomaly_ov.eval.metrics`). Metrics are averaged over classes without weights.
A few images per class are written as heat-map overlays.

The whole-image crop is the image stretched to the tower's square input (in AnyRes and single-crop mode
alike), so its map is resized to the image's own size to lie over it.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from anomaly_ov.data.crops import crop_map_to_image
from anomaly_ov.data.features import FeatureSource
from anomaly_ov.data.images import BadInputError, SkippedFile, image_size, read_image
from anomaly_ov.data.zsad import AnomalySample, group_by_class, load_mask
from anomaly_ov.eval.heatmap import save_heatmap_grid
from anomaly_ov.eval.metrics import ClassMetrics, average_over_classes, evaluate_class, upsample_maps
from anomaly_ov.models.expert import AnomalyExpert

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetResult:
    """Metrics of one dataset.

    Attributes:
        name: Dataset name.
        classes: Per-class metrics.
        mean: Unweighted mean over classes of each metric.
        skipped: Files left out under the skip-and-report option.
        heatmaps: Overlay images written.
    """

    name: str
    classes: list[ClassMetrics]
    mean: dict[str, float]
    skipped: list[SkippedFile] = field(default_factory=list)
    heatmaps: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Plain dict, ready for JSON."""
        return {
            "mean": self.mean,
            "classes": {c.name: c.to_dict() for c in self.classes},
            "num_images": sum(c.num_images for c in self.classes),
            "skipped": [vars(s) for s in self.skipped],
            "heatmaps": [str(p) for p in self.heatmaps],
        }


@torch.no_grad()
def score_samples(
    expert: AnomalyExpert,
    source: FeatureSource,
    samples: Sequence[AnomalySample],
    skip_bad: bool,
    batch_size: int,
    num_workers: int = 0,
) -> tuple[list[int], np.ndarray, list[torch.Tensor], list[SkippedFile]]:
    """Runs the expert over samples.

    Returns:
        ``kept`` (indices of the usable samples), their scores [B], the map of each one's whole-image crop
        ([grid, grid] each, on the CPU) and the skipped files.
    """
    prepared = source.prepare(samples, skip_bad=skip_bad, progress=False)
    loader = DataLoader(
        prepared.dataset, batch_size=batch_size, collate_fn=prepared.collate_fn, num_workers=num_workers
    )
    device = next(expert.parameters()).device
    dtype = next(expert.parameters()).dtype
    scores, maps = [], []
    for batch in loader:
        features = prepared.featurize(batch).to(device, dtype)
        output = expert(features.final, features.levels, features.crops_per_image)
        first_crop = np.cumsum([0, *features.crops_per_image[:-1]])
        scores.append(output.scores.float().cpu())
        maps.extend(output.maps[torch.as_tensor(first_crop, device=device)].float().cpu())
    # A single crop is the image padded to a square: its map's padding is cut away (AnyRes crops are
    # stretched, so their maps cover the image as they are).
    crops = source.crops
    for position, index in enumerate(prepared.kept):
        item = samples[index]
        if crops.is_single_crop(item):
            width, height = image_size(item.image)
            maps[position] = crop_map_to_image(
                maps[position], (height, width), padded_to_square=True, long_side=8 * maps[position].shape[-1]
            )
    all_scores = torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)
    return prepared.kept, all_scores, maps, prepared.skipped


def _class_masks(
    samples: Sequence[AnomalySample], skip_bad: bool, skipped: list[SkippedFile]
) -> tuple[list[int], list[np.ndarray]] | None:
    """Ground-truth masks of a class (zeros for normal images), or None if the class has no masks.

    Returns:
        The indices of the samples whose masks could be read and those masks ([H, W] bool each).

    Raises:
        BadInputError: If only some anomalous images have masks, or a mask is unusable (unless
            ``skip_bad``).
    """
    anomalous = [item for item in samples if item.label == 1]
    with_mask = [item for item in anomalous if item.mask is not None]
    if not with_mask:
        return None
    if len(with_mask) != len(anomalous):
        missing = next(item for item in anomalous if item.mask is None)
        raise BadInputError(missing.image, "anomalous image without a mask in a class that has masks")
    kept, masks = [], []
    for index, item in enumerate(samples):
        try:
            width, height = image_size(item.image)
            mask = (
                np.zeros((height, width), bool)
                if item.mask is None
                else load_mask(item.mask, (width, height))
            )
        except BadInputError as error:
            if not skip_bad:
                raise
            skipped.append(SkippedFile(error.path, error.reason))
            continue
        kept.append(index)
        masks.append(mask)
    return kept, masks


def _pixel_arrays(
    name: str, maps: Sequence[torch.Tensor], masks: Sequence[np.ndarray], pixel_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps upsampled to mask size and the stacked masks, [N, H, W] each (or resized to ``pixel_size``)."""
    if pixel_size is not None:
        size = (pixel_size, pixel_size)
        resized = [
            torch.nn.functional.interpolate(
                torch.as_tensor(mask, dtype=torch.float32)[None, None], size=size, mode="nearest"
            )[0, 0].numpy()
            > 0.5
            for mask in masks
        ]
        masks = resized
    sizes = {mask.shape for mask in masks}
    if len(sizes) != 1:
        raise ValueError(
            f"class {name!r}: masks of different sizes {sorted(sizes)}; the pixel metrics pool the pixels of "
            "equally sized masks. Set pixel_size (e.g. 256) to resize every mask and map to one size."
        )
    (height, width) = sizes.pop()
    # maps of padded single crops have their image's aspect, so each one is resized on its own
    upsampled = np.stack([upsample_maps(m[None], (height, width))[0] for m in maps])
    return upsampled, np.stack(masks)


def evaluate_dataset(
    name: str,
    samples: Sequence[AnomalySample],
    expert: AnomalyExpert,
    source: FeatureSource,
    heatmap_dir: Path | None = None,
    heatmaps_per_class: int = 3,
    skip_bad: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    pixel_size: int | None = None,
    max_fpr: float = 0.3,
) -> DatasetResult:
    """Evaluates the expert on one dataset, class by class.

    Args:
        name: Dataset name (for messages and the output).
        samples: The dataset's test samples.
        expert: The trained expert (eval mode, on its device).
        source: Where the tower features come from (cache or streamed).
        heatmap_dir: Folder for the overlays, one ``<class>.png`` grid per class (rows: image, overlay and
            mask); None: none written.
        heatmaps_per_class: Rows per class grid (anomalous images first).
        skip_bad: Leave unusable files out and report them instead of raising.
        batch_size: Images per expert forward pass.
        num_workers: Data-loader workers.
        pixel_size: Resize masks and maps to this square size for the pixel metrics (None: each class's
            own mask size, which must then be the same for all its images).
        max_fpr: AUPRO integration limit.

    Returns:
        Per-class and mean metrics.
    """
    expert.eval()
    results: list[ClassMetrics] = []
    skipped: list[SkippedFile] = []
    heatmaps: list[Path] = []
    for class_name, class_samples in group_by_class(samples).items():
        kept, scores, maps, class_skipped = score_samples(
            expert, source, class_samples, skip_bad, batch_size, num_workers
        )
        skipped += class_skipped
        kept_samples = [class_samples[i] for i in kept]
        labels = np.asarray([item.label for item in kept_samples], dtype=bool)
        with_masks = _class_masks(kept_samples, skip_bad, skipped)
        # the images evaluated (and shown): all scored ones, less those whose mask was skipped
        shown = list(range(len(kept_samples)))
        if with_masks is None:
            metrics = evaluate_class(class_name, labels, scores, max_fpr=max_fpr)
        else:
            mask_kept, masks = with_masks
            shown = mask_kept
            pixel_maps, pixel_masks = _pixel_arrays(
                class_name, [maps[i] for i in mask_kept], masks, pixel_size
            )
            metrics = evaluate_class(
                class_name, labels[mask_kept], scores[mask_kept], pixel_maps, pixel_masks, max_fpr=max_fpr
            )
            del pixel_maps, pixel_masks
        results.append(metrics)
        logger.info("%s/%s: image AUROC %.4f (%d images)", name, class_name, metrics.image_auroc, len(shown))
        if heatmap_dir is not None and heatmaps_per_class > 0 and shown:
            path = heatmap_dir / f"{class_name}.png"
            heatmaps.append(
                _write_heatmaps(
                    path, [kept_samples[i] for i in shown], [maps[i] for i in shown], heatmaps_per_class
                )
            )
    return DatasetResult(name, results, average_over_classes(results), skipped, heatmaps)


def _write_heatmaps(
    path: Path,
    samples: Sequence[AnomalySample],
    maps: Sequence[torch.Tensor],
    count: int,
) -> Path:
    """One PNG per class: image | overlay (| mask) for its first ``count`` images, anomalous ones first."""
    order = sorted(range(len(samples)), key=lambda i: (-samples[i].label, i))[:count]
    images = [read_image(samples[i].image, max_side=None) for i in order]
    masks = None
    if any(samples[i].mask is not None for i in order):
        masks = [
            np.zeros(image.size[::-1], bool)
            if samples[i].mask is None
            else load_mask(samples[i].mask, image.size)
            for i, image in zip(order, images, strict=True)
        ]
    return save_heatmap_grid(path, images, [maps[i].clamp(0, 1).numpy() for i in order], masks)
