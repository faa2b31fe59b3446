"""The tiny zoo's vision towers: SigLIP, CLIP and an open_clip ViT at toy size (image 64, patch 8, width 64,
6 blocks, 4 heads, MLP 128: 8x8 = 64 patch tokens, 7 hidden states), built from config objects.
"""

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"

# Vision towers (all four share these sizes).
IMAGE_SIZE = 64
PATCH_SIZE = 8
VISION_WIDTH = 64
VISION_LAYERS = 6
VISION_HEADS = 4
VISION_MLP = 128
PATCH_GRID = IMAGE_SIZE // PATCH_SIZE  # 8 -> 64 patch tokens per crop

# SigLIP normalises to [-1, 1]; CLIP / open_clip use the OpenAI statistics.
SIGLIP_MEAN_STD = [0.5, 0.5, 0.5]
OPENAI_MEAN = list(open_clip.OPENAI_DATASET_MEAN)
OPENAI_STD = list(open_clip.OPENAI_DATASET_STD)


def tiny_siglip_vision_config(use_head: bool = True) -> SiglipVisionConfig:
    """Return the tiny SigLIP vision config.

    Args:
        use_head: Whether the tower has SigLIP's attention-pooling head. The standalone SigLIP keeps it,
            like google/siglip-so400m; the tower inside LLaVA-OneVision has none, like llava-hf's.

    """
    return SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=VISION_WIDTH,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=VISION_HEADS,
        intermediate_size=VISION_MLP,
        vision_use_head=use_head,
    )


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """Return the tiny CLIP vision config (CLS token + 64 patch tokens)."""
    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=VISION_WIDTH,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=VISION_HEADS,
        intermediate_size=VISION_MLP,
        projection_dim=VISION_WIDTH,
    )


def tiny_open_clip_model_config() -> dict[str, object]:
    """Return the tiny open_clip model config, in open_clip's ``model_cfg`` JSON format.

    The text tower keeps open_clip's default tokenizer size (49408 ids, context 77) so that
    ``open_clip.get_tokenizer`` output can be encoded, but is only one narrow block.
    """
    return {
        "embed_dim": VISION_WIDTH,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "layers": VISION_LAYERS,
            "width": VISION_WIDTH,
            "patch_size": PATCH_SIZE,
            "head_width": VISION_WIDTH // VISION_HEADS,
            "mlp_ratio": VISION_MLP / VISION_WIDTH,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def build_tiny_siglip(seed: int) -> SiglipVisionModel:
    """Initialise the standalone tiny SigLIP vision tower in memory, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SiglipVisionModel(tiny_siglip_vision_config(use_head=True)).eval()


def build_tiny_clip(seed: int) -> CLIPVisionModel:
    """Initialise the tiny CLIP vision tower in memory, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModel(tiny_clip_vision_config()).eval()


def build_tiny_open_clip(seed: int) -> open_clip.CLIP:
    """Initialise the tiny open_clip CLIP (ViT image tower) in memory, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**tiny_open_clip_model_config()).eval()


def load_tiny_open_clip(folder: str | Path) -> open_clip.CLIP:
    """Load an open_clip folder written by :func:`build_tiny_zoo`, offline, in eval mode.

    This is open_clip's own ``local-dir:`` loading (config from ``open_clip_config.json``, weights
    from the safetensors file next to it, strict key matching); any open_clip folder in that layout
    loads the same way.

    Args:
        folder: Folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors``.

    Returns:
        The open_clip model; its ViT is ``model.visual`` and its preprocessing config
        ``model.visual.preprocess_cfg``.

    """
    folder = Path(folder)
    for name in (OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"open_clip folder {folder} has no {name}; build it with build_tiny_zoo")
    return open_clip.create_model(f"local-dir:{folder}").eval()


def write_open_clip(model: open_clip.CLIP, folder: Path) -> None:
    """Save an open_clip model in the layout of open_clip's ``local-dir:`` / HF-hub folders."""
    folder.mkdir(parents=True)
    config = {
        "model_cfg": tiny_open_clip_model_config(),
        "preprocess_cfg": {
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / OPEN_CLIP_WEIGHTS_NAME)
