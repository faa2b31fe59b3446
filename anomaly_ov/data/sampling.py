"""Length-grouped sampling (the release's ``group_by_modality_length``).

Samples are shuffled (seeded), cut into megabatches of ``world_size * batch_size`` indices, each megabatch
sorted by length (longest first) and split into ``world_size`` per-rank batches of similar total length, so
padding is small and ranks finish together. With ``group_by_modality`` multimodal and text-only samples form
separate megabatches (a batch never mixes them, except the one leftover megabatch that holds both groups'
remainders, cut in order rather than balanced); the megabatches are then shuffled.

Unlike the release, every random choice follows (seed, epoch), so a resumed run sees the same order, and the
leftover megabatch is sorted by modality then length (the release sorts it by index), so at most one batch
mixes the two modalities.
"""

from collections.abc import Iterator, Sequence

import numpy as np
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
        if len(lengths) != len(multimodal):
            raise ValueError(f"{len(lengths)} lengths but {len(multimodal)} modality flags.")
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size={batch_size} and world_size={world_size} must be positive.")
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, {world_size}).")
        self.lengths = [int(length) for length in lengths]
        self.multimodal = [bool(flag) for flag in multimodal]
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.group_by_modality = group_by_modality
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch (a new order per epoch)."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """The epoch's per-rank batches in global order (batch ``i`` belongs to rank ``i % world_size``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        size = self.batch_size * self.world_size
        everything = list(range(len(self.lengths)))
        groups = (
            [[i for i in everything if self.multimodal[i]], [i for i in everything if not self.multimodal[i]]]
            if self.group_by_modality
            else [everything]
        )
        full: list[list[int]] = []
        leftover: list[int] = []
        for group in groups:
            order = [group[int(k)] for k in rng.permutation(len(group))]
            cut = len(order) - len(order) % size
            full += [order[start : start + size] for start in range(0, cut, size)]
            leftover += order[cut:]
        megabatches = [full[int(k)] for k in rng.permutation(len(full))]
        # Leftovers last, one modality after the other, so that at most one batch mixes them.
        leftover.sort(key=lambda i: (not self.multimodal[i], -self.lengths[i]))
        batches = [batch for megabatch in megabatches for batch in self._split(megabatch)]
        for start in range(0, len(leftover), size):
            # Cut in (modality, length) order rather than balanced, which would mix the modalities.
            rest = leftover[start : start + size]
            capacity = -(-len(rest) // self.world_size)
            batches += [rest[rank * capacity : (rank + 1) * capacity] for rank in range(self.world_size)]
        return batches

    def _split(self, megabatch: list[int]) -> list[list[int]]:
        """``world_size`` batches of similar total length: longest first, each to the lightest open batch."""
        capacity = len(megabatch) // self.world_size
        batches: list[list[int]] = [[] for _ in range(self.world_size)]
        totals = [0] * self.world_size
        for index in sorted(megabatch, key=lambda i: -self.lengths[i]):
            open_batches = [b for b in range(self.world_size) if len(batches[b]) < capacity]
            target = min(open_batches, key=lambda b: (totals[b], b))
            batches[target].append(index)
            totals[target] += self.lengths[index]
        return batches

    def __iter__(self) -> Iterator[int]:
        """The indices of this epoch (global order, or this rank's)."""
        batches = self.batches()
        if self.rank is not None:
            batches = batches[self.rank :: self.world_size]
        return iter([index for batch in batches for index in batch])

    def __len__(self) -> int:
        """Number of indices yielded per epoch."""
        if self.rank is None:
            return len(self.lengths)
        return sum(len(batch) for batch in self.batches()[self.rank :: self.world_size])
