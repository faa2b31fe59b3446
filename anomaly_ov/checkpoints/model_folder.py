"""The saved Anomaly-OV folder: what :func:`save_anomaly_ov` writes and :func:`load_anomaly_ov` rebuilds.

Layout::

    <folder>/anomaly_ov.json          manifest: format, version, what the folder holds
    <folder>/config.yaml              the resolved model config (model.llm / model.expert / model.lora /
                                      the builder targets); local paths made absolute
    <folder>/projector.safetensors    LLaVA-OneVision's projector and image-newline embedding
    <folder>/expert.safetensors       the anomaly expert (weights + its ExpertConfig + tower record); absent
                                      for plain LLaVA-OneVision (config.yaml's model.expert is null)
    <folder>/adapter/                 PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors),
                                      only when the LLM has one
    <folder>/base/                    the full LLaVA-OneVision weights (without LoRA) and processor, only
                                      when asked (e.g. after full fine-tuning, or with the LoRA adapter
                                      merged in: then there is no adapter/ and config.yaml's model.lora is
                                      null); otherwise config.yaml's model.llm.name_or_path is the
                                      reference to the base checkpoint
    <folder>/processor/               the processor (tokenizer with the added tokens, image processor)

Loading goes through the same builders as a fresh build (:mod:`anomaly_ov.models.mllm_builders`), with the
expert read from ``expert.safetensors`` and the base from ``base/`` when present, then the projector and the
adapter weights are put in.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from anomaly_ov.atomic_files import staged_folder
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.models.expert_io import save_expert
from anomaly_ov.models.processor import AnomalyOVProcessor
from anomaly_ov.weights_files import read_safetensors

FORMAT = "anomaly-ov"
VERSION = 1
MANIFEST_NAME = "anomaly_ov.json"
CONFIG_NAME = "config.yaml"
PROJECTOR_NAME = "projector.safetensors"
EXPERT_NAME = "expert.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
BASE_DIR = "base"
PROCESSOR_DIR = "processor"


@dataclass
class LoadedAnomalyOV:
    """A model rebuilt from a saved folder, its processor and the resolved config it was built from."""

    model: AnomalyOV
    processor: AnomalyOVProcessor
    config: DictConfig


def _absolute_if_local(name_or_path: str) -> str:
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def _has_lora(model: AnomalyOV) -> bool:
    return any("lora_" in name for name, _ in model.llava.model.language_model.named_parameters())


def _base_state(llava: torch.nn.Module, merge_lora: bool) -> dict[str, torch.Tensor]:
    """LLaVA-OneVision's weights under their plain names, without the LoRA layers (PEFT keeps each adapted
    Linear as ``.base_layer``); with ``merge_lora`` each adapted weight is W + scale * B @ A (PEFT's delta),
    computed beside the model, which is not touched.
    """
    state = {name: tensor for name, tensor in llava.state_dict().items() if "lora_" not in name}
    if merge_lora:
        for module_name, module in llava.named_modules():
            if isinstance(module, BaseTunerLayer):
                key = f"{module_name}.base_layer.weight"
                for adapter in module.active_adapters:
                    state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return {name.replace(".base_layer.", "."): tensor.detach() for name, tensor in state.items()}


def save_anomaly_ov(
    model: AnomalyOV,
    processor: AnomalyOVProcessor,
    folder: str | Path,
    config: Mapping[str, Any] | DictConfig,
    base_weights: bool = False,
    merge_lora: bool = False,
) -> Path:
    """Saves a model so that :func:`load_anomaly_ov` rebuilds it exactly.

    Args:
        model: The model.
        processor: Its processor.
        folder: Output folder. It is written under a temporary name and renamed into place once complete,
            replacing an earlier saved model there: a failed write (a full disk) leaves the earlier one as
            it was. A folder that holds anything else is refused.
        config: The model config it was built from (the ``model`` node: ``llm``, ``expert``, ``lora`` and
            the builder ``_target_``), resolved or not.
        base_weights: Also write the full LLaVA-OneVision weights (needed after full fine-tuning of the LLM);
            otherwise the config's ``llm.name_or_path`` is the reference to the base checkpoint.
        merge_lora: Write the LoRA adapter merged into the full weights (``base/``; implies
            ``base_weights``) instead of ``adapter/``: the folder loads without PEFT layers, so inference
            runs at the base model's speed. The model itself is left as it was.

    Returns:
        The folder.

    Raises:
        ValueError: If ``folder`` exists and is neither empty nor a saved model (it would be replaced).
        OSError: Naming ``folder`` if writing fails (the disk is full, ...); the earlier model is kept.
    """
    final = Path(folder)
    if final.is_dir() and any(final.iterdir()) and not (final / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{final} exists and is not a saved Anomaly-OV model (no {MANIFEST_NAME}); saving would replace "
            "its contents. Choose an empty or new folder."
        )
    with staged_folder(final, "the earlier saved model there (if any) is kept") as folder:
        _write_folder(model, processor, folder, config, base_weights, merge_lora)
    return final


def _write_folder(
    model: AnomalyOV,
    processor: AnomalyOVProcessor,
    folder: Path,
    config: Mapping[str, Any] | DictConfig,
    base_weights: bool,
    merge_lora: bool,
) -> None:
    """Writes the files of :func:`save_anomaly_ov` into ``folder`` (its staging folder)."""
    # a node of a composed config resolves its interpolations against its root (paths.*), so resolve in place
    node = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    resolved = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    resolved.llm.name_or_path = _absolute_if_local(resolved.llm.name_or_path)
    has_lora = _has_lora(model)
    if has_lora != (resolved.lora is not None):
        raise ValueError(
            f"config.lora is {'set' if resolved.lora is not None else 'null'} but the model "
            f"{'has' if has_lora else 'has no'} LoRA adapter."
        )
    if merge_lora and not has_lora:
        raise ValueError("merge_lora is set but the model has no LoRA adapter to merge.")
    if merge_lora:
        resolved.lora = None
        base_weights = True

    llava = model.llava
    projector = {
        f"multi_modal_projector.{k}": v for k, v in llava.model.multi_modal_projector.state_dict().items()
    }
    projector["image_newline"] = llava.model.image_newline.data
    save_file({k: v.detach().contiguous().cpu() for k, v in projector.items()}, str(folder / PROJECTOR_NAME))
    if model.expert is not None:
        save_expert(model.expert, folder / EXPERT_NAME)
    if (model.expert is None) != (resolved.expert is None):
        raise ValueError(
            f"config.expert is {'null' if resolved.expert is None else 'set'} but the model "
            f"{'has no' if model.expert is None else 'has an'} expert."
        )

    if has_lora and not merge_lora:
        language_model = llava.model.language_model
        adapter = folder / ADAPTER_DIR
        adapter.mkdir(exist_ok=True)
        language_model.peft_config["default"].save_pretrained(str(adapter))
        state = get_peft_model_state_dict(language_model, adapter_name="default")
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(adapter / ADAPTER_WEIGHTS_NAME)
        )
    if base_weights:
        llava.save_pretrained(folder / BASE_DIR, state_dict=_base_state(llava, merge_lora))
        # a complete checkpoint folder: the builders load the processor from the same place
        processor.save_pretrained(folder / BASE_DIR)
    processor.save_pretrained(folder / PROCESSOR_DIR)

    (folder / CONFIG_NAME).write_text(OmegaConf.to_yaml(resolved))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "base": BASE_DIR if base_weights else resolved.llm.name_or_path,
        "lora": has_lora and not merge_lora,
        "expert": model.expert is not None,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def load_anomaly_ov(
    folder: str | Path, dtype: str | None = None, device_map: str | None = None
) -> LoadedAnomalyOV:
    """Rebuilds a model saved by :func:`save_anomaly_ov`.

    Args:
        folder: The saved folder.
        dtype: Override of the saved dtype ("float32", "bfloat16", "float16") for the LLM and the expert.
        device_map: Override of the saved device map ("auto", "cuda:0", ...).

    Returns:
        The model (eval mode), its processor and the config it was built from.

    Raises:
        FileNotFoundError: If the folder is not a saved Anomaly-OV model or lacks a file it announces.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved Anomaly-OV model (no {MANIFEST_NAME}).")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path}: not valid JSON ({error}).") from error
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"expected {FORMAT!r} version {VERSION}."
        )
    config = OmegaConf.load(folder / CONFIG_NAME)
    build = config.copy()
    if (folder / BASE_DIR).is_dir():
        build.llm.name_or_path = str(folder / BASE_DIR)
    has_expert = bool(manifest.get("expert", True))
    if has_expert:
        expert_path = folder / EXPERT_NAME
        if not expert_path.is_file():
            raise FileNotFoundError(
                f"{folder}: {MANIFEST_NAME} announces an expert but {EXPERT_NAME} is missing."
            )
        build.expert.checkpoint = str(expert_path)
        build.expert.official_checkpoint = None
    if dtype is not None:
        build.llm.dtype = dtype
        if has_expert:
            build.expert.dtype = dtype
    if device_map is not None:
        build.llm.device_map = device_map
    bundle = instantiate(build, _convert_="all")

    llava = bundle.model.llava
    projector_path = folder / PROJECTOR_NAME
    state = read_safetensors(projector_path)
    prefix = "multi_modal_projector."
    try:
        newline = state.pop("image_newline")
        llava.model.multi_modal_projector.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items()}, strict=True
        )
        llava.model.image_newline.data.copy_(newline)
    except (KeyError, RuntimeError) as error:
        # e.g. a projector saved for another LLaVA-OneVision size than config.yaml's model.llm
        raise ValueError(
            f"{projector_path} does not fit the projector of {build.llm.name_or_path}: {error}"
        ) from error
    if manifest["lora"]:
        adapter = folder / ADAPTER_DIR
        language_model = llava.model.language_model
        if not hasattr(language_model, "peft_config"):
            raise ValueError(f"{folder} holds a LoRA adapter but config.yaml's model.lora is null.")
        weights = read_safetensors(adapter / ADAPTER_WEIGHTS_NAME)
        expected = set(get_peft_model_state_dict(language_model, adapter_name="default"))
        if set(weights) != expected:
            raise ValueError(
                f"{adapter}: adapter weights do not fit config.yaml's model.lora (missing "
                f"{sorted(expected - set(weights))[:10]}, unexpected {sorted(set(weights) - expected)[:10]})."
            )
        set_peft_model_state_dict(language_model, weights, adapter_name="default")
    return LoadedAnomalyOV(model=bundle.model.eval(), processor=bundle.processor, config=config)


