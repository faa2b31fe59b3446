"""The anomaly expert's file formats: our safetensors checkpoints and the released ``.pth`` pickles.

* Safetensors (:func:`save_expert`, :func:`load_expert`, :func:`load_expert_weights`): the state dict, with
  the :class:`~anomaly_ov.models.expert.ExpertConfig` (as ``dataclasses.asdict``, JSON) and the expert's
  ``tower_record`` (the vision tower it was trained on, SPEC §4) in the metadata; exact round trip.
* Released (:func:`load_official_expert`, :func:`load_official_weights`): ``pretrained_expert_05b.pth`` /
  ``pretrained_expert_7b.pth``, a plain PyTorch state dict in SPEC §2's key layout, read with
  ``weights_only=True`` so that no code in the pickle runs; keys are mapped by :func:`official_key_map`.

Every loader refuses a file that does not fit, naming the file and each missing, unexpected or misshapen key.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig
from anomaly_ov.weights_files import read_safetensors, read_weights_pickle, safetensors_metadata

CONFIG_METADATA_KEY = "anomaly_ov.expert_config"
TOWER_METADATA_KEY = "anomaly_ov.tower"


def save_expert(expert: AnomalyExpert, path: str | Path) -> None:
    """Write the weights and :class:`ExpertConfig` to a safetensors file (see :func:`load_expert`).

    The expert's ``tower_record`` (the vision tower it was trained on), when set, goes with them.

    Args:
        expert: The expert to save.
        path: The ``.safetensors`` file to write.

    """
    state = {k: v.detach().contiguous().cpu() for k, v in expert.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(asdict(expert.config))}
    if expert.tower_record is not None:
        metadata[TOWER_METADATA_KEY] = json.dumps(expert.tower_record)
    save_file(state, str(path), metadata=metadata)


def _metadata(path: str | Path) -> dict[str, str]:
    return safetensors_metadata(path)


def load_expert(path: str | Path, dtype: torch.dtype | None = None) -> AnomalyExpert:
    """Build an expert from a safetensors file written by :func:`save_expert`.

    Args:
        path: The ``.safetensors`` file.
        dtype: Cast the weights to this dtype (default: as stored).

    Returns:
        The expert with the file's config, weights and tower record.

    Raises:
        ValueError: If the file carries no expert configuration.

    """
    metadata = _metadata(path)
    if CONFIG_METADATA_KEY not in metadata:
        raise ValueError(
            f"{path}: no '{CONFIG_METADATA_KEY}' metadata; not an expert checkpoint written by "
            "save_expert (for the released .pth files use load_official_expert)."
        )
    expert = AnomalyExpert(ExpertConfig(**json.loads(metadata[CONFIG_METADATA_KEY])))
    load_expert_weights(expert, path)
    return expert if dtype is None else expert.to(dtype)


def load_expert_weights(expert: AnomalyExpert, path: str | Path) -> None:
    """Load a safetensors file written by :func:`save_expert` into ``expert`` (every key must fit).

    Also sets the expert's ``tower_record`` to the file's (None if it has none).

    Raises:
        ValueError: Naming the missing and unexpected keys and the shape mismatches.

    """
    state = read_safetensors(path)
    own = expert.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs expert {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} does not fit this expert ({expert.config}): missing keys {missing}, unexpected keys "
            f"{unexpected}, shape mismatches {mismatched}."
        )
    expert.load_state_dict(state, strict=True)
    record = _metadata(path).get(TOWER_METADATA_KEY)
    expert.tower_record = None if record is None else json.loads(record)


def load_official_expert(
    path: str | Path,
    vision_dim: int = 1152,
    expert_dim: int = 512,
    grid: int = 27,
    num_levels: int = 4,
    temperature: float = 0.01,
    severity_thresholds: Sequence[float] = (0.3, 0.7),
) -> AnomalyExpert:
    """Load a released expert (``pretrained_expert_05b.pth`` / ``pretrained_expert_7b.pth``).

    Defaults are the released sizes; the structure is the released one (look-back, learned prompts, one
    shared prompt map per level, VT-selector attention, 2x2 pooling).

    Args:
        path: The ``.pth`` file.
        vision_dim: D (1152 released).
        expert_dim: E (512 released).
        grid: Token grid side (27 released).
        num_levels: Levels (4 released).
        temperature: Matching temperature (0.01 released).
        severity_thresholds: Thresholds of :meth:`AnomalyExpert.severity_words`.

    Raises:
        ValueError: If keys are missing or unexpected or shapes do not fit, naming each.

    """
    config = ExpertConfig(
        vision_dim=vision_dim,
        expert_dim=expert_dim,
        grid=grid,
        num_levels=num_levels,
        temperature=temperature,
        severity_thresholds=tuple(severity_thresholds),
    )
    expert = AnomalyExpert(config)
    load_official_weights(expert, path)
    return expert


def load_official_weights(expert: AnomalyExpert, path: str | Path) -> None:
    """Load a released ``.pth`` state dict (SPEC §2 keys) into ``expert``, which must have the released
    structure; the pickle is read with ``weights_only=True``.

    Raises:
        ValueError: If the file is not a state dict, or keys are missing or unexpected or shapes do not fit,
            naming each.

    """
    official = read_weights_pickle(path)  # weights_only: a pickle payload is refused before it runs
    if not isinstance(official, dict):
        raise ValueError(
            f"{path}: expected a state dict (a dict of tensors), found {type(official).__name__}."
        )
    expert.load_state_dict(official_to_expert_state(official, expert, source=str(path)), strict=True)


def official_key_map(num_levels: int) -> dict[str, str]:
    """Released key -> :class:`AnomalyExpert` key for the released structure with ``num_levels`` levels."""
    mapping = {
        "positive_embedding": "prompt_normal",
        "negative_embedding": "prompt_abnormal",
        "pooling_layer.0.weight": "lookback_pool.weight",
        "pooling_layer.0.bias": "lookback_pool.bias",
    }
    for index in (0, 2):
        for kind in ("weight", "bias"):
            mapping[f"class_predictor.{index}.{kind}"] = f"class_context.{index}.{kind}"
            mapping[f"final_predictor.{index}.{kind}"] = f"score_head.{index}.{kind}"
    for k in range(num_levels):
        for kind in ("weight", "bias"):
            mapping[f"siglip_adaptors.{k}.{kind}"] = f"patch_adapters.{k}.{kind}"
            mapping[f"prompt_adaptors.{k}.{kind}"] = f"prompt_adapters.{k}.{kind}"
    for kind in ("weight", "bias"):
        mapping[f"q_former.query_proj.{kind}"] = f"query_proj.{kind}"
        mapping[f"q_former.key_proj.{kind}"] = f"key_proj.{kind}"
    return mapping


def official_to_expert_state(
    official: dict[str, torch.Tensor], expert: AnomalyExpert, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Map a released state dict to ``expert``'s keys, checking every key and shape.

    Args:
        official: Released state dict (SPEC §2 keys).
        expert: An expert with the released structure, whose shapes the file must have.
        source: Name of the file, for error messages.

    Raises:
        ValueError: Naming the missing and unexpected keys and the shape mismatches.

    """
    mapping = official_key_map(expert.num_levels)
    own = expert.state_dict()
    if set(mapping.values()) != set(own):
        raise ValueError(
            f"expert {expert.config} does not have the released structure; cannot load {source}."
        )
    # The released prompt vectors carry a leading axis of 1.
    expected = {
        key: (1, *own[ours].shape) if key.endswith("_embedding") else tuple(own[ours].shape)
        for key, ours in mapping.items()
    }
    missing = [f"{k} {expected[k]}" for k in mapping if k not in official]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in official.items() if k not in mapping]
    mismatched = [
        f"{k}: file {tuple(official[k].shape)} vs expected {expected[k]}"
        for k in mapping
        if k in official and tuple(official[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not fit the released expert layout (D={expert.vision_dim}, "
            f"E={expert.expert_dim}, T={expert.num_tokens}, {expert.num_levels} levels): missing keys "
            f"{missing}; unexpected keys {unexpected}; shape mismatches {mismatched}."
        )
    return {ours: official[key].reshape(own[ours].shape).to(own[ours].dtype) for key, ours in mapping.items()}
