"""Frozen vision towers that return the final tokens and the level tokens the anomaly expert reads.

Two backends, one output type (:class:`VisionFeatures`):

* :class:`HFVisionTower` wraps a Hugging Face vision model (``SiglipVisionModel``, ``CLIPVisionModel``,
  ``Dinov2Model`` or the vision tower of a ``LlavaOnevisionForConditionalGeneration`` checkpoint) and reads
  its ``hidden_states``.
* :class:`OpenCLIPVisionTower` wraps an open_clip ``VisionTransformer`` (e.g. ``ViT-L-14-336``, the encoder of
  CLIP-based zero-shot detectors) and reads its blocks through ``forward_intermediates``.

Layer-index convention (shared by both backends, the one of Hugging Face ``hidden_states``): index ``i``
is the output of transformer block ``i`` (``0`` = the patch embeddings, ``num_blocks`` = the last block);
negative indices count from the end (``-1`` = the last block). The final tokens are taken *without* the
post-layernorm, which is what LLaVA-OneVision's ``vision_feature_layer=-1`` does. The released Anomaly-OV
taps hidden states 7, 13, 19 and 25 of the 26-block SigLIP and uses hidden state -1 as the final tokens.

Prefix tokens (the class token of CLIP and DINOv2) are dropped so that the patch tokens form a square grid.

The crops a tower sees come from the one crop function, :func:`anomaly_ov.data.crops.anyres_crops`.

Notation: ``N`` crops, ``T`` patch tokens per crop (a square, ``grid * grid``), ``D`` vision width.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class VisionFeatures:
    """Tokens of one forward pass of a vision tower.

    Attributes:
        final: Final tokens, [N, T, D] (the tokens LLaVA-OneVision projects into the LLM).
        levels: Level tokens, one [N, T, D] tensor per tapped layer, in the configured order.

    """

    final: torch.Tensor
    levels: tuple[torch.Tensor, ...]


def _absolute_layer(index: int, num_blocks: int, argument: str) -> int:
    """Map a hidden-state index (negative counts from the end) to ``0..num_blocks``.

    Raises:
        ValueError: If the index is outside ``[-(num_blocks + 1), num_blocks]``.

    """
    if not -(num_blocks + 1) <= index <= num_blocks:
        raise ValueError(
            f"{argument}={index} is out of range for a tower with {num_blocks} blocks: hidden-state indices "
            f"run from 0 (embeddings) to {num_blocks} (last block), or -{num_blocks + 1}..-1 from the end."
        )
    return index if index >= 0 else num_blocks + 1 + index


TOWER_SAMPLE_SIZE = 32


def patch_embedding_sample(backbone: nn.Module) -> list[float]:
    """The first weights of a tower's patch convolution: a cheap, dtype-robust identity of its weights.

    HF SigLIP / CLIP (``embeddings.patch_embedding``) and open_clip (``conv1``) towers all start with their
    patch convolution, the first ``Conv2d`` among their modules.

    Returns:
        ``TOWER_SAMPLE_SIZE`` floats.

    Raises:
        ValueError: If the backbone has no convolution.
    """
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(backbone).__name__} has no patch convolution to identify it by.")
    return conv.weight.detach().reshape(-1)[:TOWER_SAMPLE_SIZE].float().cpu().tolist()


def same_tower_weights(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two :func:`patch_embedding_sample` values come from the same weights (up to bf16 rounding)."""
    return len(a) == len(b) and torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-4)


class FrozenVisionTower(nn.Module):
    """Common part of the towers: frozen parameters, always in eval mode, no autograd graph.

    Attributes:
        hidden_size: Vision width D.
        grid: Side of the square token grid.
        num_tokens: T = grid * grid.
        image_size: Side of the square input crop in pixels.
        num_blocks: Transformer blocks of the backbone.
        level_layers: Absolute hidden-state indices of the level taps.
        final_layer: Absolute hidden-state index of the final tokens.

    """

    def __init__(
        self,
        backbone: nn.Module,
        hidden_size: int,
        image_size: int,
        patch_size: int,
        num_blocks: int,
        level_layers: Sequence[int],
        final_layer: int,
    ) -> None:
        super().__init__()
        if len(level_layers) == 0:
            raise ValueError("level_layers is empty: the anomaly expert needs at least one level tap.")
        if image_size < patch_size:
            raise ValueError(f"image_size={image_size} is smaller than patch_size={patch_size}.")
        # The patch convolution drops the remainder: SigLIP-so400m at 384 px with 14-px patches is 27x27.
        self.backbone = backbone
        self.hidden_size = hidden_size
        self.image_size = image_size
        self.grid = image_size // patch_size
        self.num_tokens = self.grid * self.grid
        self.num_blocks = num_blocks
        self.level_layers = tuple(_absolute_layer(i, num_blocks, "level_layers") for i in level_layers)
        self.final_layer = _absolute_layer(final_layer, num_blocks, "final_layer")
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def record(self, name_or_path: str) -> dict[str, object]:
        """What an expert trained on this tower's features must remember about it (SPEC §4).

        Args:
            name_or_path: The tower's checkpoint, for messages.
        """
        return {
            "name_or_path": name_or_path,
            "level_layers": list(self.level_layers),
            "final_layer": self.final_layer,
            "patch_embedding_sample": patch_embedding_sample(self.backbone),
        }

    def train(self, mode: bool = True) -> "FrozenVisionTower":
        """Keep the backbone in eval mode whatever the parent module asks (it is frozen)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the backbone (inputs are cast to it)."""
        return next(self.backbone.parameters()).dtype

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected [N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}] (AnyRes crops flattened over images)."
            )


