"""A batch of frozen-tower features, the expert's input, and running the tower over crops to get one.

Notation: ``B`` samples, ``N`` crops of a batch, ``T`` tokens, ``D`` width, ``L`` levels.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureBatch:
    """Tower features of a batch of samples, the expert's input.

    Attributes:
        indices: Sample index of each image, [B].
        final: Final tokens of all crops, [N, T, D].
        levels: Level tokens, L tensors of [N, T, D].
        crops_per_image: Crops of each sample (sums to N; each sample's whole-image crop first).
    """

    indices: list[int]
    final: torch.Tensor
    levels: tuple[torch.Tensor, ...]
    crops_per_image: list[int]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "FeatureBatch":
        """The batch on ``device`` in ``dtype``."""
        return FeatureBatch(
            indices=self.indices,
            final=self.final.to(device=device, dtype=dtype),
            levels=tuple(level.to(device=device, dtype=dtype) for level in self.levels),
            crops_per_image=self.crops_per_image,
        )


def tower_device(tower: nn.Module) -> torch.device:
    """Device of a module's parameters."""
    return next(tower.parameters()).device


@torch.no_grad()
def encode_crops(tower: nn.Module, pixel_values: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """Runs the frozen tower over crops in chunks (bounded memory).

    Args:
        tower: A frozen vision tower: ``tower(pixel_values) -> VisionFeatures(final, levels)``.
        pixel_values: Crops, [N, 3, S, S].
        chunk_size: Crops per forward pass.

    Returns:
        ``(final, *levels)``, each [N, T, D], on the tower's device.
    """
    device = tower_device(tower)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, pixel_values.shape[0], chunk_size):
        features = tower(pixel_values[start : start + chunk_size].to(device))
        parts.append((features.final, *features.levels))
    return tuple(torch.cat(tensors) for tensors in zip(*parts, strict=True))
