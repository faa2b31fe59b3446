"""Preemption: a signal asks a training run to stop at the next step boundary with a checkpoint.

A cluster scheduler warns before it kills: SLURM sends ``SIGTERM`` (preemption, ``scancel``) or the signal
of ``--signal`` (``SIGUSR1`` in ``scripts/launch/finetune_slurm.sbatch``) some time ahead; on a workstation
the user presses Ctrl-C (``SIGINT``). :class:`PreemptionGuard` records such a signal instead of dying; the
training loops (stage 1 and stage 2) ask it after every optimizer step whether any rank was signalled, write
a checkpoint, mark the run folder with :data:`MARKER` and end; the entrypoint then exits with
:data:`PREEMPTED_EXIT_CODE`, and the SLURM script requeues the job. Rerunning the same command with the same
``run_dir`` resumes from that checkpoint exactly. A second Ctrl-C interrupts at once (``KeyboardInterrupt``).
"""

import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h ("try again later"): the run stopped cleanly with a checkpoint and wants a rerun.
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
MARKER = "preempted.json"


class PreemptionGuard:
    """Catches :data:`PREEMPTION_SIGNALS` while a training loop runs (a context manager).

    Handlers are installed only in the main thread (Python allows no other) and restored on exit.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal_name is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signal_name = signal.Signals(signum).name
        # stderr, not the logger: a handler may run inside a logging call
        os.write(2, f"\n{self.signal_name} received: stopping at the next step boundary\n".encode())

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPTION_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any rank was signalled (a collective: every rank must call it at the same step)."""
        local = self.signal_name is not None
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor([float(local)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def ignore_in_worker(_worker_id: int) -> None:
    """``worker_init_fn`` of the training loaders: workers ignore the preemption signals.

    SLURM and a terminal's Ctrl-C signal every process of the job, data-loader workers included; a worker
    that died of it would fail the step the main process is finishing for its checkpoint.
    """
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def write_marker(run_dir: Path, signal_name: str | None, step: int, checkpoint: Path) -> None:
    """Marks ``run_dir`` as stopped by a signal (read by the SLURM script; removed when the run resumes)."""
    record = {
        "signal": signal_name or "another rank's signal",
        "step": step,
        "checkpoint": str(checkpoint),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "exit_code": PREEMPTED_EXIT_CODE,
    }
    (run_dir / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.warning(
        "stopped at step %d by %s; checkpoint %s; rerun the same command with run_dir=%s to continue "
        "(exit code %d)",
        step,
        record["signal"],
        checkpoint,
        run_dir,
        PREEMPTED_EXIT_CODE,
    )


def clear_marker(run_dir: Path) -> None:
    """Removes the mark of an earlier stop (the run is continuing)."""
    (run_dir / MARKER).unlink(missing_ok=True)
