"""A LoRA model exported merged: full weights in base/, no adapter, the same logits, the model untouched."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ov.checkpoints.model_folder import load_anomaly_ov, save_anomaly_ov
from anomaly_ov.cli import main as cli
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")
TURNS = [[{"from": "human", "value": "<image>\nIs there any anomaly in the image?"}]]


def _logits(loaded_or_pipe) -> torch.Tensor:
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 120, 3), dtype=np.uint8))
    batch = loaded_or_pipe.processor(TURNS, [[image]])
    with torch.no_grad():
        return loaded_or_pipe.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.fixture(scope="module")
def lora_folder(tiny_zoo, tmp_path_factory):
    """A tiny model with a trained-looking LoRA adapter (B moved off its zero init), saved with it."""
    overrides = [f"paths.zoo_dir={tiny_zoo.root}", "model/lora=default", "model.lora.rank=4"]
    config = compose_config("chat", overrides)
    pipe = AnomalyOVPipeline.from_config(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipe.model.named_parameters():
            if "lora_" in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("lora") / "model"
    save_anomaly_ov(pipe.model, pipe.processor, folder, config.model)
    return folder, pipe, _logits(pipe)


def test_merged_folder_gives_the_adapter_logits_without_lora_layers(lora_folder, tmp_path):
    folder, pipe, adapter_logits = lora_folder
    weights_before = {n: p.detach().clone() for n, p in pipe.model.named_parameters()}
    merged = save_anomaly_ov(
        pipe.model, pipe.processor, tmp_path / "merged", load_anomaly_ov(folder).config, merge_lora=True
    )
    # the model in memory is not changed by the merged save
    assert all(torch.equal(p, weights_before[n]) for n, p in pipe.model.named_parameters())
    assert not (merged / "adapter").exists() and (merged / "base" / "config.json").is_file()
    assert json.loads((merged / "anomaly_ov.json").read_text())["lora"] is False
    loaded = load_anomaly_ov(merged)
    assert loaded.config.lora is None
    assert not any("lora_" in n for n, _ in loaded.model.named_parameters())
    merged_logits = _logits(loaded)
    # the adapter changes the output, and merging keeps that change: W x + B A x against (W + B A) x,
    # equal up to float32 rounding, which is orders of magnitude below the adapter's effect
    effect = (adapter_logits - _logits(_without_adapter(folder))).abs().max()
    rounding = (merged_logits - adapter_logits).abs().max()
    print(f"adapter effect {effect:.3g}, merged vs adapter {rounding:.3g}")
    assert effect > 0.1 and rounding < 1e-3 * effect


def _without_adapter(folder):
    loaded = load_anomaly_ov(folder)
    for name, parameter in loaded.model.named_parameters():
        if "lora_B" in name:
            parameter.data.zero_()
    return loaded


def test_merge_lora_command_writes_a_loadable_folder_and_refuses_a_folder_without_adapter(
    lora_folder, tmp_path, capsys
):
    folder, _, adapter_logits = lora_folder
    assert cli(["merge-lora", str(folder), str(tmp_path / "merged")]) == 0
    assert (_logits(load_anomaly_ov(tmp_path / "merged")) - adapter_logits).abs().max() < 1e-3
    with pytest.raises(SystemExit) as stop:
        cli(["merge-lora", str(tmp_path / "merged"), str(tmp_path / "again")])
    assert stop.value.code == 2 and "holds no LoRA adapter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["merge-lora", str(tmp_path / "nowhere"), str(tmp_path / "again")])
    assert "is not a saved Anomaly-OV model" in capsys.readouterr().err