def merge_lora_folder(source: str | Path, destination: str | Path) -> Path:
    """Writes a copy of a saved folder whose LoRA adapter is merged into full weights (``base/``).

    Args:
        source: A folder saved with a LoRA adapter (stage 2's export).
        destination: The merged folder (created; must not be ``source``).

    Returns:
        ``destination``; it loads with :func:`load_anomaly_ov` without PEFT layers.

    Raises:
        ValueError: If ``source`` holds no adapter, or ``destination`` is ``source``.
    """
    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise ValueError(f"{destination}: the merged folder must differ from the source folder.")
    loaded = load_anomaly_ov(source)
    if not _has_lora(loaded.model):
        raise ValueError(f"{source} holds no LoRA adapter: there is nothing to merge.")
    return save_anomaly_ov(loaded.model, loaded.processor, destination, loaded.config, merge_lora=True)


def cli_main(argv: list[str]) -> int:
    """``anomaly-ov merge-lora SOURCE DESTINATION``: a saved folder with its LoRA adapter merged in."""
    import argparse

    parser = argparse.ArgumentParser(prog="anomaly-ov merge-lora", description=cli_main.__doc__)
    parser.add_argument("source", type=Path, help="a saved model folder with a LoRA adapter")
    parser.add_argument("destination", type=Path, help="the merged folder to write")
    args = parser.parse_args(argv)
    try:
        folder = merge_lora_folder(args.source, args.destination)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"anomaly-ov merge-lora: {error}\n")
    print(f"merged model written to {folder}")
    return 0
