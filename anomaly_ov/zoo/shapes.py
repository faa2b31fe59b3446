"""LLaVA-OneVision at the released checkpoints' shapes, with random weights, for benchmarks and shape tests.

The tiny zoo (:mod:`anomaly_ov.zoo.llava`) is toy-sized everywhere; benchmarks need the real widths,
vocabulary, tile size and AnyRes grid (llava-hf/llava-onevision-qwen2-0.5b-ov-hf) with only the layer
counts reduced, and a shape test needs the real structure at toy width. :class:`OneVisionShape` holds
those numbers, :data:`LLAVA_OV_05B` the 0.5B's; ``dataclasses.replace`` derives the variants::

    shape = dataclasses.replace(LLAVA_OV_05B, llm_layers=2, vision_layers=4)
    config = llava_onevision_config(shape, image_token_index=151_646)
    write_llava_onevision(folder, shape, tokenizer)   # a from_pretrained folder: model + processor
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerBase,
    Qwen2Config,
    SiglipVisionConfig,
)

from anomaly_ov.data.tokens import IM_END
from anomaly_ov.zoo.tokenizer import ENDOFTEXT


@dataclass(frozen=True)
class OneVisionShape:
    """The sizes of a LLaVA-OneVision (SigLIP without head + Qwen2); defaults are the 0.5B's.

    ``tile`` is the vision input size and the AnyRes tile; ``patch`` the SigLIP patch (384 / 14 gives
    27 x 27 tokens per crop); pinpoints run over (1..max_tiles) x (1..max_tiles) tiles.
    """

    vision_width: int = 1152
    vision_mlp: int = 4304
    vision_heads: int = 16
    vision_layers: int = 26
    tile: int = 384
    patch: int = 14
    max_tiles: int = 6
    llm_width: int = 896
    llm_mlp: int = 4864
    llm_heads: int = 14
    llm_kv_heads: int = 2
    llm_layers: int = 24
    vocab_size: int = 151_936
    tie_word_embeddings: bool = True

    @property
    def grid_pinpoints(self) -> list[list[int]]:
        """AnyRes resolutions, ``tile * i`` by ``tile * j`` for i, j in 1..max_tiles."""
        tiles = range(1, self.max_tiles + 1)
        return [[self.tile * i, self.tile * j] for i in tiles for j in tiles]

    @property
    def crop_grid(self) -> int:
        """Patch tokens per crop side (27 at 384 / 14)."""
        return self.tile // self.patch


LLAVA_OV_05B = OneVisionShape()


def llava_onevision_config(
    shape: OneVisionShape,
    *,
    image_token_index: int,
    video_token_index: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> LlavaOnevisionConfig:
    """Return the LLaVA-OneVision config of ``shape``, set like the llava-hf checkpoints.

    All patch tokens of the last vision block (``vision_feature_layer=-1``, strategy "full"),
    ``anyres_max_9``, the special ids given (Qwen2 tokenizers: BOS = ``<|endoftext|>``, EOS = ``<|im_end|>``).
    """
    vision = SiglipVisionConfig(
        hidden_size=shape.vision_width,
        intermediate_size=shape.vision_mlp,
        num_attention_heads=shape.vision_heads,
        num_hidden_layers=shape.vision_layers,
        image_size=shape.tile,
        patch_size=shape.patch,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.llm_width,
        intermediate_size=shape.llm_mlp,
        num_hidden_layers=shape.llm_layers,
        num_attention_heads=shape.llm_heads,
        num_key_value_heads=shape.llm_kv_heads,
        max_position_embeddings=32768,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_index,
        video_token_index=video_token_index if video_token_index is not None else image_token_index + 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=shape.grid_pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def write_llava_onevision(
    folder: Path,
    shape: OneVisionShape,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save a random-weight LLaVA-OneVision of ``shape`` and its processor as a ``from_pretrained`` folder.

    Args:
        folder: Destination (created).
        shape: The sizes; ``shape.vocab_size`` may exceed the tokenizer's (the real table is larger, too).
        tokenizer: A Qwen2 tokenizer with ``<image>`` and ``<video>`` (the tiny zoo's).
        seed: Weight initialisation seed (same seed -> same weights).
        dtype: Weight dtype on disk (the released checkpoints are bfloat16).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    config = llava_onevision_config(
        shape,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlavaOnevisionForConditionalGeneration(config).to(dtype).save_pretrained(folder)
    llava_onevision_processor(shape, tokenizer).save_pretrained(folder)
    return folder


def llava_onevision_processor(
    shape: OneVisionShape, tokenizer: PreTrainedTokenizerBase
) -> LlavaOnevisionProcessor:
    """Return the ``LlavaOnevisionProcessor`` of ``shape`` around ``tokenizer``, set like the llava-hf ones.

    Crops of ``shape.tile`` pixels (SigLIP's mean and std 0.5), the AnyRes pinpoints of ``shape``,
    ``shape.crop_grid ** 2`` tokens per crop (strategy "full"), ``anyres_max_9``.
    """
    size = {"height": shape.tile, "width": shape.tile}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=size, image_grid_pinpoints=shape.grid_pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=shape.crop_grid**2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
