"""Questions about the processes of this host that any layer may ask (no imports from the package)."""

import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie, dead but not yet reaped, is not).

    Args:
        pid: The process id.

    Returns:
        False when no process has the id or it is a zombie; True otherwise (also for another user's
        process, and when ``/proc`` cannot tell).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
