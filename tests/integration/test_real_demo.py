"""README command 1 on the real zoo (scripts/demo.sh with ANOMALY_OV_DEMO_ZOO=real), reduced
(ANOMALY_OV_DEMO_QUICK=1): the report holds numbers for every model and every image set.

Marked ``real`` (it builds or reuses the real zoo: ANOMALY_OV_REAL_ZOO names a kept zoo folder, as for
tests/real) and ``slow`` (stage 1 on DINOv2 features, two stage-2 runs of SmolLM2 under torchrun, the
evaluations: minutes on 2 cores).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
MODELS = ("Tuned, with expert", "Tuned, without expert", "Untuned (real-zoo LLaVA-OV + expert)")
GROUPS = ("training classes", "held-out classes", "ELPV")


def _numbers(row: str) -> list[float]:
    return [float(cell) for cell in re.findall(r"(?<=\| )-?\d+\.\d+(?= \|)", row)]


def _row(text: str, start: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| {start}")]
    assert rows, f"no report row starts with {start!r}"
    return rows[0]


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, float]:
    """One reduced real demo run for the module's tests: (outputs folder, the finished process, seconds)."""
    outputs = tmp_path_factory.mktemp("real_demo") / "outputs"
    outputs.mkdir()
    kept = os.environ.get("ANOMALY_OV_REAL_ZOO")
    if kept and Path(kept).is_dir():  # a complete zoo is reused by make-real-zoo, not rebuilt
        (outputs / "real_zoo").symlink_to(Path(kept).resolve(), target_is_directory=True)
    environment = {
        **os.environ,
        "ANOMALY_OV_OUTPUTS": str(outputs),
        "ANOMALY_OV_VENV": sys.prefix,
        "ANOMALY_OV_SKIP_SETUP": "1",
        "ANOMALY_OV_DEMO_QUICK": "1",
        "ANOMALY_OV_DEMO_ZOO": "real",
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", str(PROJECT / "scripts" / "demo.sh")],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return outputs, done, time.perf_counter() - start


@pytest.mark.real
@pytest.mark.slow
def test_reduced_real_demo_reports_stage2_numbers(real_demo) -> None:
    outputs, done, seconds = real_demo
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = outputs / "report"
    text = (report / "index.md").read_text()
    assert "real offline parts" in text and "SmolLM2-135M-Instruct" in text
    # Table 4 layout: detection Acc, P, R, F1 and reasoning ROUGE-L, SBERT for each model
    for model in MODELS:
        values = _numbers(_row(text, f"{model} |"))
        assert len(values) >= 6 and all(0.0 <= v <= 1.0 for v in values), model
    # the fast path on every image set: Acc, P, R, F1, AUROC of each model and of the expert alone
    for group in GROUPS:
        for model in (*MODELS, "Expert alone, score >= 0.5"):
            values = _numbers(_row(text, f"{model} | {group}"))
            assert len(values) == 5 and all(0.0 <= v <= 1.0 for v in values), (model, group)
    # the tuned models were trained with LoRA under ZeRO-2 on 2 processes, and the report says so
    assert "ZeRO-2" in text and "LoRA rank 64" in text
    # sample conversations: each model's replies to the same questions, with the image and its heat map
    section = text.split("## Sample conversations", 1)[1]
    for model in MODELS:
        assert f"  - {model}: '" in section, model
    assert 'alt="expert heat map' in section
    # Table 2's ELPV row (all / mono / poly cells) beside the darkness baseline, and the pretrained tower
    # against the random one of the same architecture (held-out synthetic classes, ELPV): numbers, not dashes
    ours = re.search(r"\| \*\*Ours[^|]*\*\* \| \*\*([0-9.]+)\*\* \| ([0-9.]+) \| ([0-9.]+) \|", text)
    darkness = re.search(r"\| darkness baseline [^|]*\| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", text)
    assert ours and darkness, text.split("## Zero-shot on real data", 1)[-1][:2000]
    assert all(0.0 <= float(v) <= 100.0 for v in (*ours.groups(), *darkness.groups()))
    for tower in ("pretrained DINOv2-S", "random DINOv2-S (same architecture)"):
        values = _numbers(_row(text, f"{tower} |"))
        assert len(values) == 2 and all(0.0 <= v <= 100.0 for v in values), tower
    assert "Gain from pretraining: " in text
    chat = (outputs / "demo_chat.txt").read_text()
    assert "the untuned model" in chat
    stages = [line.split("\t")[0] for line in (outputs / "demo_timings.tsv").read_text().splitlines()]
    assert stages[-1] == "report" and any(stage.startswith("stage 2: LoRA") for stage in stages)
    print(f"reduced real demo: {seconds:.0f} s")
