"""Zero-shot anomaly-detection evaluation of the expert (SPEC §6, Table 2).

For each dataset and each class, one class at a time (memory is bounded by one class's maps and masks,
never a whole dataset's): the expert scores every image (image AUROC, AP, F1-max) and, when the class has
masks, each image's anomaly map is upsampled to its mask size for the pixel AUROC, AP, F1-max and AUPRO
(:mod:`anomaly_ov.eval.metrics`, :mod:`anomaly_ov.eval.aupro`). Metrics are averaged over classes without
weights. A few images per class are written as heat-map overlays.

Pixel maps (:class:`PixelMapSettings`, SPEC §5 "Field practice"): the map of the whole-image crop (27x27
on the released tower) or the AnyRes tiles' maps stitched at tile resolution; optionally smoothed with the
field's Gaussian (sigma 4) after upsampling; AUPRO exact or the labelled 200-threshold compatibility mode;
at each mask's own size (the default) or, with ``pixel_size`` (518), at the field's resolution as
AnomalyCLIP computes it: masks resized bilinearly to 518x518 and thresholded at 0.5, maps upsampled to
518x518 and smoothed there.

Robustness: a class whose masks differ in size is evaluated with each image at its own mask size; a class
whose pixel metrics cannot be computed keeps its image metrics (the reason is recorded); a class that cannot
be evaluated at all is listed in ``failed_classes`` with the reason and left out of the mean -- it never
aborts the dataset's number.

The whole-image crop is the image stretched to the tower's square input in AnyRes mode, so its map is
resized to the image's own size to lie over it; a single crop's padding is cut away first.
"""

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from anomaly_ov.data.crops import ImageCrops, crop_map_to_image, upsample_maps
from anomaly_ov.data.features import FeatureSource
from anomaly_ov.data.images import BadInputError, SkippedFile, image_size, read_image
from anomaly_ov.data.zsad import AnomalySample, group_by_class, load_mask
from anomaly_ov.eval.aupro import aupro, aupro_200_thresholds
from anomaly_ov.eval.metrics import (
    METRIC_NAMES,
    ClassMetrics,
    evaluate_class,
    pixel_metrics,
)
from anomaly_ov.eval.pixel_maps import field_mask, gaussian_smooth, region_layout, stitch_tile_maps
from anomaly_ov.inference.heatmap import save_heatmap_grid
from anomaly_ov.models.expert import AnomalyExpert

logger = logging.getLogger(__name__)

MAP_SOURCES: tuple[str, ...] = ("whole", "tiles")
AUPRO_MODES: tuple[str, ...] = ("exact", "compat_200")
IMAGE_SCORES: tuple[str, ...] = ("expert", "map_max", "expert_map_mean")
"""What an image's score (the image metrics' input) is: the expert's score s (SPEC §2, the paper's), the
maximum of its anomaly map (the pixel-max score of AnomalyCLIP-style evaluations), or the mean of the two."""


def _image_scores(expert_scores: np.ndarray, map_max: np.ndarray, kind: str) -> np.ndarray:
    """Each image's score (``kind`` of :data:`IMAGE_SCORES`) from the expert's scores and its map maxima."""
    if kind == "expert":
        return expert_scores
    return map_max if kind == "map_max" else (expert_scores + map_max) / 2


@dataclass(frozen=True)
class PixelMapSettings:
    """How the pixel maps of the evaluation are made.

    Attributes:
        source: "whole" -- the whole-image crop's map; "tiles" -- the AnyRes tiles' maps stitched at tile
            resolution (images encoded as a single crop keep their whole-image map).
        smoothing_sigma: Gaussian sigma (pixels of the mask-sized map) applied before the pixel metrics,
            the field's 4; None: no smoothing.
        aupro: "exact" (MVTec AD's definition) or "compat_200" (the 200-threshold approximation many
            repositories report; labelled as such in the results).
        pixel_size: None: pixel metrics at each mask's own size; a side (518): masks resized to that square
            with PIL's bilinear filter and thresholded at 0.5 (torchvision's ``Resize`` then ``> 0.5``, as
            AnomalyCLIP's test script), maps upsampled to it, the smoothing applied at that size.
    """

    source: str = "whole"
    smoothing_sigma: float | None = None
    aupro: str = "exact"
    pixel_size: int | None = None

    def __post_init__(self) -> None:
        if self.source not in MAP_SOURCES:
            raise ValueError(f"pixel map source {self.source!r} is not one of {list(MAP_SOURCES)}")
        if self.aupro not in AUPRO_MODES:
            raise ValueError(f"aupro mode {self.aupro!r} is not one of {list(AUPRO_MODES)}")
        if self.smoothing_sigma is not None and self.smoothing_sigma <= 0:
            raise ValueError(f"smoothing_sigma must be > 0 or None, got {self.smoothing_sigma}")
        if self.pixel_size is not None and self.pixel_size < 1:
            raise ValueError(f"pixel_size must be a positive side or None, got {self.pixel_size}")

    def describe(self) -> str:
        """One line naming how the pixel metrics were computed (for tables)."""
        size = (
            "each mask's own size"
            if self.pixel_size is None
            else f"{self.pixel_size}x{self.pixel_size} (masks bilinear, > 0.5: AnomalyCLIP's protocol)"
        )
        sigma = "no smoothing" if self.smoothing_sigma is None else f"Gaussian sigma {self.smoothing_sigma:g}"
        return f"pixel metrics at {size}, {self.source}-crop maps, {sigma} at that size, AUPRO {self.aupro}"


