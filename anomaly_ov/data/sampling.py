"""Length-grouped sampling (the release's ``group_by_modality_length``).

Samples are shuffled (seeded), cut into megabatches of ``world_size * batch_size`` indices, each megabatch
sorted by length (longest first) and split into ``world_size`` per-rank batches of similar total length, so
padding is small and ranks finish together. With ``group_by_modality`` multimodal and text-only samples form
separate megabatches (a batch never mixes them, except the one leftover megabatch that holds both groups'
remainders); the megabatches are then shuffled.
"""

from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Seeded length-grouped order of a dataset's indices.

    Args:
        lengths: Token length of each sample (positive).
        multimodal: Whether each sample has images (same length as ``lengths``).
        batch_size: Per-device batch size.
        world_size: Number of data-parallel ranks.
        seed: Seed; the order depends only on (seed, epoch).
        group_by_modality: Keep multimodal and text-only samples in separate megabatches.
        rank: None: yield the global order (every index once; consecutive ``batch_size`` runs belong to
            ranks 0, 1, ... in turn, which is how accelerate shards a sampler). An int: yield only this
            rank's batches (the ranks together cover every index once).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        multimodal: Sequence[bool],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        group_by_modality: bool = True,
        rank: int | None = None,
    ) -> None:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch (a new order per epoch)."""
        raise NotImplementedError

    def batches(self) -> list[list[int]]:
        """The epoch's per-rank batches in global order (batch ``i`` belongs to rank ``i % world_size``)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        """The indices of this epoch (global order, or this rank's)."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of indices yielded per epoch."""
        raise NotImplementedError
