"""The real zoo's LLaVA-OneVision: the converted DINOv2-S/14 tower + a fresh 2-layer projector and image
newline + SmolLM2-135M-Instruct, with its processor.

Set like the llava-hf OneVision checkpoints, on these parts:

* ``vision_feature_layer=-1`` (the last block, without DINOv2's final layernorm) and
  ``vision_feature_select_strategy="default"``: the CLS token is dropped, 16x16 = 256 patch tokens per
  224-px crop;
* AnyRes tiles of the crop size with pinpoints up to 3x3 tiles (224..672 px per side; the release has
  up to 6x6 of 384 px) and ``anyres_max_9``. The CPU budget decides how they are used, not the zoo: a
  300x300 image gives 256 + 2x2 tiles unpadded to 32x32 + 32 newlines = 1,312 image tokens, fine for
  inference; the CPU debug training configs use one crop per image (257 tokens);
* the projector (384 -> 576 -> 576, GELU) and the image newline are new: initialised by transformers'
  own init under a fixed seed, they are what stage 2 learns first;
* SmolLM2's tokenizer with ``<image>`` and ``<video>`` added as special tokens (ids 49152, 49153); the
  embedding table (tied with the output head) is grown to 49,216 rows (a multiple of 64, room for the
  ``<severity>`` / ``<anomaly>`` placeholders the Anomaly-OV processor adds), the new rows set to the
  mean of the trained ones; the ChatML template of the release with its system prompt
  "You are a helpful assistant." (SmolLM2's own default prompt names SmolLM).
"""

import torch
from transformers import (
    AutoTokenizer,
    Dinov2Model,
    LlamaForCausalLM,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerBase,
)

from anomaly_ov.data.tokens import IM_END, IMAGE_PLACEHOLDER
from anomaly_ov.zoo.llava import chatml_onevision_processor
from anomaly_ov.zoo.real.dinov2 import CROP, IMAGENET_MEAN, IMAGENET_STD, PATCH
from anomaly_ov.zoo.tokenizer import CHATML_TEMPLATE, VIDEO_TOKEN

MAX_TILES_PER_SIDE = 3
GRID_PINPOINTS: list[list[int]] = [
    [CROP * i, CROP * j] for i in range(1, MAX_TILES_PER_SIDE + 1) for j in range(1, MAX_TILES_PER_SIDE + 1)
]
VISION_ASPECT_RATIO = "anyres_max_9"
EMBEDDING_MULTIPLE = 64
MODEL_MAX_LENGTH = 8192  # SmolLM2-135M's context


def llava_tokenizer(smollm2_folder: str) -> PreTrainedTokenizerBase:
    """SmolLM2's saved tokenizer with ``<image>`` / ``<video>`` registered and the release's template."""
    tokenizer = AutoTokenizer.from_pretrained(
        smollm2_folder,
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER, "video_token": VIDEO_TOKEN},
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def image_processor() -> LlavaOnevisionImageProcessor:
    """The AnyRes image processor of the real zoo: 224-px crops, ImageNet mean/std, the pinpoints above."""
    return LlavaOnevisionImageProcessor(
        size={"height": CROP, "width": CROP},
        image_grid_pinpoints=GRID_PINPOINTS,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def llava_processor(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionProcessor:
    """The processor of the composed model (counts 256 tokens + newline per crop, CLS dropped)."""
    grid = CROP // PATCH
    # with the "default" strategy transformers counts the CLS token in and subtracts it again
    return chatml_onevision_processor(
        tokenizer, image_processor(), num_image_tokens=grid * grid + 1, select_strategy="default"
    )


def compose_llava_ov(
    tower: Dinov2Model, llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, seed: int
) -> LlavaOnevisionForConditionalGeneration:
    """Put the tower and the LLM into one LLaVA-OneVision with a fresh seeded projector and newline.

    Args:
        tower: The converted DINOv2 (its config's ``image_size`` is the crop size).
        llm: SmolLM2 (float32).
        tokenizer: :func:`llava_tokenizer`'s tokenizer (its length sets the embedding rows).
        seed: Seed of the projector and image-newline initialisation.

    Returns:
        The model in eval mode; every weight but the projector and the newline comes from ``tower``/``llm``.
    """
    text_config = llm.config
    rows = -(-len(tokenizer) // EMBEDDING_MULTIPLE) * EMBEDDING_MULTIPLE
    config = LlavaOnevisionConfig(
        vision_config=tower.config.to_dict(),
        text_config={**text_config.to_dict(), "vocab_size": rows},
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)

    weights = dict(llm.state_dict())
    embed = weights.pop("model.embed_tokens.weight")
    grown = torch.cat([embed, embed.mean(dim=0, keepdim=True).expand(rows - embed.shape[0], -1)])
    language = {
        key.removeprefix("model."): value for key, value in weights.items() if key != "lm_head.weight"
    }
    model.model.language_model.load_state_dict({**language, "embed_tokens.weight": grown}, strict=True)
    if text_config.tie_word_embeddings:
        model.tie_weights()
    else:
        model.lm_head.weight.data.copy_(
            torch.cat(
                [
                    llm.lm_head.weight,
                    llm.lm_head.weight.mean(0, keepdim=True).expand(rows - embed.shape[0], -1),
                ]
            )
        )
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    )
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()
