"""One run per folder: the lock file a run holds on its ``run_dir`` / ``out_dir`` while it writes there.

Two runs writing the same folder (the same ``run_dir`` of stage 1 or stage 2, the same ``out_dir`` of an
evaluation, started twice by mistake or by a requeue while the first is still alive) would interleave
checkpoints and result lines. The first run creates ``<folder>/run.lock`` (with ``O_EXCL``: one creator
wins) holding its host, process id and the process's start time; a second run finds it and is refused
with a message naming the owner. A lock whose owner is dead -- a process of this host that no longer
exists, or whose id now belongs to a process started later (a reused id) -- is stale: it is taken over. A
lock of another host cannot be checked from here; it is refused, and the message says how to remove it.

The lock is released when the run ends (:meth:`RunLock.release`, also at interpreter exit); a killed run
leaves it behind, which the next run of the same folder detects as stale. A lock held by the calling
process itself (a second run in the same interpreter after one that raised) is taken over as well.

In a multi-process run only the main process takes the lock (:func:`lock_run_folder`); the others learn
the outcome from it, so every rank of a refused run stops.
"""

import atexit
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """The folder is held by another live run (the message names the lock file, host and process)."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return stat[stat.rfind(")") + 2 :].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is a live process of this host that is the one which wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    current = _process_start(pid)
    return start is None or current is None or current == start


class RunLock:
    """The lock file of one folder, held by this process.

    Args:
        path: The lock file (``<folder>/run.lock``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._owner = _owner_record()
        atexit.register(self.release)

    @classmethod
    def acquire(cls, folder: str | Path) -> "RunLock":
        """Takes the lock of ``folder`` (created if needed), taking over a stale one.

        Raises:
            RunLockedError: If another live process (or a process of another host) holds it.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        for _ in range(20):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                _take_over_if_stale(path)
                continue
            lock = cls(path)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(lock._owner) + "\n")
            return lock
        raise RunLockedError(f"{path}: could not take the lock (it keeps changing hands).")

    def release(self) -> None:
        """Removes the lock file if it is still this process's (idempotent)."""
        atexit.unregister(self.release)
        if _read_owner(self.path) == self._owner:
            self.path.unlink(missing_ok=True)


def _owner_record() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _read_owner(path: Path) -> dict[str, object] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or cut short (a writer killed between create and write)
    return owner if isinstance(owner, dict) else {}


def _take_over_if_stale(path: Path) -> None:
    """Removes ``path`` if its owner is dead (or is this process); raises if a live run holds it."""
    owner = _read_owner(path)
    if owner is None:
        return  # released meanwhile
    if not owner:
        # a lock without a readable owner: the creator may be writing it right now; give it a moment
        time.sleep(0.2)
        if _read_owner(path) == owner:
            _remove_stale(path, "an unreadable lock file")
        return
    host, pid = owner.get("host"), owner.get("pid")
    if host != socket.gethostname():
        raise RunLockedError(
            f"{path}: the folder is held by process {pid} on host {host} (since {owner.get('started')}); "
            "two runs must not write the same folder. If no run is alive there, delete the lock file."
        )
    if not isinstance(pid, int):
        _remove_stale(path, "a lock file without a process id")
        return
    if pid == os.getpid() or not _alive(pid, owner.get("process_start")):
        _remove_stale(path, f"the lock of process {pid}, which has ended")
        return
    raise RunLockedError(
        f"{path}: the folder is held by a live run (process {pid} on {host}, since {owner.get('started')}); "
        "two runs must not write the same folder. Wait for it to end, or choose another folder."
    )


def _remove_stale(path: Path, what: str) -> None:
    # renaming first: of two processes taking over the same stale lock, only one moves it away
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    aside.unlink(missing_ok=True)
    logger.warning("%s: took over %s", path, what)


def lock_run_folder(
    folder: str | Path,
    is_main_process: bool = True,
    broadcast: Callable[[list], list] | None = None,
    teardown: Callable[[], None] | None = None,
) -> RunLock | None:
    """Takes ``folder``'s lock on the main process; on every process, raises if it is held elsewhere.

    Args:
        folder: The run's output folder.
        is_main_process: Whether this process takes the lock (rank 0).
        broadcast: Hands rank 0's list to every rank (``accelerate.utils.broadcast_object_list``); None in
            a single-process run.
        teardown: Called on every rank before a refusal is raised (e.g. destroys the process group, so
            that no rank hangs at exit in the group's teardown).

    Returns:
        The lock on the main process (release it when the run ends), None on the others.

    Raises:
        RunLockedError: If another live run holds the folder (on every rank).
    """
    lock, refusal = None, [None]
    if is_main_process:
        try:
            lock = RunLock.acquire(folder)
        except RunLockedError as error:
            refusal = [str(error)]
    if broadcast is not None:
        refusal = broadcast(refusal)
    if refusal[0] is not None:
        if teardown is not None:
            teardown()
        raise RunLockedError(refusal[0])
    return lock