class HFVisionTower(FrozenVisionTower):
    """A Hugging Face vision transformer (SigLIP, CLIP, LLaVA-OneVision's tower) with level taps.

    Args:
        model: A constructed HF vision model whose forward accepts ``output_hidden_states=True`` and whose
            config has ``hidden_size``, ``image_size``, ``patch_size`` and ``num_hidden_layers``.
        level_layers: Hidden-state indices of the level taps (see the module docstring).
        final_layer: Hidden-state index of the final tokens (``-1`` = last block, no post-layernorm).
        num_prefix_tokens: Tokens before the patch tokens to drop (1 for the class token of CLIP and
            DINOv2, 0 for SigLIP).
        image_size: Side of the crops the tower is given (None: ``config.image_size``). A tower that
            resamples its position table at run time (DINOv2: ``config.image_size`` is 518 for its 37x37
            table) takes other crop sizes; the expert's grid follows the crop, ``image_size // patch_size``.

    """

    def __init__(
        self,
        model: PreTrainedModel,
        level_layers: Sequence[int],
        final_layer: int = -1,
        num_prefix_tokens: int = 0,
        image_size: int | None = None,
    ) -> None:
        config = model.config
        super().__init__(
            backbone=model,
            hidden_size=config.hidden_size,
            image_size=config.image_size if image_size is None else image_size,
            patch_size=config.patch_size,
            num_blocks=config.num_hidden_layers,
            level_layers=level_layers,
            final_layer=final_layer,
        )
        self.num_prefix_tokens = num_prefix_tokens

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """Run the tower.

        Args:
            pixel_values: Normalised crops, [N, 3, image_size, image_size].

        Returns:
            Final tokens [N, T, D] and one [N, T, D] tensor per level tap.

        """
        self._check_pixels(pixel_values)
        outputs = self.backbone(pixel_values=pixel_values.to(self.dtype), output_hidden_states=True)
        hidden_states = outputs.hidden_states
        prefix = self.num_prefix_tokens
        if hidden_states[0].shape[1] != prefix + self.num_tokens:
            raise ValueError(
                f"the tower returns {hidden_states[0].shape[1]} tokens per crop; expected {prefix} prefix + "
                f"{self.num_tokens} patch tokens (check num_prefix_tokens / vision_feature_select_strategy)."
            )
        return VisionFeatures(
            final=hidden_states[self.final_layer][:, prefix:],
            levels=tuple(hidden_states[i][:, prefix:] for i in self.level_layers),
        )


class OpenCLIPVisionTower(FrozenVisionTower):
    """An open_clip ``VisionTransformer`` with level taps read through ``forward_intermediates``.

    The class token is dropped (open_clip splits it off); tokens are taken before ``ln_post``.
    Hidden-state index 0 (the embeddings) is not available from ``forward_intermediates`` and is refused.

    Args:
        visual: The image tower of an open_clip model (``model.visual``), an
            ``open_clip.transformer.VisionTransformer``.
        level_layers: Hidden-state indices of the level taps (1..num_blocks or negative).
        final_layer: Hidden-state index of the final tokens.

    """

    def __init__(self, visual: nn.Module, level_layers: Sequence[int], final_layer: int = -1) -> None:
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise TypeError(
                f"visual is a {type(visual).__name__}; OpenCLIPVisionTower needs an open_clip "
                "VisionTransformer (timm-backed open_clip towers are not supported)."
            )
        image_size, patch_size = visual.image_size, visual.patch_size
        if image_size[0] != image_size[1] or patch_size[0] != patch_size[1]:
            raise ValueError(f"open_clip tower has non-square image {image_size} or patch {patch_size} size.")
        super().__init__(
            backbone=visual,
            hidden_size=visual.transformer.width,
            image_size=image_size[0],
            patch_size=patch_size[0],
            num_blocks=len(visual.transformer.resblocks),
            level_layers=level_layers,
            final_layer=final_layer,
        )
        if 0 in (*self.level_layers, self.final_layer):
            raise ValueError(
                "open_clip towers expose block outputs 1..num_blocks only; hidden-state index 0 "
                "(the embeddings) cannot be tapped."
            )
        # forward_intermediates counts blocks from 0, hidden states count the embeddings as 0.
        self._take = sorted({i - 1 for i in (*self.level_layers, self.final_layer)})

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """Run the tower.

        Args:
            pixel_values: Normalised crops, [N, 3, image_size, image_size].

        Returns:
            Final tokens [N, T, D] and one [N, T, D] tensor per level tap.

        """
        self._check_pixels(pixel_values)
        outputs = self.backbone.forward_intermediates(
            pixel_values.to(self.dtype),
            indices=self._take,
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
        )
        by_layer = dict(zip((i + 1 for i in self._take), outputs["image_intermediates"], strict=True))
        return VisionFeatures(
            final=by_layer[self.final_layer],
            levels=tuple(by_layer[i] for i in self.level_layers),
        )
