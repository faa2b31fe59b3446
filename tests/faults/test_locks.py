"""Two runs writing the same folder: the second is refused while the first holds ``run.lock``; a lock left
by a dead process (or a reused process id) is taken over; a run that ended leaves the folder free."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly_ov.inference.pipeline import compose_config
from anomaly_ov.run_lock import LOCK_NAME, RunLock, RunLockedError, lock_run_folder

PROJECT = Path(__file__).resolve().parents[2]
_HOLDER = (
    "import sys\n"
    "from anomaly_ov.run_lock import RunLock\n"
    "lock = RunLock.acquire(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
    "lock.release()\n"
)


class Holder:
    """Another live process that holds ``folder``'s lock until it is told to stop (or killed)."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
        )
        assert self.process.stdout.readline().strip() == "held"

    def end(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup, the lock file stays behind
        self.process.wait(timeout=30)


@pytest.fixture
def holder(tmp_path):
    holders = []

    def start(folder: Path) -> Holder:
        holders.append(Holder(folder))
        return holders[-1]

    yield start
    for item in holders:
        if item.process.poll() is None:
            item.kill()


def test_a_held_folder_is_refused_naming_the_owner(tmp_path, holder):
    first = holder(tmp_path / "run")
    with pytest.raises(RunLockedError) as refused:
        RunLock.acquire(tmp_path / "run")
    message = str(refused.value)
    assert str(tmp_path / "run" / LOCK_NAME) in message
    assert f"process {first.process.pid}" in message and socket.gethostname() in message
    # the owner's record is untouched by the refused run
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == first.process.pid


def test_the_folder_is_free_once_its_run_has_ended(tmp_path, holder):
    holder(tmp_path / "run").end()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    lock = RunLock.acquire(tmp_path / "run")
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, holder, caplog):
    killed = holder(tmp_path / "run")
    killed.kill()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == killed.process.pid
    lock = RunLock.acquire(tmp_path / "run")
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"process {killed.process.pid}, which has ended" in caplog.text
    lock.release()


def test_a_reused_process_id_does_not_keep_a_stale_lock(tmp_path):
    # the pid is alive (this test's parent), but it is not the process that wrote the lock
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"host": socket.gethostname(), "pid": os.getppid(), "process_start": "1", "started": "then"}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    lock = RunLock.acquire(folder)
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_of_another_host_is_refused_with_what_to_do(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "then"}))
    with pytest.raises(RunLockedError, match=r"process 4242 on host node-17.*delete the lock file"):
        RunLock.acquire(folder)


def test_a_half_written_lock_file_is_stale(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text('{"host": "x", "pi')  # its writer was killed mid-write
    RunLock.acquire(folder).release()


def test_only_the_main_process_takes_the_lock_and_every_rank_learns_a_refusal(tmp_path, holder):
    # rank 1 of a 2-process run: takes nothing, and raises when rank 0's broadcast carries a refusal
    assert lock_run_folder(tmp_path / "free", is_main_process=False, broadcast=lambda values: values) is None
    assert not (tmp_path / "free" / LOCK_NAME).exists()
    refusal = ["run.lock: the folder is held by a live run (process 1)"]
    with pytest.raises(RunLockedError, match="held by a live run"):
        lock_run_folder(tmp_path / "free", is_main_process=False, broadcast=lambda _: refusal)
    holder(tmp_path / "held")
    with pytest.raises(RunLockedError):
        lock_run_folder(tmp_path / "held", is_main_process=True, broadcast=lambda values: values)


def _paths(tmp_path: Path) -> list[str]:
    return [
        f"paths.output_root={tmp_path}",
        f"paths.zoo_dir={tmp_path}/zoo",
        f"paths.synthetic_dir={tmp_path}",
    ]


def test_stage1_and_the_evaluations_refuse_a_folder_another_run_holds(tmp_path, holder):
    from anomaly_ov.recipes.eval_benchmark import eval_benchmark
    from anomaly_ov.recipes.eval_zsad import eval_zsad
    from anomaly_ov.recipes.train_expert import train_expert

    run_dir = tmp_path / "stage1"
    holder(run_dir)
    with pytest.raises(RunLockedError, match="held by a live run"):
        train_expert(compose_config("train_expert", ["debug=tiny", f"run_dir={run_dir}", *_paths(tmp_path)]))
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written

    zsad_out = tmp_path / "eval" / "zsad"
    holder(zsad_out)
    cfg = compose_config(
        "eval_zsad", ["model.expert.checkpoint=/none.safetensors", "output_name=zsad", *_paths(tmp_path)]
    )
    with pytest.raises(RunLockedError, match="held by a live run"):
        eval_zsad(cfg)
    assert sorted(p.name for p in zsad_out.iterdir()) == [LOCK_NAME]

    bench_out = tmp_path / "bench"
    holder(bench_out)
    cfg = compose_config(
        "eval_benchmark",
        [f"out_dir={bench_out}", "benchmark=synthetic_visa_dr", "cpu=true", *_paths(tmp_path)],
    )
    with pytest.raises(RunLockedError, match="held by a live run"):
        eval_benchmark(cfg)
    assert sorted(p.name for p in bench_out.iterdir()) == [LOCK_NAME]


@pytest.mark.slow  # ~55 s on 2 cores: three processes import DeepSpeed and transformers
@pytest.mark.multiprocess
def test_stage2_on_two_processes_refuses_a_held_run_dir_on_every_rank(tmp_path, holder):
    run_dir = tmp_path / "stage2"
    holder(run_dir)
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(PROJECT / "scripts" / "finetune.py"),
            f"run_dir={run_dir}",
            *_paths(tmp_path),
        ],
        cwd=PROJECT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT), "DS_ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode != 0
    assert "RunLockedError" in done.stderr and "held by a live run" in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # no config, no checkpoint
    assert time.perf_counter() - start < 120  # refused, not hung in a collective