@dataclass(frozen=True)
class DatasetResult:
    """Metrics of one dataset.

    Attributes:
        name: Dataset name.
        classes: Per-class metrics (of the classes that could be evaluated).
        mean: Unweighted mean over classes of each metric (over the classes that have it).
        skipped: Files left out under the skip-and-report option.
        heatmaps: Overlay images written.
        failed_classes: Classes that could not be evaluated at all, with the reason (not in the mean).
        problems: Per class, the metrics that could not be computed and why.
        incomplete: Per metric, the evaluated classes that lack it (its mean is over the others).
        pixel_maps: The pixel-map settings used.
        image_scores: Every evaluated image's ``{"image", "class", "label", "score"}`` (not in
            :meth:`to_dict`; the evaluation writes them to ``scores.jsonl``, so a subset's AUROC -- e.g.
            ELPV's mono and poly cells -- is computed from the same run).
    """

    name: str
    classes: list[ClassMetrics]
    mean: dict[str, float]
    skipped: list[SkippedFile] = field(default_factory=list)
    heatmaps: list[Path] = field(default_factory=list)
    failed_classes: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    pixel_maps: PixelMapSettings = field(default_factory=PixelMapSettings)
    image_scores: list[dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Plain dict, ready for JSON."""
        return {
            "mean": self.mean,
            "classes": {c.name: c.to_dict() for c in self.classes},
            "num_images": sum(c.num_images for c in self.classes),
            "skipped": [vars(s) for s in self.skipped],
            "heatmaps": [str(p) for p in self.heatmaps],
            "failed_classes": self.failed_classes,
            "problems": self.problems,
            "incomplete": self.incomplete,
            "pixel_maps": asdict(self.pixel_maps),
        }


def _image_map(crop_maps: torch.Tensor, item: AnomalySample, crops: ImageCrops, source: str) -> torch.Tensor:
    """The map of one sample from the maps of its crops ([n, g, g], whole-image crop first)."""
    if crops.is_single_crop(item):
        # a single crop is the image padded to a square: the padding's part of the map is cut away
        width, height = image_size(item.image)
        first = crop_maps[0]
        return crop_map_to_image(first, (height, width), padded_to_square=True, long_side=8 * first.shape[-1])
    if source == "tiles" and crop_maps.shape[0] > 1:
        width, height = image_size(item.image, crops.max_image_side)
        pinpoints = crops.image_processor.image_grid_pinpoints
        return stitch_tile_maps(crop_maps[1:], (height, width), pinpoints, crops.crop_size)
    return crop_maps[0]


@torch.no_grad()
def score_samples(
    expert: AnomalyExpert,
    source: FeatureSource,
    samples: Sequence[AnomalySample],
    skip_bad: bool,
    batch_size: int,
    num_workers: int = 0,
    map_source: str = "whole",
) -> tuple[list[int], np.ndarray, list[torch.Tensor], list[SkippedFile]]:
    """Runs the expert over samples; its inputs are cast to its own dtype (bfloat16 as the release runs it).

    Args:
        expert: The expert (eval mode, on its device).
        source: Where the tower features come from.
        samples: The samples to score.
        skip_bad: Leave unusable images out and report them instead of raising.
        batch_size: Samples per forward pass.
        num_workers: Data-loader workers.
        map_source: "whole" or "tiles" (see :class:`PixelMapSettings`).

    Returns:
        ``kept`` (indices of the usable samples), their scores [B] (float32), each one's map (float32 on the
        CPU: [g, g] of the whole-image crop, the image region of a padded single crop, or the stitched
        tiles) and the skipped files.
    """
    prepared = source.prepare(samples, skip_bad=skip_bad, progress=False)
    loader = DataLoader(
        prepared.dataset, batch_size=batch_size, collate_fn=prepared.collate_fn, num_workers=num_workers
    )
    device = next(expert.parameters()).device
    dtype = next(expert.parameters()).dtype
    scores: list[torch.Tensor] = []
    crop_maps: list[torch.Tensor] = []
    for batch in loader:
        features = prepared.featurize(batch).to(device, dtype)
        output = expert(features.final, features.levels, features.crops_per_image)
        scores.append(output.scores.float().cpu())
        crop_maps.extend(torch.split(output.maps.float().cpu(), list(features.crops_per_image)))
    maps = [
        _image_map(crop_maps[position], samples[index], source.crops, map_source)
        for position, index in enumerate(prepared.kept)
    ]
    all_scores = torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)
    return prepared.kept, all_scores, maps, prepared.skipped


def _class_masks(
    samples: Sequence[AnomalySample], skip_bad: bool, skipped: list[SkippedFile]
) -> tuple[list[int], list[np.ndarray]] | str | None:
    """Ground-truth masks of a class (zeros for normal images), None if it has none, or why they are unusable.

    Returns:
        The indices of the samples whose masks could be read and those masks ([H, W] bool each); None when
        the class has no masks; a reason (str) when they cannot be used (image metrics are still computed).
    """
    anomalous = [item for item in samples if item.label == 1]
    with_mask = [item for item in anomalous if item.mask is not None]
    if not with_mask:
        return None
    if len(with_mask) != len(anomalous):
        missing = next(item for item in anomalous if item.mask is None)
        return f"{missing.image}: anomalous image without a mask in a class that has masks"
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
                return str(error)
            skipped.append(SkippedFile(error.path, error.reason))
            continue
        kept.append(index)
        masks.append(mask)
    return kept, masks


def _pixel_arrays(
    maps: Sequence[torch.Tensor],
    masks: Sequence[np.ndarray],
    pixel_size: int | None,
    smoothing_sigma: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps upsampled to their masks' sizes (optionally smoothed) and the masks, ready for the metrics.

    Returns:
        ``(maps, masks)`` as [N, H, W] when every mask has one size (or ``pixel_size`` is set), else the
        pixels of all images laid out by :func:`~anomaly_ov.eval.pixel_maps.region_layout` ([1, 1, P]).
    """
    if pixel_size is not None:
        masks = [field_mask(mask, pixel_size) for mask in masks]
    upsampled = []
    for value, mask in zip(maps, masks, strict=True):
        # one map at a time: maps of padded single crops have their image's aspect, and smoothing in
        # float64 is bounded to one mask-sized map
        resized = upsample_maps(value[None], mask.shape)
        if smoothing_sigma is not None:
            resized = gaussian_smooth(resized, smoothing_sigma)
        upsampled.append(resized[0])
    if len({mask.shape for mask in masks}) == 1:
        return np.stack(upsampled), np.stack(masks)
    return region_layout(upsampled, masks)


