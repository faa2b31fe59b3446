"""Preemption: SIGTERM / SIGUSR1 / SIGINT mid-run -> a checkpoint at the next step, exit code 75, a mark
in the run folder; the rerun resumes and ends with the uninterrupted run's losses and weights.

The signal goes to the command's whole process group, as SLURM (``scancel``, preemption, ``--signal``) and a
terminal's Ctrl-C deliver it to every process of the job (torchrun and its workers alike).
"""

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fault_runs import reference, stage1_command, stage2_command
from harness import PROJECT, json_of, lines_of, run_once, same_safetensors, stage1_epochs

from anomaly_ov.data.feature_cache import collate_features
from anomaly_ov.training.preemption import MARKER, PREEMPTED_EXIT_CODE


def _stage1(tiny_zoo, synthetic_data, out, *extra, processes=1):
    return stage1_command(out, tiny_zoo, synthetic_data, *extra, processes=processes)


def _assert_stopped_by(run_dir: Path, invocation, name: str) -> dict:
    assert invocation.killed_at is not None, "the run ended before the signal was sent"
    assert invocation.returncode == PREEMPTED_EXIT_CODE, invocation.output
    mark = json_of(run_dir / MARKER)
    assert mark["signal"] == name and mark["exit_code"] == PREEMPTED_EXIT_CODE
    assert Path(mark["checkpoint"]).is_dir()
    metrics = json_of(run_dir / "train_metrics.json")
    assert metrics["preempted"] == name
    return mark


@pytest.mark.parametrize(
    "name",
    [
        "SIGTERM",
        pytest.param("SIGUSR1", marks=pytest.mark.slow),
        pytest.param("SIGINT", marks=pytest.mark.slow),
    ],
)
def test_stage1_signal_mid_run_checkpoints_and_the_rerun_ends_as_uninterrupted(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory, name
):
    expected = reference("stage1", partial(_stage1, tiny_zoo, synthetic_data), tmp_path_factory)
    out = tmp_path / "preempted"
    command = _stage1(tiny_zoo, synthetic_data, out)
    # the signal once the first epoch is done: the run stops at the next step, inside epoch 2
    stopped = run_once(command, stage1_epochs(out / "run"), 1, sig=getattr(signal, name))
    mark = _assert_stopped_by(out / "run", stopped, name)
    assert not (out / "run" / "expert.safetensors").exists()  # only a finished run writes the expert
    print(f"{name}: stopped at step {mark['step']} of 30, checkpoint {Path(mark['checkpoint']).name}")

    resumed = run_once(command)
    assert resumed.returncode == 0, resumed.output
    assert not (out / "run" / MARKER).exists()
    got, want = json_of(out / "run" / "train_metrics.json"), json_of(expected / "run" / "train_metrics.json")
    assert got["losses"] == want["losses"] and got["preempted"] is None
    assert same_safetensors(out / "run" / "expert.safetensors", expected / "run" / "expert.safetensors")


def _stage2_reference(tiny_zoo, synthetic_data, tmp_path_factory) -> dict:
    """The uninterrupted 1-process run (2 processes give its losses to 1e-5: tests/integration)."""

    def command(out: Path, *extra: str, processes: int = 1) -> list[str]:
        return stage2_command(out, tiny_zoo, synthetic_data, *extra, processes=processes)

    out = reference("stage2", command, tmp_path_factory)
    return json_of(out / "run" / "train_metrics.json")


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_stage2_sigterm_mid_run_resumes_to_the_same_losses_on_the_same_process_count(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory, processes
):
    want = _stage2_reference(tiny_zoo, synthetic_data, tmp_path_factory)
    out = tmp_path / "preempted"
    extra = ["trainer.accelerator.bf16=false"] if processes > 1 else []
    command = stage2_command(out, tiny_zoo, synthetic_data, *extra, processes=processes)
    run_dir = out / "run"
    stopped = run_once(command, lines_of(run_dir / "metrics.jsonl", name="steps"), 1, sig=signal.SIGTERM)
    assert stopped.killed_at is not None
    if processes == 1:
        _assert_stopped_by(run_dir, stopped, "SIGTERM")
    else:
        # torchrun forwards the signal, and the workers exit 75; torchrun reports their exit as a failure
        assert stopped.returncode != 0 and json_of(run_dir / MARKER)["exit_code"] == PREEMPTED_EXIT_CODE
    mark = json_of(run_dir / MARKER)
    assert 1 <= mark["step"] < 4 and _steps(run_dir) == list(range(1, mark["step"] + 1))
    print(f"{processes} process(es): stopped at step {mark['step']} of 4, rc {stopped.returncode}")

    # on another process count the checkpoint is refused, naming both counts (deliverable 5)
    other = 2 if processes == 1 else 1
    other_extra = ["trainer.accelerator.bf16=false"] if other > 1 else []
    refused = run_once(stage2_command(out, tiny_zoo, synthetic_data, *other_extra, processes=other))
    assert refused.returncode != 0
    assert f"was written by {processes} processes; this run has {other}" in refused.output, refused.output[
        -3000:
    ]
    assert json_of(run_dir / MARKER)["step"] == mark["step"]  # the refused run changed nothing

    resumed = run_once(command)
    assert resumed.returncode == 0, resumed.output
    got = json_of(run_dir / "train_metrics.json")
    assert got["resumed_from_step"] == mark["step"] and got["finished"] and got["preempted"] is None
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-6 if processes == 1 else 1e-5)
    assert _steps(run_dir) == [1, 2, 3, 4] and not (run_dir / MARKER).exists()


