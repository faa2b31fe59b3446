"""Builders of the multimodal model: the only code that maps config values to LLaVA-OneVision, LoRA and
:class:`~anomaly_ov.models.anomaly_ov.AnomalyOV`.

Hydra configs point ``_target_`` here: ``configs/model/llm/*.yaml`` -> :func:`build_llm`,
``configs/model/lora/default.yaml`` -> :func:`build_lora` (``none.yaml`` sets ``model.lora: null``), and the
``model`` node of ``configs/{chat,predict}.yaml`` -> :func:`build_anomaly_ov`, which receives the built LLM,
expert (``configs/model/expert``, :func:`anomaly_ov.models.builders.build_expert`) and LoRA settings.
The tiny zoo and the llava-hf checkpoints go through exactly the same functions.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, inject_adapter_in_model
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

from anomaly_ov.data.images import RELEASE_MAX_IMAGE_SIDE
from anomaly_ov.data.tokens import DEFAULT_SYSTEM_PROMPT
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.models.builders import torch_dtype
from anomaly_ov.models.expert import AnomalyExpert
from anomaly_ov.models.hf_loading import quiet_transformers, raise_on_incomplete_load, require_built_folder
from anomaly_ov.models.processor import PROCESSOR_CONFIG_NAME, AnomalyOVProcessor
from anomaly_ov.models.vision import patch_embedding_sample, same_tower_weights
from anomaly_ov.weights_files import refuse_remote_code


@dataclass
class LlavaOnevisionParts:
    """A loaded LLaVA-OneVision checkpoint with what Anomaly-OV needs to know about it.

    Attributes:
        llava: The model.
        processor: Its processor, extended with the reserved positions.
        level_layers: Vision hidden-state indices of the expert's level tokens.
        name_or_path: The checkpoint it was loaded from (for messages).
    """

    llava: LlavaOnevisionForConditionalGeneration
    processor: AnomalyOVProcessor
    level_layers: tuple[int, ...]
    name_or_path: str = ""


@dataclass
class AnomalyOVBundle:
    """A built Anomaly-OV model and its processor."""

    model: AnomalyOV
    processor: AnomalyOVProcessor


def load_llava_onevision(
    name_or_path: str,
    dtype: str = "float32",
    device_map: str | None = None,
    attn_implementation: str | None = None,
) -> LlavaOnevisionForConditionalGeneration:
    """Loads a transformers-native LLaVA-OneVision checkpoint, in eval mode.

    Args:
        name_or_path: Hub id (``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``) or local folder.
        dtype: "float32", "bfloat16" or "float16".
        device_map: accelerate device map for large models ("auto", "cuda:0", ...); None keeps it on CPU.
        attn_implementation: "sdpa", "eager", "flash_attention_2" or None (transformers' default).

    Raises:
        ValueError: If weights are missing or have other shapes (the model would be partly random).
    """
    refuse_remote_code(name_or_path)  # a folder whose config names remote code is refused, naming the file
    with quiet_transformers():
        llava, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
            name_or_path,
            dtype=torch_dtype(dtype),
            device_map=device_map,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    raise_on_incomplete_load(info, name_or_path, "LLaVA-OneVision")
    return llava.eval()


def load_processor(
    name_or_path: str,
    pool_grid: int = 2,
    anyres: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_image_side: int | None = RELEASE_MAX_IMAGE_SIDE,
    label_rule: str = "assistant",
) -> AnomalyOVProcessor:
    """Loads the checkpoint's LLaVA-OneVision processor and extends it (or a saved AnomalyOVProcessor).

    Args:
        name_or_path: Hub id or folder of a LLaVA-OneVision processor, or a folder written by
            :meth:`AnomalyOVProcessor.save_pretrained` (its saved settings are used).
        pool_grid: The expert's pooling-grid side.
        anyres: AnyRes tiles for single images.
        system_prompt: Default system message.
        max_image_side: The release's long-side limit (None: off).
        label_rule: "assistant" or "release" (which tokens are learned).
    """
    refuse_remote_code(name_or_path)  # a tokenizer / processor config naming a remote class is refused
    if (Path(name_or_path) / PROCESSOR_CONFIG_NAME).is_file():
        return AnomalyOVProcessor.from_pretrained(name_or_path)
    with quiet_transformers():
        base = LlavaOnevisionProcessor.from_pretrained(name_or_path)
    return AnomalyOVProcessor(
        base,
        pool_grid=pool_grid,
        anyres=anyres,
        system_prompt=system_prompt,
        max_image_side=max_image_side,
        label_rule=label_rule,
    )


def build_llm(
    name_or_path: str,
    level_layers: Sequence[int],
    pool_grid: int = 2,
    anyres: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    dtype: str = "float32",
    device_map: str | None = None,
    attn_implementation: str | None = None,
    max_image_side: int | None = RELEASE_MAX_IMAGE_SIDE,
    label_rule: str = "assistant",
    build_command: str | None = None,
) -> LlavaOnevisionParts:
    """Loads a LLaVA-OneVision checkpoint and its processor (``configs/model/llm/*.yaml``).

    Args:
        name_or_path: Hub id or local folder of a transformers-native LLaVA-OneVision checkpoint.
        level_layers: Vision hidden-state indices the expert reads (released [7, 13, 19, 25]).
        pool_grid: The expert's pooling-grid side (sets the number of anomaly-token positions).
        anyres: AnyRes tiles for single images (LLaVA-OneVision's default).
        system_prompt: Default system message of prompts.
        dtype: Model dtype name.
        device_map: accelerate device map or None.
        attn_implementation: Attention kernel or None.
        max_image_side: The release's long-side limit applied to every image (None: off).
        label_rule: "assistant" (default) or "release": which tokens stage 2 learns.
        build_command: The command that builds ``name_or_path`` when it is a zoo folder (named in the error
            when the folder is missing; None: not checked).
    """
    require_built_folder(name_or_path, build_command)
    llava = load_llava_onevision(name_or_path, dtype, device_map, attn_implementation)
    num_hidden = llava.config.vision_config.num_hidden_layers
    for index in level_layers:
        if not -(num_hidden + 1) <= int(index) <= num_hidden:
            raise ValueError(
                f"level_layers={list(level_layers)}: index {index} is outside the {num_hidden + 1} "
                f"hidden states of {name_or_path}'s vision tower."
            )
    processor = load_processor(
        name_or_path,
        pool_grid=pool_grid,
        anyres=anyres,
        system_prompt=system_prompt,
        max_image_side=max_image_side,
        label_rule=label_rule,
    )
    return LlavaOnevisionParts(
        llava=llava,
        processor=processor,
        level_layers=tuple(int(i) for i in level_layers),
        name_or_path=str(name_or_path),
    )


def build_lora(
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
) -> LoraConfig:
    """PEFT LoRA settings for the LLM's linear layers (``configs/model/lora/default.yaml``).

    Args:
        rank: LoRA rank r.
        alpha: LoRA scaling alpha.
        dropout: Dropout on the LoRA input.
        target_modules: Names of the LLM's linear layers to adapt (Qwen2: q/k/v/o_proj, gate/up/down_proj).
    """
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
    )


def apply_lora(llava: LlavaOnevisionForConditionalGeneration, lora: LoraConfig) -> None:
    """Injects LoRA adapters into the language model (in place) and freezes the LLM's base weights.

    Only the LLM is adapted: the vision tower and the projector are never targeted (the projector and the
    image newline stay fully trainable, as in stage 2). The LLM's base weights, its input embeddings and the
    output head are frozen.
    """
    language_model = llava.model.language_model
    inject_adapter_in_model(lora, language_model, adapter_name="default")
    for name, parameter in language_model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    llava.lm_head.requires_grad_(False)


def check_expert_tower(expert: AnomalyExpert, llm: LlavaOnevisionParts) -> None:
    """Refuses an expert trained on another vision tower or other level taps than this model's (SPEC §4).

    An expert without a :attr:`~anomaly_ov.models.expert.AnomalyExpert.tower_record` (a released ``.pth``,
    a fresh expert) is not checked.

    Raises:
        ValueError: Naming the tower the expert was trained on and this model's.
    """
    record = expert.tower_record
    if record is None:
        return
    tower = llm.llava.model.vision_tower
    num_blocks = tower.config.num_hidden_layers
    levels = [i if i >= 0 else num_blocks + 1 + i for i in llm.level_layers]
    here = f"the vision tower of {llm.name_or_path}"
    if list(record["level_layers"]) != levels:
        raise ValueError(
            f"the expert was trained on hidden states {record['level_layers']} of {record['name_or_path']}, "
            f"but this model feeds it hidden states {levels} of {here}."
        )
    if not same_tower_weights(record["patch_embedding_sample"], patch_embedding_sample(tower)):
        raise ValueError(
            f"the expert was trained on the features of {record['name_or_path']}, whose weights differ from "
            f"{here}; an expert does not transfer between towers (train it on this model's tower)."
        )


def build_anomaly_ov(
    llm: LlavaOnevisionParts,
    expert: AnomalyExpert | None,
    lora: LoraConfig | None = None,
) -> AnomalyOVBundle:
    """Assembles Anomaly-OV from a loaded LLaVA-OneVision, an expert and optional LoRA settings.

    Args:
        llm: The LLaVA-OneVision checkpoint and its processor (:func:`build_llm`).
        expert: The anomaly expert; it is moved to the vision tower's device and frozen. None
            (``model/expert=none``) gives plain LLaVA-OneVision: no severity text, no anomaly tokens, and a
            processor that reserves no positions for them.
        lora: LoRA settings for the LLM, or None (no adapter).

    Returns:
        The model and its processor.
    """
    if lora is not None:
        apply_lora(llm.llava, lora)
    if expert is None:
        processor = llm.processor.without_expert_tokens()
        model = AnomalyOV(
            llava=llm.llava,
            expert=None,
            level_layers=(),
            placeholders=processor.placeholders,
            severity_ids={},
        )
        return AnomalyOVBundle(model=model, processor=processor)
    if llm.processor.pool_grid != expert.pool_grid:
        raise ValueError(
            f"the processor reserves positions for pool_grid={llm.processor.pool_grid} but the expert has "
            f"pool_grid={expert.pool_grid}."
        )
    check_expert_tower(expert, llm)
    vision_device = next(llm.llava.model.vision_tower.parameters()).device
    expert = expert.to(vision_device)
    model = AnomalyOV(
        llava=llm.llava,
        expert=expert,
        level_layers=llm.level_layers,
        placeholders=llm.processor.placeholders,
        severity_ids=llm.processor.severity_ids,
    )
    return AnomalyOVBundle(model=model, processor=llm.processor)
