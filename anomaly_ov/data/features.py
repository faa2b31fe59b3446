"""Where the expert's input comes from: the frozen tower's features of a list of samples, read from the
on-disk cache (:mod:`anomaly_ov.data.feature_cache`, built first) or computed on the fly
(:class:`StreamedFeatures`); the training and evaluation loops are the same for both.

:func:`build_feature_source` is the Hydra ``_target_`` of ``configs/features/*.yaml``.

Notation: ``B`` samples, ``N`` crops of a batch, ``T`` tokens, ``D`` width, ``L`` levels.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from anomaly_ov.data.crops import CropBatch, CropDataset, ImageCrops, collate_crops, raise_or_collect
from anomaly_ov.data.feature_batch import FeatureBatch, encode_crops
from anomaly_ov.data.feature_cache import FeatureCache, cache_fingerprint, collate_features, weights_sha256
from anomaly_ov.data.zsad import AnomalySample, SkippedFile, screen_samples


class StreamedFeatures:
    """Computes a batch's features with the tower on the fly (training without the cache).

    Args:
        tower: The frozen vision tower.
        chunk_size: Crops per forward pass.
    """

    def __init__(self, tower: nn.Module, chunk_size: int) -> None:
        self.tower = tower
        self.chunk_size = chunk_size

    def __call__(self, batch: CropBatch) -> FeatureBatch:
        """Encodes the crops of a :class:`~anomaly_ov.data.crops.CropBatch`.

        Raises:
            BadInputError: If a sample of the batch could not be read.
        """
        raise_or_collect(batch.failures, skip_bad=False, skipped=[])
        final, *levels = encode_crops(self.tower, batch.pixel_values, self.chunk_size)
        return FeatureBatch(batch.indices, final, tuple(levels), batch.crops_per_image)


@dataclass(frozen=True)
class PreparedFeatures:
    """Everything a training or evaluation loop needs to read the features of a list of samples.

    Attributes:
        dataset: Item ``i`` stands for sample ``kept[i]``.
        collate_fn: The dataset's collate function.
        featurize: Collated batch -> :class:`FeatureBatch` (the tower runs here when streaming).
        kept: Indices of the usable samples, in order.
        skipped: Files left out under the skip-and-report option.
    """

    dataset: Dataset
    collate_fn: Callable[[list], object]
    featurize: Callable[[object], FeatureBatch]
    kept: list[int]
    skipped: list[SkippedFile]


def _cached_batch(batch: FeatureBatch) -> FeatureBatch:
    return batch


class FeatureSource:
    """The tower's features of a list of samples: from the cache (built first) or streamed.

    Args:
        tower: The frozen vision tower (on its compute device).
        crops: The preprocessing.
        cache: The feature cache, or None to stream the tower every time.
        max_bytes: Disk budget of the cache root.
        shard_size: Images per cache shard.
        images_per_batch: Images per data-loader batch while building the cache.
        chunk_size: Crops per tower forward pass.
        num_workers: Data-loader workers decoding images.
        rank: This process's rank (the cache build is shared between processes).
        world_size: Number of processes.
        barrier: Waits for every process (None for one process).
        all_gather: Collects a list from every process (and waits for all); None for one process.
    """

    def __init__(
        self,
        tower: nn.Module,
        crops: ImageCrops,
        cache: FeatureCache | None,
        max_bytes: int,
        shard_size: int = 256,
        images_per_batch: int = 16,
        chunk_size: int = 64,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        all_gather: Callable[[list], list] | None = None,
    ) -> None:
        self.tower = tower
        self.crops = crops
        self.cache = cache
        self.max_bytes = max_bytes
        self.shard_size = shard_size
        self.images_per_batch = images_per_batch
        self.chunk_size = chunk_size
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier
        self.all_gather = all_gather

    def prepare(
        self, samples: Sequence[AnomalySample], skip_bad: bool, progress: bool = True
    ) -> PreparedFeatures:
        """Checks the samples and, with a cache, computes the missing features (shared between processes).

        Without a cache every image is decoded once here, so that bad files are found before training
        rather than in the middle of it.

        Args:
            samples: The samples.
            skip_bad: Leave unusable files out and report them instead of raising.
            progress: Show a progress bar while building the cache.

        Raises:
            BadInputError: On an unusable file unless ``skip_bad``.
            CacheBudgetError: If the cache would outgrow its budget.
        """
        if self.cache is None:
            kept_samples, skipped = screen_samples(samples, skip_bad=skip_bad, decode=True)
            kept_ids = {id(item) for item in kept_samples}
            kept = [i for i, item in enumerate(samples) if id(item) in kept_ids]
            featurize = StreamedFeatures(self.tower, self.chunk_size)
            return PreparedFeatures(
                CropDataset(kept_samples, self.crops), collate_crops, featurize, kept, skipped
            )
        skipped = self.cache.build(
            samples,
            self.crops,
            self.tower,
            max_bytes=self.max_bytes,
            shard_size=self.shard_size,
            images_per_batch=self.images_per_batch,
            chunk_size=self.chunk_size,
            num_workers=self.num_workers,
            skip_bad=skip_bad,
            rank=self.rank,
            world_size=self.world_size,
            barrier=self.barrier,
            progress=progress,
        )
        if self.all_gather is not None:
            skipped = sorted(set(self.all_gather(skipped)), key=lambda s: s.path)
        dataset, kept = self.cache.dataset(samples, self.crops)
        return PreparedFeatures(dataset, collate_features, _cached_batch, kept, skipped)


def build_feature_source(
    tower: nn.Module,
    crops: ImageCrops,
    tower_spec: Mapping[str, object],
    cache: bool,
    cache_dir: str,
    max_gb: float,
    shard_size: int = 256,
    images_per_batch: int = 16,
    chunk_size: int = 64,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    all_gather: Callable[[list], list] | None = None,
) -> FeatureSource:
    """Builds a :class:`FeatureSource` from config values (the ``features`` node of the stage-1 configs).

    Args:
        tower: The frozen vision tower (a :class:`~anomaly_ov.models.vision.FrozenVisionTower`).
        crops: The preprocessing.
        tower_spec: The tower's resolved config values (part of the cache key).
        cache: Store the features on disk and read them from there (False: stream the tower).
        cache_dir: The cache root.
        max_gb: Disk budget of the cache root in GB (10^9 bytes).
        shard_size: Images per cache shard.
        images_per_batch: Images per data-loader batch while building the cache.
        chunk_size: Crops per tower forward pass.
        num_workers: Data-loader workers decoding images.
        rank: This process's rank.
        world_size: Number of processes.
        barrier: Waits for every process (None for one process).
        all_gather: Collects a list from every process (None for one process).
    """
    feature_cache = None
    if cache:
        fingerprint = cache_fingerprint(
            tower_spec, tower.level_layers, tower.final_layer, weights_sha256(tower), crops.fingerprint()
        )
        feature_cache = FeatureCache(
            cache_dir, fingerprint, tower.num_tokens, tower.hidden_size, len(tower.level_layers)
        )
    return FeatureSource(
        tower,
        crops,
        feature_cache,
        max_bytes=int(max_gb * 1e9),
        shard_size=shard_size,
        images_per_batch=images_per_batch,
        chunk_size=chunk_size,
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
        barrier=barrier,
        all_gather=all_gather,
    )
