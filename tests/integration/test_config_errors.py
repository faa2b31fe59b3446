"""A config typo at any entrypoint gets Hydra's message and a non-zero exit, never a Python traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HYDRA_SCRIPTS = ["scripts/train_expert.py", "scripts/eval_zsad.py"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", HYDRA_SCRIPTS)
def test_unknown_group_option_lists_the_available_ones(script):
    result = _run([script, "model/expert=tinny"])
    assert result.returncode != 0
    assert "Could not find 'model/expert/tinny'" in result.stderr
    assert "Available options in 'model/expert'" in result.stderr and "tiny" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_names_the_key():
    result = _run(["scripts/train_expert.py", "trainer.fit.epoch=3"])
    assert result.returncode != 0
    assert "trainer.fit.epoch" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluating_without_a_run_or_a_checkpoint_stops_before_any_table(tmp_path):
    result = _run(["scripts/eval_zsad.py", "debug=tiny", f"paths.output_root={tmp_path}"])
    assert result.returncode != 0
    assert "MissingMandatoryValue: eval_zsad needs weights to evaluate: run_dir=<a train_expert run>" in (
        result.stderr
    )
    assert not (tmp_path / "eval").exists()  # no metrics or table of a random expert


@pytest.mark.parametrize("command", ["predict", "chat"])
def test_cli_override_typo_is_reported(command, tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    args = (
        ["--images", str(image), "--out", str(tmp_path / "out")]
        if command == "predict"
        else ["--image", str(image)]
    )
    result = _run(["-m", "anomaly_ov.cli", command, *args, "--config-overrides", "model/expert=tinny"])
    assert result.returncode == 2
    assert f"{command}: config '{command}'" in result.stderr
    assert "Could not find 'model/expert/tinny'" in result.stderr
    assert "Traceback" not in result.stderr