def _class_metrics(
    name: str,
    labels: np.ndarray,
    scores: np.ndarray,
    pixels: tuple[np.ndarray, np.ndarray] | None,
    max_fpr: float,
    aupro_mode: str,
    problems: list[str],
) -> ClassMetrics:
    """Every metric of SPEC §6 for one class; a pixel metric that cannot be computed is None (reason kept).

    Raises:
        ValueError: If the image metrics cannot be computed (e.g. the class holds one label only).
    """
    pixel: dict[str, float | None] = {}
    if pixels is not None:
        maps, masks = pixels
        try:
            ranked = pixel_metrics(maps, masks, context=name)
            pixel.update(pixel_auroc=ranked.auroc, pixel_ap=ranked.ap, pixel_f1_max=ranked.f1_max)
        except ValueError as error:
            problems.append(f"pixel metrics: {error}")
        try:
            per_region = aupro if aupro_mode == "exact" else aupro_200_thresholds
            pixel["aupro"] = per_region(maps, masks, max_fpr, context=name)
        except ValueError as error:
            problems.append(f"aupro ({aupro_mode}): {error}")
    return replace(evaluate_class(name, labels, scores), **pixel)  # image metrics as without masks


def class_average(results: Sequence[ClassMetrics]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Unweighted mean of every metric over the classes that have it, and the classes that lack it.

    Returns:
        ``({metric: mean}, {metric: [classes without it]})``; a metric no class has is absent from both.
    """
    means: dict[str, float] = {}
    incomplete: dict[str, list[str]] = {}
    for metric in METRIC_NAMES:
        values = {r.name: r.to_dict()[metric] for r in results}
        present = [v for v in values.values() if v is not None]
        if not present:
            continue
        means[metric] = float(np.mean(present))
        missing = [name for name, value in values.items() if value is None]
        if missing:
            incomplete[metric] = missing
    return means, incomplete


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
    max_fpr: float = 0.3,
    pixel_maps: PixelMapSettings | None = None,
    image_score: str = "expert",
) -> DatasetResult:
    """Evaluates the expert on one dataset, class by class.

    Args:
        name: Dataset name (for messages and the output).
        samples: The dataset's test samples.
        expert: The trained expert (eval mode, on its device, in the dtype it should run in).
        source: Where the tower features come from (cache or streamed).
        heatmap_dir: Folder for the overlays, one ``<class>.png`` grid per class (rows: image, overlay and
            mask); None: none written.
        heatmaps_per_class: Rows per class grid (anomalous images first).
        skip_bad: Leave unusable files out and report them instead of failing the class.
        batch_size: Images per expert forward pass.
        num_workers: Data-loader workers.
        max_fpr: AUPRO integration limit.
        pixel_maps: How the pixel maps are made (default: whole-image crop, no smoothing, exact AUPRO, each
            mask's own size).
        image_score: What the image metrics rank (:data:`IMAGE_SCORES`); ``scores.jsonl`` keeps the expert's
            score and the map maximum of every image beside it.

    Returns:
        Per-class and mean metrics, with the classes that failed and the metrics that could not be computed.
    """
    settings = pixel_maps or PixelMapSettings()
    if image_score not in IMAGE_SCORES:  # before any work
        raise ValueError(f"image score {image_score!r} is not one of {list(IMAGE_SCORES)}")
    expert.eval()
    results: list[ClassMetrics] = []
    skipped: list[SkippedFile] = []
    heatmaps: list[Path] = []
    failed: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    image_scores: list[dict[str, object]] = []
    for class_name, class_samples in group_by_class(samples).items():
        class_problems: list[str] = []
        try:
            kept, expert_scores, maps, class_skipped = score_samples(
                expert, source, class_samples, skip_bad, batch_size, num_workers, settings.source
            )
            map_max = np.asarray([float(m.max()) for m in maps], dtype=np.float32).reshape(len(maps))
            scores = _image_scores(expert_scores, map_max, image_score)
            skipped += class_skipped
            kept_samples = [class_samples[i] for i in kept]
            labels = np.asarray([item.label for item in kept_samples], dtype=bool)
            with_masks = _class_masks(kept_samples, skip_bad, skipped)
            # the images evaluated (and shown): all scored ones, less those whose mask was skipped
            shown = list(range(len(kept_samples)))
            pixels = None
            show_masks = not isinstance(with_masks, str)
            if isinstance(with_masks, str):
                class_problems.append(f"masks unusable, pixel metrics not computed: {with_masks}")
            elif with_masks is not None:
                shown = with_masks[0]
                pixels = _pixel_arrays(
                    [maps[i] for i in shown], with_masks[1], settings.pixel_size, settings.smoothing_sigma
                )
            metrics = _class_metrics(
                class_name, labels[shown], scores[shown], pixels, max_fpr, settings.aupro, class_problems
            )
            del pixels
        except ValueError as error:  # BadInputError included: one bad class never aborts the dataset
            failed[class_name] = str(error)
            logger.warning("%s/%s: not evaluated (%s)", name, class_name, error)
            continue
        results.append(metrics)
        image_scores += [
            {
                "image": str(kept_samples[i].image),
                "class": class_name,
                "label": int(labels[i]),
                "score": float(scores[i]),
                "expert_score": float(expert_scores[i]),
                "map_max": float(map_max[i]),
            }
            for i in shown
        ]
        if class_problems:
            problems[class_name] = class_problems
            logger.warning("%s/%s: %s", name, class_name, "; ".join(class_problems))
        logger.info("%s/%s: image AUROC %.4f (%d images)", name, class_name, metrics.image_auroc, len(shown))
        if heatmap_dir is not None and heatmaps_per_class > 0 and shown:
            path = heatmap_dir / f"{class_name}.png"
            heatmaps.append(
                _write_heatmaps(
                    path,
                    [kept_samples[i] for i in shown],
                    [maps[i] for i in shown],
                    heatmaps_per_class,
                    show_masks,
                )
            )
    mean, incomplete = class_average(results)
    return DatasetResult(
        name,
        results,
        mean,
        skipped,
        heatmaps,
        failed,
        problems,
        incomplete,
        pixel_maps=settings,
        image_scores=image_scores,
    )


def _write_heatmaps(
    path: Path,
    samples: Sequence[AnomalySample],
    maps: Sequence[torch.Tensor],
    count: int,
    show_masks: bool = True,
) -> Path:
    """One PNG per class: image | overlay (| mask) for its first ``count`` images, anomalous ones first.

    ``show_masks`` False leaves the mask column out (a class whose masks are unusable).
    """
    order = sorted(range(len(samples)), key=lambda i: (-samples[i].label, i))[:count]
    images = [read_image(samples[i].image, max_side=None) for i in order]
    masks = None
    if show_masks and any(samples[i].mask is not None for i in order):
        masks = [
            np.zeros(image.size[::-1], bool)
            if samples[i].mask is None
            else load_mask(samples[i].mask, image.size)
            for i, image in zip(order, images, strict=True)
        ]
    return save_heatmap_grid(path, images, [maps[i].clamp(0, 1).numpy() for i in order], masks)
