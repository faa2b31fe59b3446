"""The fault harness: run a command in its own process, kill it at points of its own progress, rerun it.

A command's progress is read from what it writes (optimizer steps in ``metrics.jsonl``, finished epochs,
rows of a JSON-lines result file, feature-cache shards, files of a dataset or a model zoo): a
:class:`Progress` counts it. :func:`kill_and_rerun` starts the command, kills its whole process group with
``SIGKILL`` (the command and any workers or torchrun children, as a dying node would) once the count reaches
the first kill point, starts it again on the same outputs and kills it at the next point, and finally lets
it finish. The test then compares the outputs with those of an uninterrupted run.

The kill points are drawn from the uninterrupted run's final count with a seeded generator:
``FAULT_K`` points (``FAULT_K_SLOW`` in the ``slow`` tests) and ``FAULT_SEED``, environment variables, so a
failure is replayed with the same points::

    FAULT_K=4 FAULT_SEED=7 pytest tests/faults -m "slow or not slow"
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def fault_k(slow: bool = False) -> int:
    """How many kill points a test uses: ``FAULT_K`` (default 1), ``FAULT_K_SLOW`` for slow tests (4)."""
    return int(os.environ.get("FAULT_K_SLOW" if slow else "FAULT_K", "4" if slow else "1"))


def fault_seed() -> int:
    """The seed of the kill points: ``FAULT_SEED`` (default 0)."""
    return int(os.environ.get("FAULT_SEED", "0"))


def kill_points(total: int, k: int, seed: int, low: int = 1) -> list[int]:
    """``k`` distinct increasing progress counts in ``[low, total - 1]`` (fewer if the range is smaller)."""
    candidates = np.arange(low, total)
    if len(candidates) == 0:
        raise ValueError(f"a run with final progress {total} has no point to kill it at (from {low}).")
    chosen = np.random.default_rng(seed).choice(candidates, size=min(k, len(candidates)), replace=False)
    return sorted(int(c) for c in chosen)


@dataclass
class Progress:
    """A count of what a command has written so far (monotone over the command's reruns).

    Attributes:
        name: What is counted ("steps", "rows", "shards", ...).
        count: Reads the count now.
    """

    name: str
    count: Callable[[], int]


def lines_of(*paths: Path, name: str = "rows") -> Progress:
    """Complete lines in JSON-lines files (globs allowed in the file name)."""

    def count() -> int:
        total = 0
        for path in paths:
            for file in path.parent.glob(path.name) if path.parent.is_dir() else []:
                with contextlib.suppress(OSError):  # a file replaced while it was read
                    total += file.read_bytes().count(b"\n")
        return total

    return Progress(name, count)


def files_under(folder: Path, pattern: str = "*", name: str = "files") -> Progress:
    """Files under a folder whose name matches ``pattern``, temporary ones left out."""

    def count() -> int:
        if not folder.is_dir():
            return 0
        try:
            return sum(1 for p in folder.rglob(pattern) if ".tmp" not in str(p.relative_to(folder)))
        except OSError:  # a folder renamed while it was walked
            return count()

    return Progress(name, count)


def stage1_epochs(run_dir: Path) -> Progress:
    """Finished epochs of a stage-1 run: the newest ``checkpoints/epoch_<N>`` (pruning keeps the newest)."""
    pattern = re.compile(r"^epoch_(\d+)$")

    def count() -> int:
        folder = run_dir / "checkpoints"
        try:
            return max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0)
        except OSError:
            return 0

    return Progress("epochs", count)


def total(*parts: Progress) -> Progress:
    """The sum of several counts (e.g. cache shards, then epochs)."""
    return Progress("+".join(p.name for p in parts), lambda: sum(p.count() for p in parts))


def environment(**extra: str) -> dict[str, str]:
    """The environment of a command under test: offline, one thread, the project importable, CPU DeepSpeed."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(PROJECT),
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }


@dataclass
class Invocation:
    """One start of the command.

    Attributes:
        kill_at: The progress count it was to be killed at (None: let it finish).
        killed_at: The count read when the kill was sent (None: it ended by itself first).
        returncode: Its exit status (``-9`` when killed).
        seconds: Its wall time.
        output: The tail of its stdout and stderr.
    """

    kill_at: int | None
    killed_at: int | None
    returncode: int
    seconds: float
    output: str = ""


