"""Builders: the only code that maps flat config values to the vision towers and the anomaly expert.

Hydra configs point ``_target_`` at these functions (``configs/model/vision/*.yaml``,
``configs/model/expert/*.yaml``): one builder per vision backend, each taking only the keys its backend
reads, and :func:`build_expert`, which turns the flat expert keys into an
:class:`~anomaly_ov.models.expert.ExpertConfig`.
"""

from collections.abc import Sequence
from pathlib import Path

import torch

from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig
from anomaly_ov.models.expert_io import load_expert_weights, load_official_weights
from anomaly_ov.models.hf_loading import quiet_transformers, raise_on_incomplete_load, require_built_folder
from anomaly_ov.models.vision import HFVisionTower, OpenCLIPVisionTower
from anomaly_ov.weights_files import refuse_remote_code

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    """Maps a dtype name of the configs ("float32", "bfloat16", "float16") to torch."""
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {sorted(DTYPES)}.")
    return DTYPES[name]


def _load_llava_onevision_tower(name_or_path: str, dtype: torch.dtype) -> tuple[torch.nn.Module, int]:
    """Load only the vision tower of a LLaVA-OneVision checkpoint (the LLM weights are never materialised).

    Returns:
        The vision model and the number of prefix tokens LLaVA-OneVision drops from it
        (``vision_feature_select_strategy``: "default" drops the class token, "full" keeps all tokens).

    """
    from transformers import AutoModel, LlavaOnevisionConfig

    refuse_remote_code(name_or_path)
    config = LlavaOnevisionConfig.from_pretrained(name_or_path)
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ValueError(f"{name_or_path}: unknown vision_feature_select_strategy {strategy!r}.")
    with quiet_transformers():
        model, info = AutoModel.from_pretrained(
            name_or_path,
            config=config.vision_config,
            # Checkpoints store the tower as "vision_tower.*" (hub layout) or "model.vision_tower.*".
            key_mapping={r"^(model\.)?vision_tower\.": ""},
            output_loading_info=True,
            dtype=dtype,
        )
    raise_on_incomplete_load(info, name_or_path, "LLaVA-OneVision vision tower")
    return model, 1 if strategy == "default" else 0


def _load_hf_vision_model(
    model_class: type, name_or_path: str, dtype: torch.dtype, what: str
) -> torch.nn.Module:
    """``model_class.from_pretrained`` quietly, refusing a partly random model or remote code."""
    refuse_remote_code(name_or_path)
    with quiet_transformers():
        model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, dtype=dtype)
    raise_on_incomplete_load(info, name_or_path, what)
    return model


def build_siglip_tower(
    name_or_path: str, level_layers: Sequence[int], final_layer: int = -1, dtype: str = "float32"
) -> HFVisionTower:
    """Build a frozen SigLIP tower (``SiglipVisionModel``; also reads full SigLIP checkpoints).

    Args:
        name_or_path: HF hub id or local folder.
        level_layers: Hidden-state indices of the level taps (0 = embeddings, i = block i, negative from
            the end).
        final_layer: Hidden-state index of the final tokens (-1 = last block, without post-layernorm).
        dtype: "float32", "bfloat16" or "float16".

    Returns:
        The tower, frozen and in eval mode; all patch tokens, no prefix.

    """
    from transformers import SiglipVisionModel

    model = _load_hf_vision_model(SiglipVisionModel, name_or_path, torch_dtype(dtype), "siglip vision")
    return HFVisionTower(model, level_layers, final_layer, num_prefix_tokens=0)


def build_clip_tower(
    name_or_path: str, level_layers: Sequence[int], final_layer: int = -1, dtype: str = "float32"
) -> HFVisionTower:
    """Build a frozen CLIP tower (``CLIPVisionModel``); its class token is dropped.

    Args:
        name_or_path: HF hub id or local folder.
        level_layers: Hidden-state indices of the level taps (see :func:`build_siglip_tower`).
        final_layer: Hidden-state index of the final tokens (-1 = last block, without post-layernorm).
        dtype: "float32", "bfloat16" or "float16".

    Returns:
        The tower, frozen and in eval mode; patch tokens only.

    """
    from transformers import CLIPVisionModel

    model = _load_hf_vision_model(CLIPVisionModel, name_or_path, torch_dtype(dtype), "clip vision")
    return HFVisionTower(model, level_layers, final_layer, num_prefix_tokens=1)