def _fake_slurm(bin_dir: Path, srun_body: str) -> None:
    """``srun`` running ``srun_body`` and an ``scontrol`` that records its arguments (no SLURM here)."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/usr/bin/env bash\n{srun_body}\n")
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\nif [ "$1" = show ]; then echo node0; else echo "$@" >> "$SCONTROL_LOG"; fi\n'
    )
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)


@pytest.mark.parametrize("preempted", [True, False], ids=["marked", "failed"])
def test_slurm_script_requeues_a_run_stopped_at_a_checkpoint(tmp_path, preempted):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mark = f'echo \'{{"step": 3}}\' > "$RUN_DIR/{MARKER}"; ' if preempted else ""
    _fake_slurm(tmp_path / "bin", f"{mark}exit {PREEMPTED_EXIT_CODE if preempted else 3}")
    log = tmp_path / "scontrol.log"
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "RUN_DIR": str(run_dir),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node0",
        "SLURM_NNODES": "1",
        "SCONTROL_LOG": str(log),
    }
    script = PROJECT / "scripts" / "launch" / "finetune_slurm.sbatch"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    if preempted:
        assert done.returncode == 0 and log.read_text().split() == ["requeue", "4242"], (
            done.stdout + done.stderr
        )
        assert "requeueing job 4242" in done.stdout
    else:  # a failure is not requeued: the script ends with srun's status
        assert done.returncode == 3 and not log.exists()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_stage1_signal_inside_an_epoch_stops_at_the_next_step_and_resumes_exactly(tmp_path, name):
    """In one process, deterministically: the signal arrives during step 7 (epoch 2 of 3-step epochs)."""
    sys.path.insert(0, str(PROJECT / "tests" / "unit"))
    from test_train_expert import ToyFeatures, _expert, _fit, _trainer

    data = ToyFeatures(24)  # global batch 8: 3 steps an epoch
    reference = _fit(_trainer(tmp_path / "reference", 3, _expert()), data)

    calls = {"n": 0}

    def featurize(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th batch, inside epoch 2
            os.kill(os.getpid(), getattr(signal, name))
        return batch

    trainer = _trainer(tmp_path / "run", 3, _expert())
    stopped = trainer.fit(data, collate_features, featurize, data.labels)
    assert stopped.preempted == name and len(stopped.losses) == 5
    mark = json_of(tmp_path / "run" / MARKER)
    assert mark["step"] == 5 and Path(mark["checkpoint"]).name == "epoch_001_step_000002"
    assert not (tmp_path / "run" / "expert.safetensors").exists()

    resumed = _fit(_trainer(tmp_path / "run", 3, _expert(seed=1)), data)  # weights come from the checkpoint
    assert resumed.preempted is None and resumed.resumed_from_epoch == 1
    assert resumed.losses == reference.losses and resumed.epoch_losses == reference.epoch_losses
    assert same_safetensors(resumed.expert_path, reference.expert_path)
    assert not (tmp_path / "run" / MARKER).exists()
    # the mid-epoch checkpoint is superseded by the later epoch checkpoints
    assert not list((tmp_path / "run" / "checkpoints").glob("*_step_*"))