@dataclass
class FaultRun:
    """All invocations of one command under :func:`kill_and_rerun`."""

    command: list[str]
    progress: str
    invocations: list[Invocation] = field(default_factory=list)

    @property
    def kills(self) -> list[int]:
        """The progress counts at which a kill landed."""
        return [i.killed_at for i in self.invocations if i.killed_at is not None]

    def summary(self) -> str:
        """One line for the test log: the points planned and where the kills landed."""
        planned = [i.kill_at for i in self.invocations if i.kill_at is not None]
        final = self.final.returncode
        return f"{self.progress}: kill points {planned}, killed at {self.kills}, final rc {final}"

    @property
    def final(self) -> Invocation:
        """The last invocation (the one that ran to the end)."""
        return self.invocations[-1]


def start(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path = PROJECT) -> subprocess.Popen:
    """Starts ``command`` in a process group of its own (so that a kill reaches its children too)."""
    return subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env or environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_once(
    command: Sequence[str],
    progress: Progress | None = None,
    kill_at: int | None = None,
    sig: int = signal.SIGKILL,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    poll_s: float = 0.005,
) -> Invocation:
    """Runs ``command``; with ``kill_at``, sends ``sig`` to its process group once ``progress`` reaches it.

    ``SIGKILL`` goes to the whole group (a dying node); another signal (``SIGTERM``, ``SIGUSR1``, ``SIGINT``)
    goes to the group as well, as SLURM and a terminal's Ctrl-C send it to every process of the job.
    """
    began = time.perf_counter()
    process = start(command, env)
    killed_at = None
    # the pipe is read only at the end: keep it from filling by reading it in the background
    reader: list[bytes] = []
    thread = threading.Thread(target=lambda: reader.append(process.stdout.read()), daemon=True)
    thread.start()
    while process.poll() is None:
        if kill_at is not None and killed_at is None and (now := progress.count()) >= kill_at:
            killed_at = now
            os.killpg(process.pid, sig)
        if time.perf_counter() - began > timeout:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            thread.join(5)
            raise TimeoutError(f"{command} ran past {timeout} s:\n{b''.join(reader).decode()[-4000:]}")
        time.sleep(poll_s)
    thread.join(30)
    if sig == signal.SIGKILL and killed_at is not None:
        # children of the group (torchrun's workers) may outlive the leader for an instant
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    output = b"".join(reader).decode(errors="replace")[-6000:]
    return Invocation(kill_at, killed_at, process.returncode, time.perf_counter() - began, output)


def kill_and_rerun(
    command: Sequence[str],
    progress: Progress,
    points: Sequence[int],
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> FaultRun:
    """Kills ``command`` at each point of ``points`` in turn (one invocation each), then runs it to the end.

    A point the command passes before it can be killed still counts as a kill at the count read then; an
    invocation that ends by itself before its point (nothing left to do) ends the sequence.
    """
    run = FaultRun(list(command), progress.name)
    for point in points:
        invocation = run_once(command, progress, point, env=env, timeout=timeout)
        run.invocations.append(invocation)
        if invocation.killed_at is None:
            return run
    run.invocations.append(run_once(command, env=env, timeout=timeout))
    print(run.summary())
    return run


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under a folder by relative path (the bytes), for comparing two output trees."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def differing_files(a: Path, b: Path, ignore: Callable[[str], bool] = lambda _: False) -> list[str]:
    """Relative paths whose bytes differ between two trees, or that exist in one only."""
    left = {k: v for k, v in files_of(a).items() if not ignore(k)}
    right = {k: v for k, v in files_of(b).items() if not ignore(k)}
    return sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))


def json_of(path: Path) -> object:
    """A JSON document."""
    return json.loads(path.read_text(encoding="utf-8"))


def without(document: dict, *keys: str) -> dict:
    """A JSON object without run-specific keys (wall times, paths of the run folder)."""
    return {k: v for k, v in document.items() if k not in keys}


def same_safetensors(a: Path, b: Path) -> bool:
    """Two safetensors files hold the same tensors (bit for bit) and the same metadata.

    Not their bytes: safetensors writes the metadata from a hash map, in an order that differs between
    processes.
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as left, safe_open(str(b), "pt") as right:
        if left.metadata() != right.metadata() or sorted(left.keys()) != sorted(right.keys()):
            return False
        return all(torch.equal(left.get_tensor(k), right.get_tensor(k)) for k in left.keys())  # noqa: SIM118