def build_dinov2_tower(
    name_or_path: str,
    level_layers: Sequence[int],
    final_layer: int = -1,
    image_size: int | None = None,
    dtype: str = "float32",
    build_command: str | None = None,
) -> HFVisionTower:
    """Build a frozen DINOv2 tower (``Dinov2Model``); its class token is dropped.

    Args:
        name_or_path: HF hub id or local folder (the real zoo's ``dinov2_s14``).
        level_layers: Hidden-state indices of the level taps (see :func:`build_siglip_tower`).
        final_layer: Hidden-state index of the final tokens (-1 = last block, without the final layernorm).
        image_size: Crop side in pixels (None: the checkpoint's ``image_size``; the real zoo's tower is saved
            for its 224-px crops, hub DINOv2 checkpoints say 518 and resample their table at run time).
        dtype: "float32", "bfloat16" or "float16".
        build_command: The command that builds ``name_or_path`` when it is a zoo folder (named in the error
            when the folder is missing).

    Returns:
        The tower, frozen and in eval mode; patch tokens only (``grid = image_size // 14``).

    """
    from transformers import Dinov2Model

    require_built_folder(name_or_path, build_command)
    model = _load_hf_vision_model(Dinov2Model, name_or_path, torch_dtype(dtype), "dinov2 vision")
    return HFVisionTower(model, level_layers, final_layer, num_prefix_tokens=1, image_size=image_size)


