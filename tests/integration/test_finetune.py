"""Stage 2 end to end on one CPU process: the tiny run trains, logs, resumes exactly and exports a model
folder that ``predict`` loads and whose logits are the trained weights' logits."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_runs import logged, overrides, reference_run, run_finetune  # same folder (on sys.path)
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from anomaly_ov.checkpoints import load_anomaly_ov
from anomaly_ov.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_trains_and_logs_every_step(tiny_zoo, synthetic_data, tmp_path_factory):
    run_dir, metrics = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    assert metrics["finished"] and metrics["num_processes"] == 1 and metrics["num_samples"] == 8
    assert metrics["total_steps"] == 4 and len(metrics["losses"]) == 4
    assert metrics["losses"][-1] < metrics["losses"][0]
    lines = logged(run_dir)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert [line["loss"] for line in lines] == metrics["losses"]
    for line in lines:
        assert line["tokens_per_s"] > 0 and line["samples_per_s"] > 0 and line["peak_memory_gib"] > 0
        assert line["lr"] >= 0
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["kept"] == 8 and report["skipped_bad_records"] == [] and report["truncated_in_text"] == []
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.tuning == "lora" and saved.trainer.accelerator.zero_stage == 2


def test_interrupted_run_resumes_to_the_same_losses(tiny_zoo, synthetic_data, tmp_path, tmp_path_factory):
    _, reference = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    arguments = overrides(tmp_path, tiny_zoo, synthetic_data)
    run_dir = tmp_path / "run"
    first = run_finetune(run_dir, [*arguments, "trainer.fit.stop_after_steps=3"])
    assert len(first["losses"]) == 3 and not first["finished"]
    assert not (run_dir / "model").exists()
    resumed = run_finetune(run_dir, arguments)
    assert resumed["resumed_from_step"] == 3 and resumed["finished"]
    np.testing.assert_allclose(resumed["losses"], reference["losses"], rtol=1e-6)
    assert resumed["rank_checksums"] == reference["rank_checksums"]


def _batch(processor, data):
    record = json.loads(data.instruct_json.read_text())[0]
    image = Image.open(data.root / record["image"]).convert("RGB")
    return processor([record["conversations"]], [[image]], add_generation_prompt=False, padding_side="right")


def _built_as_the_run(run_dir):
    """The run's model as its recipe builds it: under ``set_seed(cfg.seed)``, so the parts neither trained nor
    read from a file (the tiny recipe's expert has no checkpoint: drawn at random) are the run's own, not
    whatever the session's random state happens to give."""
    from accelerate.utils import set_seed

    config = OmegaConf.load(run_dir / "config.yaml")
    set_seed(config.seed)
    return instantiate(config.model, _convert_="all").model


def test_exported_folder_holds_the_trained_weights(tiny_zoo, synthetic_data, tmp_path_factory):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, metrics = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    loaded = load_anomaly_ov(metrics["model"])
    # the trained weights as DeepSpeed's final checkpoint holds them, put into a freshly built model
    trained = get_fp32_state_dict_from_zero_checkpoint(
        str(run_dir / "checkpoints" / "step_0000004"), tag="pytorch_model", exclude_frozen_parameters=True
    )
    fresh = _built_as_the_run(run_dir)
    missing, unexpected = fresh.load_state_dict(trained, strict=False)
    assert unexpected == [] and len(trained) == 33  # LoRA (2 layers x 7 linears x A, B) + projector + newline
    assert not any("lora_" in name or "projector" in name for name in missing)
    batch = _batch(loaded.processor, synthetic_data)
    with torch.no_grad():
        expected = fresh.eval()(**batch).logits
        actual = loaded.model(**batch).logits
        untrained = _built_as_the_run(run_dir).eval()
        before = untrained(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert (actual - before).abs().max() > 1e-3  # training changed the model


def test_predict_and_chat_load_the_exported_folder(
    tiny_zoo, synthetic_data, tmp_path, capsys, tmp_path_factory
):
    _, metrics = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    record = json.loads(synthetic_data.instruct_json.read_text())[0]
    image = synthetic_data.root / record["image"]
    code = cli(
        [
            "predict",
            "--model",
            metrics["model"],
            "--images",
            str(image),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1 and 0 <= json.loads(lines[0])["score"] <= 1
    capsys.readouterr()
    assert cli(["chat", "--model", metrics["model"], "--image", str(image), "--question", "Any defect?"]) == 0
    assert capsys.readouterr().out.strip()


def test_merged_export_equals_the_adapter_export(tiny_zoo, synthetic_data, tmp_path, tmp_path_factory):
    _, reference = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    arguments = overrides(tmp_path, tiny_zoo, synthetic_data, "export.merge_lora=true")
    merged = run_finetune(tmp_path / "run", arguments)
    assert merged["losses"] == reference["losses"]
    folder = Path(merged["model"])
    assert (folder / "base").is_dir() and not (folder / "adapter").exists()
    adapter, loaded = load_anomaly_ov(reference["model"]), load_anomaly_ov(folder)
    assert loaded.config.lora is None and not any("lora_" in n for n, _ in loaded.model.named_parameters())
    batch = _batch(loaded.processor, synthetic_data)
    with torch.no_grad():
        difference = (loaded.model(**batch).logits - adapter.model(**batch).logits).abs().max()
    assert difference < 1e-4  # (W + B A) x against W x + B A x: float32 rounding


def test_merge_lora_without_an_adapter_is_refused_before_training(tiny_zoo, synthetic_data, tmp_path):
    from anomaly_ov.inference.pipeline import compose_config
    from anomaly_ov.recipes.finetune import finetune

    arguments = overrides(tmp_path, tiny_zoo, synthetic_data, "tuning=full", "export.merge_lora=true")
    arguments = [a for a in arguments if not a.startswith("model.lora.")]  # full tuning has no model.lora
    cfg = compose_config("finetune", [*arguments, f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="merge_lora=true needs a LoRA adapter"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()
