"""The feature cache: frozen-tower features computed once, stored on disk, reused by every epoch and run.

Stage 1 freezes the encoder (SPEC §4), so its final and level tokens of every crop can be computed once.
:class:`FeatureCache` stores them as float16 ``.npy`` files read through memory maps.

Keying. The cache folder is named by a hash of the tower (its config, its layer taps and a SHA-256 of its
weights), the preprocessing (the image processor's settings, single crop or AnyRes) and the storage dtype,
so a cache of another encoder, other layers or other preprocessing is never reused. Inside it, features are
stored per image file, keyed by the file's path, size and modification time: a changed image is recomputed,
and a run on a subset of the images (an ablation without some data) reuses the features it shares with
earlier runs.

Layout of ``<root>/<key>/``::

    meta.json                 what the key stands for (tower, layers, preprocessing) and the feature shapes
    shard-<hash>/final.npy    [C, T, D] float16, the final tokens of the shard's C crops
    shard-<hash>/levels.npy   [C, L, T, D] float16, the level tokens (one crop's levels contiguous)
    shard-<hash>/index.json   [[entry key, first crop, crop count], ...] for the shard's images

A shard is written into a temporary folder and renamed into place once complete, so an interrupted build
leaves only finished shards and resumes without recomputing them (the temporary folder of a killed
build is removed when its shard is built again). Before building, the size of the missing
features is estimated from the image headers and logged; a build that would take the cache root past its
disk budget is refused (:class:`CacheBudgetError`). Without the cache,
:class:`~anomaly_ov.data.features.StreamedFeatures` runs the tower on the fly and the training code is the
same (:mod:`anomaly_ov.data.features` chooses between the two).

At released shapes (T = 729, D = 1152, L = 4) one crop is 5 * 729 * 1152 * 2 bytes ~ 8.4 MB.

Notation: ``B`` samples, ``N`` crops of a batch, ``C`` crops of a shard, ``T`` tokens, ``D`` width,
``L`` levels.
"""

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from anomaly_ov.atomic_files import atomic_write_text, preallocate, write_failure
from anomaly_ov.data.crops import ImageCrops, raise_or_collect
from anomaly_ov.data.feature_batch import FeatureBatch, encode_crops
from anomaly_ov.data.zsad import AnomalySample, BadInputError, SkippedFile

logger = logging.getLogger(__name__)

STORAGE_DTYPE = np.float16
_STORAGE_BYTES = 2
_INDEX = "index.json"


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_fingerprint(
    tower_spec: Mapping[str, object],
    level_layers: Sequence[int],
    final_layer: int,
    weights: str,
    preprocessing: Mapping[str, object],
) -> dict[str, object]:
    """Everything the cached features depend on.

    Args:
        tower_spec: How the tower was built (its resolved config values).
        level_layers: Absolute hidden-state indices of the level taps.
        final_layer: Absolute hidden-state index of the final tokens.
        weights: :func:`weights_sha256` of the tower.
        preprocessing: :meth:`ImageCrops.fingerprint`.
    """
    return {
        "tower": json.loads(json.dumps(dict(tower_spec), sort_keys=True, default=str)),
        "level_layers": [int(i) for i in level_layers],
        "final_layer": int(final_layer),
        "weights_sha256": weights,
        "preprocessing": dict(preprocessing),
        "storage_dtype": np.dtype(STORAGE_DTYPE).name,
    }


class CacheBudgetError(RuntimeError):
    """Building the cache would take its root past the configured disk budget."""


@dataclass(frozen=True)
class CacheEntry:
    """Where one image's crops live: ``shard`` folder, first crop row, number of crops."""

    shard: str
    start: int
    count: int


@dataclass(frozen=True)
class CachePlan:
    """What a build would add.

    Attributes:
        missing: Images to compute: (entry key, path, single crop).
        crops: Their total number of crops (from the image headers).
        bytes: Estimated size of their features.
        existing_bytes: Current size of the whole cache root.
        skipped: Images left out under ``skip_bad`` (unreadable headers).
    """

    missing: list[tuple[str, Path, bool]]
    crops: int
    bytes: int
    existing_bytes: int
    skipped: list[SkippedFile]


def _entry_key(path: Path, single: bool) -> str:
    """Identity of one image's features: resolved path, size, modification time, crop mode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise BadInputError(path, "image file not found") from None
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{'single' if single else 'anyres'}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _temporary_suffix() -> str:
    """Suffix of this process's temporary shard folders: ``.tmp-<host>-<pid>`` (see :func:`_is_abandoned`)."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}"


def _is_abandoned(folder: Path) -> bool:
    """Whether a temporary shard folder was left by a process of this host that no longer runs.

    Another host's folder (a cache shared between nodes) is never judged: its process may still be writing.
    """
    host, _, pid = folder.name.partition(".tmp-")[2].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's process
        return False
    return False