def build_random_dinov2_tower(
    name_or_path: str,
    level_layers: Sequence[int],
    final_layer: int = -1,
    image_size: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    build_command: str | None = None,
) -> HFVisionTower:
    """Build a frozen DINOv2 tower of the architecture of ``name_or_path`` with randomly initialised weights.

    The control of how much pretraining brings (the same stage 1 on the same architecture without its
    pretrained weights): only the folder's ``config.json`` is read, never a weight file; the weights are
    transformers' own initialisation of ``Dinov2Model`` (truncated normal of std ``initializer_range``, layer
    scale at ``layerscale_value``) drawn under ``torch.manual_seed(seed)``, the global random state restored
    afterwards. The cache key of the features holds the weights' sha256, so they never mix with the
    pretrained tower's.

    Args:
        name_or_path: Folder (or hub id) whose ``config.json`` gives the architecture (the real zoo's
            ``dinov2_s14``).
        level_layers: Hidden-state indices of the level taps (see :func:`build_siglip_tower`).
        final_layer: Hidden-state index of the final tokens.
        image_size: Crop side in pixels (None: the config's ``image_size``).
        seed: Seed of the initialisation (the same seed gives the same weights).
        dtype: "float32", "bfloat16" or "float16".
        build_command: The command that builds ``name_or_path`` when it is a zoo folder.

    Returns:
        The tower, frozen and in eval mode; patch tokens only.

    """
    from transformers import Dinov2Config, Dinov2Model

    require_built_folder(name_or_path, build_command)
    config = Dinov2Config.from_pretrained(name_or_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the attention kernel from_pretrained picks for the pretrained tower (SDPA), not the constructor's
        # eager one: the control then runs at the pretrained tower's speed (eager: 2.4x slower on this CPU)
        model = Dinov2Model._from_config(config, attn_implementation="sdpa")
    model = model.to(torch_dtype(dtype))
    return HFVisionTower(model, level_layers, final_layer, num_prefix_tokens=1, image_size=image_size)


def build_llava_onevision_tower(
    name_or_path: str, level_layers: Sequence[int], final_layer: int = -1, dtype: str = "float32"
) -> HFVisionTower:
    """Build the frozen vision tower of a ``LlavaOnevisionForConditionalGeneration`` checkpoint, loaded
    alone (the LLM weights are never materialised).

    Args:
        name_or_path: HF hub id or local folder of the LLaVA-OneVision checkpoint.
        level_layers: Hidden-state indices of the level taps (see :func:`build_siglip_tower`).
        final_layer: Hidden-state index of the final tokens (-1 = last block, without post-layernorm).
        dtype: "float32", "bfloat16" or "float16".

    Returns:
        The tower, frozen and in eval mode, dropping the prefix tokens LLaVA-OneVision drops.

    """
    model, num_prefix_tokens = _load_llava_onevision_tower(name_or_path, torch_dtype(dtype))
    return HFVisionTower(model, level_layers, final_layer, num_prefix_tokens=num_prefix_tokens)


def build_open_clip_tower(
    name_or_path: str,
    level_layers: Sequence[int],
    final_layer: int = -1,
    pretrained: str | None = None,
    quick_gelu: bool = False,
    dtype: str = "float32",
) -> OpenCLIPVisionTower:
    """Build a frozen open_clip ViT tower.

    Args:
        name_or_path: An open_clip model name ("ViT-L-14-336") or "local-dir:/folder" holding
            ``open_clip_config.json`` and weights.
        level_layers: Hidden-state indices of the level taps (see :func:`build_siglip_tower`).
        final_layer: Hidden-state index of the final tokens (-1 = last block).
        pretrained: Weights tag or file for a built-in model name (ignored by "local-dir:").
        quick_gelu: QuickGELU activations (OpenAI CLIP weights need it).
        dtype: "float32", "bfloat16" or "float16".

    Returns:
        The tower, frozen and in eval mode; patch tokens only.

    """
    import open_clip

    weights_dtype = torch_dtype(dtype)
    model = open_clip.create_model(
        name_or_path,
        pretrained=pretrained,
        force_quick_gelu=quick_gelu,
        require_pretrained=True,
        weights_only=True,
    )
    return OpenCLIPVisionTower(model.visual.to(weights_dtype), level_layers, final_layer)


def build_expert(
    vision_dim: int,
    expert_dim: int,
    grid: int,
    pool_grid: int = 2,
    num_levels: int = 4,
    levels: Sequence[int] | None = None,
    attention_dim: int | None = None,
    score_hidden_dim: int | None = None,
    temperature: float = 0.01,
    look_back: bool = True,
    learned_prompts: bool = True,
    shared_prompt_map: bool = True,
    vt_attention: bool = True,
    severity_thresholds: Sequence[float] = (0.3, 0.7),
    eps: float = 1e-6,
    checkpoint: str | None = None,
    official_checkpoint: str | None = None,
    dtype: str = "float32",
) -> AnomalyExpert:
    """Build the anomaly expert, optionally with weights.

    Args:
        vision_dim: Vision width D.
        expert_dim: Expert width E.
        grid: Token grid side (T = grid * grid).
        pool_grid: VT-selector pooling grid side.
        num_levels: Number of level inputs.
        levels: Which level inputs are used (null: all).
        attention_dim: Wq/Wk width (null: expert_dim).
        score_hidden_dim: Score-MLP hidden width (null: expert_dim).
        temperature: Matching temperature.
        look_back: Visual-aware class context on/off.
        learned_prompts: Learned prompt vectors on/off.
        shared_prompt_map: One prompt map per level (released) or two (paper).
        vt_attention: VT-selector attention on/off.
        severity_thresholds: Score thresholds of the severity words.
        eps: Floor of the denominators.
        checkpoint: A safetensors file written by ``expert_io.save_expert`` to load (its keys must fit these
            values).
        official_checkpoint: A released ``pretrained_expert_*.pth`` to load (needs the released structure).
        dtype: "float32", "bfloat16" or "float16".

    Returns:
        The expert (all parameters trainable; freezing is the training recipe's business).

    """
    if checkpoint is not None and official_checkpoint is not None:
        raise ValueError("Set at most one of checkpoint and official_checkpoint.")
    config = ExpertConfig(
        vision_dim=vision_dim,
        expert_dim=expert_dim,
        grid=grid,
        pool_grid=pool_grid,
        num_levels=num_levels,
        levels=None if levels is None else tuple(levels),
        attention_dim=attention_dim,
        score_hidden_dim=score_hidden_dim,
        temperature=temperature,
        look_back=look_back,
        learned_prompts=learned_prompts,
        shared_prompt_map=shared_prompt_map,
        vt_attention=vt_attention,
        severity_thresholds=tuple(severity_thresholds),
        eps=eps,
    )
    expert = AnomalyExpert(config)
    if checkpoint is not None:
        load_expert_weights(expert, Path(checkpoint))
    if official_checkpoint is not None:
        load_official_weights(expert, Path(official_checkpoint))
    return expert.to(torch_dtype(dtype))
