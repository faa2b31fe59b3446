"""Data-parallel stage-1 training on 2 CPU processes (torchrun, gloo) equals the 1-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_stage1 import _compose, _paths  # same folder (pytest puts it on sys.path)

from anomaly_ov.recipes.train_expert import train_expert

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
def test_two_processes_train_the_same_expert_as_one(tiny_zoo, synthetic_data, tmp_path):
    # Plain SGD: the update is the averaged gradient itself, so the comparison is tight (Adam would
    # magnify the different float summation order of near-zero gradients).
    common = [
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        "trainer.fit.epochs=2",
        "features.shard_size=16",
        "optimizer._target_=torch.optim.SGD",
        "optimizer.lr=0.5",
    ]
    two = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(PROJECT / "scripts" / "train_expert.py"),
        *common,
        f"run_dir={two}/run",
        *_paths(two, tiny_zoo, synthetic_data.root),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    distributed = json.loads((two / "run" / "train_metrics.json").read_text())
    assert distributed["num_processes"] == 2 and distributed["num_samples"] == 66
    # progress is logged by the main process only (both inherit the same log file)
    assert (two / "run" / "train_expert.log").read_text().count("epoch 2/2: mean loss") == 1
    # the two processes shared the cache build: 66 images in shards of 16
    assert len(list((two / "cache").rglob("shard-*"))) == 5

    one = tmp_path / "one"
    single = train_expert(
        _compose("train_expert", [*common, f"run_dir={one}/run", *_paths(one, tiny_zoo, synthetic_data.root)])
    )
    assert single["num_processes"] == 1 and single["steps_per_epoch"] == distributed["steps_per_epoch"]
    np.testing.assert_allclose(distributed["losses"], single["losses"], rtol=1e-4)
    a, b = load_file(one / "run" / "expert.safetensors"), load_file(two / "run" / "expert.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
