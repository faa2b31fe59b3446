"""Shared helpers of the stage-2 integration tests: run scripts/finetune.py as 1 or N CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def small_mixture(folder: Path, instruct_json: Path, strategy: str = "first:8") -> Path:
    """A mixture YAML over the synthetic instruct.json (the first 8 records by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mixture.yaml"
    path.write_text(f"datasets:\n  - json_path: {instruct_json}\n    sampling_strategy: '{strategy}'\n")
    return path


def overrides(out: Path, zoo, data, *extra: str) -> list[str]:
    """Tiny recipe on 8 synthetic records, global batch 4 for any process count, plain SGD (the update is
    the averaged gradient itself, so runs on 1 and 2 processes compare tightly), no LoRA dropout (ranks
    would draw the same masks for different samples), no tracker."""
    mixture = small_mixture(out / "data", data.instruct_json)
    return [
        f"paths.output_root={out}",
        f"paths.zoo_dir={zoo.root}",
        f"paths.synthetic_dir={data.root}",
        f"data.mixture={mixture}",
        f"data.image_root={data.root}",
        "trainer.accelerator.global_batch_size=4",
        "trainer.fit.epochs=2",
        "trainer.fit.progress=false",
        "optimizer._target_=torch.optim.SGD",
        "~optimizer.betas",
        "optimizer.lr=0.5",
        "model.lora.dropout=0.0",
        "logger=none",
        *extra,
    ]


def run_finetune(run_dir: Path, arguments: list[str], processes: int = 1, timeout: int = 240) -> dict:
    """Runs scripts/finetune.py (``torchrun`` for several processes) and returns its train_metrics.json."""
    script = str(PROJECT / "scripts" / "finetune.py")
    if processes == 1:
        command = [sys.executable, script]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            script,
        ]
    command += [*arguments, f"run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return json.loads((run_dir / "train_metrics.json").read_text())


def logged(run_dir: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


_REFERENCES: dict[tuple[str, str], tuple[Path, dict]] = {}


def reference_run(zoo, data, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted 1-process ZeRO-2 run of :func:`overrides` (run once per test session)."""
    key = (str(zoo.root), str(data.root))
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp("finetune_reference")
        run_dir = out / "run"
        _REFERENCES[key] = (run_dir, run_finetune(run_dir, overrides(out, zoo, data)))
    return _REFERENCES[key]
