import os
import subprocess
import sys
import time
from pathlib import Path

from anomaly_ov.processes import process_alive


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_running_process_is_alive_a_zombie_and_a_reaped_one_are_not():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert process_alive(child.pid)  # it waits for its input
    child.stdin.close()
    deadline = time.monotonic() + 30
    while _state(child.pid) != "Z":  # finished, not yet reaped: a zombie until wait() collects it
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)


def test_this_process_is_alive():
    assert process_alive(os.getpid())
