"""README command 1 (scripts/demo.sh): the whole pipeline in a reduced form writes a complete report; a
failing step stops the demo with its error and leaves no report."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def _demo(outputs: Path, venv: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "ANOMALY_OV_OUTPUTS": str(outputs),
        "ANOMALY_OV_VENV": str(venv),
        "ANOMALY_OV_SKIP_SETUP": "1",
        "OMP_NUM_THREADS": "1",
        "ANOMALY_OV_DEMO_ZOO": "tiny",  # the toy zoo's demo (the real zoo's: test_real_demo.py)
        **env,
    }
    return subprocess.run(
        ["bash", str(PROJECT / "scripts" / "demo.sh")],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def _numbers(row: str) -> list[float]:
    return [float(cell) for cell in re.findall(r"(?<=\| )-?\d+\.\d+(?= \|)", row)]


def test_failed_step_stops_the_demo_and_leaves_no_report(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    broken = venv / "bin" / "python"
    broken.write_text("#!/bin/sh\necho 'synthetic step broke' >&2\nexit 3\n")
    broken.chmod(0o755)
    outputs = tmp_path / "outputs"
    (outputs / "report").mkdir(parents=True)
    (outputs / "report" / "index.md").write_text("an earlier run's report\n")
    done = _demo(outputs, venv)
    assert done.returncode == 3
    assert "synthetic step broke" in done.stderr
    assert "demo FAILED at step 1/11 (synthetic data); no report written" in done.stderr
    assert not (outputs / "report").exists()


@pytest.mark.slow  # twelve Python processes (two of them torchrun): minutes on 2 shared cores
def test_quick_demo_writes_a_complete_report(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    start = time.perf_counter()
    done = _demo(outputs, Path(sys.prefix), ANOMALY_OV_DEMO_QUICK="1")
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = outputs / "report"
    for name in ("index.md", "index.html", "training_curves.png", "roc.png"):
        assert (report / name).is_file(), name
    assert list((report / "heatmaps").glob("*.png"))
    text = (report / "index.md").read_text()
    for row_name in ("Tuned, with expert", "Tuned, without expert", "Untuned (tiny LLaVA-OV + expert)"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {row_name} |"))
        values = _numbers(row)
        assert len(values) >= 6 and all(0.0 <= v <= 1.0 for v in values), row  # Acc, P, R, F1, R-L, SBERT
    for group in ("training classes", "held-out classes"):
        row = next(line for line in text.splitlines() if line.startswith(f"| Tuned, with expert | {group}"))
        assert 0.0 <= _numbers(row)[0] <= 1.0, row
    stages = [line.split("\t")[0] for line in (outputs / "demo_timings.tsv").read_text().splitlines()]
    assert len(stages) == 11 and stages[0] == "synthetic data" and stages[-1] == "report"
    print(f"quick demo: {seconds:.0f} s")