def _indexed_keys(shard: Path) -> set[str]:
    """Entry keys held by a finished shard."""
    return {key for key, _, _ in json.loads((shard / _INDEX).read_text(encoding="utf-8"))}


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # removed by a concurrent build while walking
                continue
    return total


def format_bytes(size: float) -> str:
    """Human-readable size ("8.4 MB", "1.2 TB")."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


class _EntryCrops(Dataset):
    """Crops of single image files (cache entries); failures are returned, not raised, in workers."""

    def __init__(self, entries: Sequence[tuple[str, Path, bool]], crops: ImageCrops) -> None:
        self.entries = list(entries)
        self.crops = crops

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, SkippedFile | None]:
        _, path, single = self.entries[index]
        try:
            return index, self.crops.image_crops(path, single), None
        except BadInputError as error:
            return index, None, SkippedFile(error.path, error.reason)


class FeatureCache:
    """A content-addressed on-disk store of one tower's features (see the module docstring).

    Args:
        root: The cache root (shared by all towers; the disk budget applies to it).
        fingerprint: :func:`cache_fingerprint` of the tower and preprocessing; its hash names the folder.
        num_tokens: T of the tower.
        hidden_size: D of the tower.
        num_levels: L, the number of level taps.
    """

    def __init__(
        self,
        root: str | Path,
        fingerprint: Mapping[str, object],
        num_tokens: int,
        hidden_size: int,
        num_levels: int,
    ) -> None:
        self.root = Path(root)
        self.fingerprint = dict(fingerprint)
        self.key = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:24]
        self.dir = self.root / self.key
        self.num_tokens = num_tokens
        self.hidden_size = hidden_size
        self.num_levels = num_levels

    @property
    def bytes_per_crop(self) -> int:
        """Size of one crop's final and level tokens on disk."""
        return (1 + self.num_levels) * self.num_tokens * self.hidden_size * _STORAGE_BYTES

    def _write_meta(self) -> None:
        meta_path = self.dir / "meta.json"
        meta = {
            "fingerprint": self.fingerprint,
            "num_tokens": self.num_tokens,
            "hidden_size": self.hidden_size,
            "num_levels": self.num_levels,
        }
        if meta_path.is_file():
            stored = json.loads(meta_path.read_text(encoding="utf-8"))
            if stored != meta:
                raise RuntimeError(
                    f"{meta_path} describes other features than this cache's key ({self.key})."
                )
            return
        atomic_write_text(
            meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n", "no feature is cached yet"
        )

    def load_index(self) -> dict[str, CacheEntry]:
        """Entry key -> location, over all finished shards."""
        index: dict[str, CacheEntry] = {}
        if not self.dir.is_dir():
            return index
        for shard in sorted(self.dir.glob("shard-*")):
            if not (shard / _INDEX).is_file() or ".tmp" in shard.name:
                continue
            for key, start, count in json.loads((shard / _INDEX).read_text(encoding="utf-8")):
                index[key] = CacheEntry(shard.name, int(start), int(count))
        return index

    def sample_entries(self, item: AnomalySample, crops: ImageCrops) -> list[tuple[str, Path, bool]]:
        """The cache entries of a sample: (key, path, single crop) per image file.

        Raises:
            BadInputError: If an image file is missing.
        """
        single = crops.is_single_crop(item)
        return [(_entry_key(path, single), path, single) for path in item.images]

    def plan(self, samples: Sequence[AnomalySample], crops: ImageCrops, skip_bad: bool) -> CachePlan:
        """Which images are missing from the cache and how large their features will be.

        Raises:
            BadInputError: On a missing or unreadable image header, unless ``skip_bad``.
        """
        index = self.load_index()
        missing: dict[str, tuple[str, Path, bool]] = {}
        num_crops = 0
        skipped: list[SkippedFile] = []
        for item in samples:
            try:
                entries = self.sample_entries(item, crops)
                counts = {key: crops.image_num_crops(path, single) for key, path, single in entries}
            except BadInputError as error:
                if not skip_bad:
                    raise
                skipped.append(SkippedFile(error.path, error.reason))
                continue
            for entry in entries:
                if entry[0] not in index and entry[0] not in missing:
                    missing[entry[0]] = entry
                    num_crops += counts[entry[0]]
        existing = _folder_bytes(self.root) if self.root.is_dir() else 0
        return CachePlan(
            list(missing.values()), num_crops, num_crops * self.bytes_per_crop, existing, skipped
        )

    def build(
        self,
        samples: Sequence[AnomalySample],
        crops: ImageCrops,
        tower: nn.Module,
        max_bytes: int,
        shard_size: int = 256,
        images_per_batch: int = 8,
        chunk_size: int = 32,
        num_workers: int = 0,
        skip_bad: bool = False,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        progress: bool = True,
    ) -> list[SkippedFile]:
        """Computes the features of every image of ``samples`` not yet in the cache.

        With several processes, each computes every ``world_size``-th shard of the same plan; call it on
        every rank with a ``barrier`` and wait for all (another barrier) before reading.

        Args:
            samples: The samples whose images must be in the cache.
            crops: The preprocessing (must be the one the fingerprint describes).
            tower: The frozen vision tower (the one the fingerprint describes).
            max_bytes: Disk budget of the whole cache root.
            shard_size: Images per shard (the unit of resumption).
            images_per_batch: Images per data-loader batch.
            chunk_size: Crops per tower forward pass.
            num_workers: Data-loader workers decoding images.
            skip_bad: Leave unusable images out and report them instead of raising.
            rank: This process's rank.
            world_size: Number of processes sharing the build.
            barrier: Waits for every process (None for one process).
            progress: Show a progress bar (rank 0).

        Returns:
            The files left out under ``skip_bad`` (found by this rank).

        Raises:
            CacheBudgetError: If the cache root would grow past ``max_bytes``.
            BadInputError: On an unusable image unless ``skip_bad``.
        """
        from tqdm.auto import tqdm

        plan = self.plan(samples, crops, skip_bad)
        if barrier is not None:
            # Every process must plan before any writes a shard, or their plans (and shards) would differ.
            barrier()
        total = plan.existing_bytes + plan.bytes
        message = (
            f"feature cache {self.dir}: {len(plan.missing)} images ({plan.crops} crops x "
            f"{format_bytes(self.bytes_per_crop)}) to compute = {format_bytes(plan.bytes)}; cache root now "
            f"{format_bytes(plan.existing_bytes)}, budget {format_bytes(max_bytes)}"
        )
        if rank == 0:
            logger.info(message)
        if plan.missing and total > max_bytes:
            raise CacheBudgetError(
                f"{message}: building it would exceed the budget. Raise the budget (features.max_gb), free "
                "space under the cache root, or stream the encoder instead of caching it (features=streamed)."
            )
        skipped = list(plan.skipped)
        if not plan.missing:
            return skipped
        self._write_meta()
        chunks = [plan.missing[i : i + shard_size] for i in range(0, len(plan.missing), shard_size)]
        mine = chunks[rank::world_size]
        bar = tqdm(
            total=sum(len(c) for c in mine), desc="feature cache", unit="img", disable=not progress or rank
        )
        for chunk in mine:
            skipped += self._build_shard(
                chunk, crops, tower, images_per_batch, chunk_size, num_workers, skip_bad
            )
            bar.update(len(chunk))
        bar.close()
        return skipped

    def _build_shard(
        self,
        chunk: Sequence[tuple[str, Path, bool]],
        crops: ImageCrops,
        tower: nn.Module,
        images_per_batch: int,
        chunk_size: int,
        num_workers: int,
        skip_bad: bool,
    ) -> list[SkippedFile]:
        name = "shard-" + hashlib.sha256("".join(key for key, _, _ in chunk).encode()).hexdigest()[:20]
        final_dir = self.dir / name
        if (final_dir / _INDEX).is_file() and _indexed_keys(final_dir) >= {key for key, _, _ in chunk}:
            return []  # finished by a concurrent build
        # A build killed mid-shard leaves its temporary folder (a shard's worth of disk) behind.
        for abandoned in filter(_is_abandoned, self.dir.glob(f"{name}.tmp*")):
            shutil.rmtree(abandoned, ignore_errors=True)
        temporary = self.dir / f"{name}{_temporary_suffix()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        try:
            written, skipped = self._fill_shard(
                temporary, chunk, crops, tower, images_per_batch, chunk_size, num_workers, skip_bad
            )
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if isinstance(error, OSError):  # a full disk: name the shard; the finished shards stay valid
                raise write_failure(error, final_dir, "the finished shards are kept and reused") from error
            raise
        if not written:
            # Every image failed (skip_bad): no shard, so that a later build reads and reports them again
            # instead of finding a finished shard of this chunk and dropping them silently.
            shutil.rmtree(temporary, ignore_errors=True)
            return skipped
        try:
            (temporary / _INDEX).write_text(json.dumps(written), encoding="utf-8")
        except OSError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            raise write_failure(error, final_dir, "the finished shards are kept and reused") from error
        try:
            temporary.rename(final_dir)
        except OSError:  # another process finished the same shard first
            shutil.rmtree(temporary, ignore_errors=True)
        return skipped

    def _fill_shard(
        self,
        temporary: Path,
        chunk: Sequence[tuple[str, Path, bool]],
        crops: ImageCrops,
        tower: nn.Module,
        images_per_batch: int,
        chunk_size: int,
        num_workers: int,
        skip_bad: bool,
    ) -> tuple[list[list[object]], list[SkippedFile]]:
        """Writes a shard's feature arrays into ``temporary``; returns its index rows and skipped files."""
        counts = [crops.image_num_crops(path, single) for _, path, single in chunk]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        shape = (int(starts[-1]), self.num_tokens, self.hidden_size)
        final = np.lib.format.open_memmap(
            temporary / "final.npy", mode="w+", dtype=STORAGE_DTYPE, shape=shape
        )
        levels = np.lib.format.open_memmap(
            temporary / "levels.npy",
            mode="w+",
            dtype=STORAGE_DTYPE,
            shape=(shape[0], self.num_levels, *shape[1:]),
        )
        # the maps are sparse files: on a full disk a write through them is a SIGBUS; reserving the blocks
        # now makes it an error naming the file
        for array, name in ((final, "final.npy"), (levels, "levels.npy")):
            preallocate(temporary / name, array.offset + array.nbytes)
        loader = DataLoader(
            _EntryCrops(chunk, crops),
            batch_size=images_per_batch,
            num_workers=num_workers,
            collate_fn=list,
        )
        written: list[list[object]] = []
        skipped: list[SkippedFile] = []
        for items in loader:
            good = [(i, pixels) for i, pixels, _ in items if pixels is not None]
            raise_or_collect(
                [(i, failure) for i, _, failure in items if failure is not None], skip_bad, skipped
            )
            if not good:
                continue
            for i, pixels in good:
                if pixels.shape[0] != counts[i]:
                    raise RuntimeError(
                        f"{chunk[i][1]}: {pixels.shape[0]} crops, but the header-based count was {counts[i]}"
                    )
            final_tokens, *level_tokens = encode_crops(tower, torch.cat([p for _, p in good]), chunk_size)
            stacked_levels = torch.stack(level_tokens, dim=1)  # [N, L, T, D]
            offset = 0
            for i, pixels in good:
                n = pixels.shape[0]
                final[starts[i] : starts[i] + n] = final_tokens[offset : offset + n].float().cpu().numpy()
                levels[starts[i] : starts[i] + n] = stacked_levels[offset : offset + n].float().cpu().numpy()
                written.append([chunk[i][0], int(starts[i]), int(n)])
                offset += n
        final.flush()
        levels.flush()
        del final, levels
        return written, skipped

    def dataset(
        self, samples: Sequence[AnomalySample], crops: ImageCrops
    ) -> tuple["CachedFeatures", list[int]]:
        """A dataset of the cached features of ``samples``.

        Returns:
            The dataset, whose item ``i`` is sample ``kept[i]``, and ``kept``: the indices of the samples
            whose images are all in the cache (the others were left out by a ``skip_bad`` build).
        """
        index = self.load_index()
        kept: list[int] = []
        entries: list[list[CacheEntry]] = []
        for position, item in enumerate(samples):
            try:
                keys = [key for key, _, _ in self.sample_entries(item, crops)]
            except BadInputError:
                continue
            if all(key in index for key in keys):
                kept.append(position)
                entries.append([index[key] for key in keys])
        return CachedFeatures(self.dir, entries), kept


