"""An injected NaN: ``trainer.fit.nonfinite=stop`` ends the run naming the step and its samples and keeps
the last good checkpoint; ``skip`` drops the step, records it, and stops after N in a row (stages 1 and 2)."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from fault_runs import stage2_command
from harness import PYTHON, json_of, run_once

import anomaly_ov.training.expert as stage1
from anomaly_ov.training.nonfinite import NonFiniteError

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS_PER_EPOCH = 5  # 66 images, global batch 16


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN gradient: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _inject(monkeypatch, nan_loss_steps=(), nan_grad_steps=()):
    """Makes the stage-1 loss NaN (or its gradient NaN) at the given global steps (one micro-batch a step)."""
    real = stage1.balanced_bce_sum
    calls = {"n": 0}

    def loss(logits, labels, weights):
        calls["n"] += 1
        value = real(logits, labels, weights)
        if calls["n"] in nan_loss_steps:
            return value * float("nan")
        if calls["n"] in nan_grad_steps:
            return _NanGradient.apply(value)
        return value

    monkeypatch.setattr(stage1, "balanced_bce_sum", loss)


def _train(tiny_zoo, synthetic_data, out: Path, *extra: str) -> dict:
    from test_stage1 import _compose, _paths  # tests/integration (on sys.path through fault_runs)

    from anomaly_ov.recipes.train_expert import train_expert

    overrides = [
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        "trainer.fit.epochs=3",
        "trainer.fit.progress=false",
        "trainer.fit.keep_last_checkpoints=null",
        f"run_dir={out}/run",
        *_paths(out, tiny_zoo, synthetic_data.root),
        *extra,
    ]
    return train_expert(_compose("train_expert", overrides))


def _image_paths(message: str) -> list[str]:
    return message.split("Samples of the batch: ")[1].split(", ")


def test_stage1_stop_names_the_step_and_samples_and_keeps_the_last_good_checkpoint(
    tiny_zoo, synthetic_data, tmp_path, monkeypatch
):
    _inject(monkeypatch, nan_loss_steps={8})  # epoch 2, its 3rd step
    with pytest.raises(NonFiniteError, match=r"step 8: non-finite loss \(nan\)") as raised:
        _train(tiny_zoo, synthetic_data, tmp_path)
    message = str(raised.value)
    ids = _image_paths(message)
    assert len(ids) == 16 == len(set(ids)) and all(Path(i).is_file() for i in ids)
    assert all(Path(i).is_relative_to(synthetic_data.root) for i in ids)
    run = tmp_path / "run"
    assert "epoch_001" in message  # the last good checkpoint, named
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001"]
    assert not (run / "expert.safetensors").exists()


def test_stage1_skip_drops_the_step_and_stops_after_n_in_a_row(
    tiny_zoo, synthetic_data, tmp_path, monkeypatch
):
    _inject(monkeypatch, nan_loss_steps={4}, nan_grad_steps={11})
    metrics = _train(tiny_zoo, synthetic_data, tmp_path / "skip", "trainer.fit.nonfinite=skip")
    skipped = metrics["nonfinite_steps"]
    assert [s["step"] for s in skipped] == [4, 11]
    assert skipped[0]["loss"] is None and skipped[1]["loss"] > 0  # NaN loss; finite loss with NaN gradients
    assert all(len(s["sample_ids"]) == 16 for s in skipped)
    assert len(metrics["losses"]) == 3 * STEPS_PER_EPOCH - 2 and all(v == v for v in metrics["losses"])
    saved = json_of(tmp_path / "skip" / "run" / "train_metrics.json")
    assert saved["nonfinite_steps"] == skipped and Path(metrics["expert"]).is_file()

    monkeypatch.undo()
    _inject(monkeypatch, nan_loss_steps={6, 7})
    with pytest.raises(NonFiniteError, match="step 7: 2 non-finite steps in a row"):
        _train(
            tiny_zoo,
            synthetic_data,
            tmp_path / "diverged",
            "trainer.fit.nonfinite=skip",
            "trainer.fit.max_consecutive_nonfinite=2",
        )


_DRIVER = """
import sys
import torch
from anomaly_ov.offline import enforce_offline
enforce_offline()
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.inference.pipeline import compose_config
from anomaly_ov.recipes.finetune import finetune

forward, calls = AnomalyOV.forward, [0]
def poisoned(self, *args, **kwargs):
    output = forward(self, *args, **kwargs)
    if self.training and output.loss is not None:
        calls[0] += 1
        if calls[0] in {NAN_AT}:
            output.loss = output.loss * float("nan")
    return output
AnomalyOV.forward = poisoned
finetune(compose_config("finetune", sys.argv[1:]))
"""


def _stage2(tmp_path: Path, tiny_zoo, synthetic_data, nan_at: set[int], *extra: str):
    """Stage 2 on one process with the loss of the given forward calls made NaN (4 micro-batches a step:
    global batch 4, one sample per micro-batch)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(_DRIVER).replace("{NAN_AT}", repr(sorted(nan_at))))
    command = stage2_command(tmp_path, tiny_zoo, synthetic_data, "trainer.fit.save_every_n_steps=1", *extra)
    return run_once([PYTHON, str(driver), *command[2:]])


@pytest.mark.slow
def test_stage2_stop_and_skip(tiny_zoo, synthetic_data, tmp_path):
    stop = _stage2(tmp_path / "stop", tiny_zoo, synthetic_data, {6})  # a micro-batch of step 2
    assert stop.returncode != 0
    assert "step 2: non-finite loss (nan); the step was not applied" in stop.output, stop.output[-3000:]
    assert "step_0000001" in stop.output.split("step 2: non-finite")[1]  # the last good checkpoint, named
    named = stop.output.split("Samples of the batch: ")[1].splitlines()[0].split(", ")
    ids = {record["id"] for record in json.loads(synthetic_data.instruct_json.read_text())}
    assert len(named) == 4 and set(named) <= ids  # the 4 records of the global batch, by id
    run = tmp_path / "stop" / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001"]

    skip = _stage2(tmp_path / "skip", tiny_zoo, synthetic_data, {6}, "trainer.fit.nonfinite=skip")
    assert skip.returncode == 0, skip.output
    run = tmp_path / "skip" / "run"
    metrics = json_of(run / "train_metrics.json")
    assert [s["step"] for s in metrics["nonfinite_steps"]] == [2] and metrics["finished"]
    assert metrics["losses"][1] is None and all(
        v is not None for i, v in enumerate(metrics["losses"]) if i != 1
    )
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line.get("skipped")) for line in lines] == [
        (1, None),
        (2, "nonfinite"),
        (3, None),
        (4, None),
    ]
    assert len(lines[1]["sample_ids"]) == 4  # the global batch
