"""The tiny zoo's Qwen2 language model and LLaVA-OneVision (tiny SigLIP without head + 2-layer MLP projector
+ tiny Qwen2) with its processor, configured like the llava-hf OneVision checkpoints.
"""

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from anomaly_ov.data.tokens import IM_END
from anomaly_ov.zoo.tokenizer import CHATML_TEMPLATE, ENDOFTEXT
from anomaly_ov.zoo.towers import IMAGE_SIZE, PATCH_GRID, SIGLIP_MEAN_STD, tiny_siglip_vision_config

# Qwen2-like language model.
LLM_WIDTH = 64
LLM_LAYERS = 2
LLM_HEADS = 4
LLM_KV_HEADS = 2
LLM_MLP = 128
LLM_MAX_POSITIONS = 4096

# AnyRes: tiles of the vision input size, up to 3x3 tiles, as LLaVA-OneVision's (1..6)x(1..6) x 384.
GRID_PINPOINTS: list[list[int]] = [[IMAGE_SIZE * i, IMAGE_SIZE * j] for i in range(1, 4) for j in range(1, 4)]
VISION_ASPECT_RATIO = "anyres_max_9"


def tiny_qwen2_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """Return the tiny Qwen2 text config, with the vocabulary and special ids of ``tokenizer``."""
    endoftext_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=LLM_WIDTH,
        intermediate_size=LLM_MLP,
        num_hidden_layers=LLM_LAYERS,
        num_attention_heads=LLM_HEADS,
        num_key_value_heads=LLM_KV_HEADS,
        max_position_embeddings=LLM_MAX_POSITIONS,
        # Qwen2 conventions: BOS id = <|endoftext|> (never prepended), chat models stop at <|im_end|>
        bos_token_id=endoftext_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=endoftext_id,
        tie_word_embeddings=False,
    )


def tiny_llava_ov_config(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionConfig:
    """Return the tiny LLaVA-OneVision config: tiny SigLIP (no head) + 2-layer MLP projector + tiny Qwen2.

    Set like the llava-hf OneVision checkpoints: all patch tokens of the last vision block
    (``vision_feature_layer=-1``, ``vision_feature_select_strategy="full"``: SigLIP has no CLS token
    to drop), AnyRes up to 3x3 tiles, ``anyres_max_9``.
    """
    return LlavaOnevisionConfig(
        vision_config=tiny_siglip_vision_config(use_head=False),
        text_config=tiny_qwen2_config(tokenizer),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        tie_word_embeddings=False,
    )


def tiny_llava_ov_processor(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionProcessor:
    """Return the processor matching :func:`tiny_llava_ov_config`.

    ``num_image_tokens`` is the patch-token count of one crop (no CLS, as the strategy is "full"),
    the image processor's ``size`` is the vision input size (it is also the AnyRes tile size) and its
    pinpoints are the model's, so the processor expands each ``<image>`` to exactly the number of
    features the model packs.
    """
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
        image_mean=SIGLIP_MEAN_STD,
        image_std=SIGLIP_MEAN_STD,
    )
    return chatml_onevision_processor(
        tokenizer, image_processor, num_image_tokens=PATCH_GRID * PATCH_GRID, select_strategy="full"
    )


def chatml_onevision_processor(
    tokenizer: PreTrainedTokenizerBase,
    image_processor: LlavaOnevisionImageProcessor,
    *,
    num_image_tokens: int,
    select_strategy: str,
) -> LlavaOnevisionProcessor:
    """Return a zoo's ``LlavaOnevisionProcessor``: ``anyres_max_9``, the ChatML template, and a video
    processor with the image processor's crop size, mean and std.

    Args:
        tokenizer: The language model's tokenizer.
        image_processor: The AnyRes image processor (crop size, pinpoints, normalisation).
        num_image_tokens: The tokens transformers counts per crop for ``select_strategy``.
        select_strategy: ``vision_feature_select_strategy`` ("default" drops the CLS token, "full" keeps all).

    """
    video_processor = LlavaOnevisionVideoProcessor(
        size={"height": image_processor.size["height"], "width": image_processor.size["width"]},
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=num_image_tokens,
        vision_feature_select_strategy=select_strategy,
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_llava_ov(
    tokenizer: PreTrainedTokenizerBase, seed: int
) -> LlavaOnevisionForConditionalGeneration:
    """Initialise the tiny LLaVA-OneVision in memory (same seed -> same weights), in eval mode."""
    config = tiny_llava_ov_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.eval()