class CachedFeatures(Dataset):
    """Reads samples' features from the cache's memory-mapped shards.

    Item ``i``: ``(i, final [n, T, D], levels [n, L, T, D])`` as float16 tensors.

    Args:
        folder: The cache folder.
        entries: For each item, the locations of its image files' crops (concatenated in order).
    """

    def __init__(self, folder: Path, entries: Sequence[Sequence[CacheEntry]]) -> None:
        self.folder = Path(folder)
        self.entries = [list(e) for e in entries]
        self._shards: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _shard(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        # Memory maps are opened lazily so that each data-loader worker opens its own.
        if name not in self._shards:
            self._shards[name] = (
                np.load(self.folder / name / "final.npy", mmap_mode="r"),
                np.load(self.folder / name / "levels.npy", mmap_mode="r"),
            )
        return self._shards[name]

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_shards": {}}

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        finals, levels = [], []
        for entry in self.entries[position]:
            final_map, level_map = self._shard(entry.shard)
            finals.append(np.array(final_map[entry.start : entry.start + entry.count]))
            levels.append(np.array(level_map[entry.start : entry.start + entry.count]))
        return position, torch.from_numpy(np.concatenate(finals)), torch.from_numpy(np.concatenate(levels))


def collate_features(items: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> FeatureBatch:
    """Concatenates cached items into a :class:`FeatureBatch` (levels split along their level axis)."""
    levels = torch.cat([level for _, _, level in items])  # [N, L, T, D]
    return FeatureBatch(
        indices=[index for index, _, _ in items],
        final=torch.cat([final for _, final, _ in items]),
        levels=tuple(levels.unbind(dim=1)),
        crops_per_image=[int(final.shape[0]) for _, final, _ in items],
    )
