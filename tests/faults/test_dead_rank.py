"""A rank that dies (SIGKILL) or hangs (SIGSTOP) in a 2-process run: the survivor ends within the
configured collective timeout, naming the dead rank and the last complete checkpoint.

The two ranks are started as a scheduler without torchrun would start them (``srun`` with one task per
rank, ``mpirun``): each process on its own with ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``,
so no agent kills the survivor for us -- only the training code can end it.
"""

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from fault_runs import stage1_command, stage2_command
from harness import environment, files_under, stage1_epochs, start

TIMEOUT_S = 20  # trainer.fit.collective_timeout_s of these runs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ranks(command: list[str]) -> list:
    port = str(_free_port())
    return [
        start(
            command,
            environment(
                RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
            ),
        )
        for r in range(2)
    ]


def _fault_one_rank(command: list[str], progress, sig: int, limit_s: float) -> tuple[float, int, str]:
    """Starts 2 ranks, sends ``sig`` to rank 1 once ``progress`` reaches 1; returns rank 0's time to end
    after the fault, its exit code and its output."""
    survivor, victim = _ranks(command)
    try:
        began = time.perf_counter()
        while progress.count() < 1:
            assert survivor.poll() is None and victim.poll() is None, "a rank ended before the fault"
            assert time.perf_counter() - began < 300, "no progress in 300 s"
            time.sleep(0.005)
        os.killpg(victim.pid, sig)
        faulted = time.perf_counter()
        if sig == signal.SIGKILL:
            victim.wait()  # reaped, as its launcher would
        output, _ = survivor.communicate(timeout=limit_s)
        return time.perf_counter() - faulted, survivor.returncode, output.decode(errors="replace")
    finally:
        for process in (survivor, victim):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _assert_named(output: str, run_dir: Path, gone: bool) -> None:
    assert "rank 0 of 2: a collective operation failed" in output, output[-3000:]
    if gone:
        assert re.search(r"rank 1 \(pid \d+ on [^)]+\) is gone", output), output[-3000:]
    checkpoint = re.search(r"the last complete checkpoint is (\S+);", output)
    assert checkpoint is not None, output[-3000:]
    assert Path(checkpoint.group(1)).parent == run_dir / "checkpoints" and Path(checkpoint.group(1)).is_dir()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_stage1_survivor_of_a_killed_rank_ends_naming_it(tiny_zoo, synthetic_data, tmp_path):
    command = stage1_command(
        tmp_path,
        tiny_zoo,
        synthetic_data,
        "trainer.fit.epochs=30",
        f"trainer.fit.collective_timeout_s={TIMEOUT_S}",
    )
    seconds, code, output = _fault_one_rank(
        command, stage1_epochs(tmp_path / "run"), signal.SIGKILL, 2 * TIMEOUT_S
    )
    print(f"stage 1: the survivor ended {seconds:.1f} s after rank 1 was killed (exit code {code})")
    assert code != 0 and seconds < TIMEOUT_S
    _assert_named(output, tmp_path / "run", gone=True)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_stage2_survivor_of_a_dead_or_hung_rank_ends_within_the_timeout(
    tiny_zoo, synthetic_data, tmp_path, sig
):
    command = stage2_command(
        tmp_path,
        tiny_zoo,
        synthetic_data,
        "trainer.accelerator.bf16=false",
        "trainer.fit.save_every_n_steps=1",
        f"trainer.fit.collective_timeout_s={TIMEOUT_S}",
    )
    # once a checkpoint is complete (its state file is written last), so the survivor has one to name
    progress = files_under(tmp_path / "run" / "checkpoints", "*state.json", name="checkpoints")
    seconds, code, output = _fault_one_rank(command, progress, sig, 3 * TIMEOUT_S)
    what = "killed" if sig == signal.SIGKILL else "stopped (SIGSTOP)"
    print(f"stage 2: the survivor ended {seconds:.1f} s after rank 1 was {what} (exit code {code})")
    assert code != 0
    # a dead peer closes its sockets (noticed at once); a hung one holds the survivor until the timeout
    assert seconds < (TIMEOUT_S if sig == signal.SIGKILL else TIMEOUT_S + 30)
    _assert_named(output, tmp_path / "run", gone=sig == signal.SIGKILL)
