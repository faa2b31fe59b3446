"""Nothing reaches the network: the offline switches are set before any hub client is imported, and a
hub load under them fails without a single connection attempt."""

import os
import subprocess
import sys
import textwrap

from anomaly_ov.offline import OFFLINE_ENV, enforce_offline

# Records every DNS lookup and connection a child process attempts (and refuses them).
SOCKET_GUARD = """
import socket
ATTEMPTS = []
def _refuse(kind):
    def refuse(*args, **kwargs):
        ATTEMPTS.append(kind)
        # not an OSError: the hub client would retry that with back-off for half a minute
        raise RuntimeError(f"network refused by the test ({kind})")
    return refuse
socket.getaddrinfo = _refuse("getaddrinfo")
socket.socket.connect = _refuse("connect")
socket.create_connection = _refuse("create_connection")
"""


def _python(code: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    clean.update(HF_HOME=str(tmp_path / "hf_home"), **env)  # an empty cache: nothing to fall back on
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_hub_load_fails_without_touching_the_network(tmp_path):
    code = (
        SOCKET_GUARD
        + """
from anomaly_ov.offline import enforce_offline
enforce_offline()
import transformers
try:
    transformers.AutoConfig.from_pretrained("anomaly-ov-test/not-a-model")
except OSError as err:
    print("raised:", type(err).__name__)
print("attempts:", ATTEMPTS)
"""
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "raised: OSError" in done.stdout
    assert "attempts: []" in done.stdout, done.stdout


def test_without_the_switches_the_same_load_would_try_the_network(tmp_path):
    # The control for the test above: the guard does see a hub client's connection attempt.
    code = (
        SOCKET_GUARD
        + """
import transformers
try:
    transformers.AutoConfig.from_pretrained("anomaly-ov-test/not-a-model")
except Exception:
    pass
print("attempted:", bool(ATTEMPTS))
"""
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attempted: True" in done.stdout


def test_the_cli_goes_offline_before_a_command_imports_transformers(tmp_path):
    # A stand-in command module that imports transformers; an import hook notes HF_HUB_OFFLINE then.
    (tmp_path / "probe_command.py").write_text("import transformers\n\ndef cli_main(argv):\n    return 0\n")
    code = """
import os, sys
from importlib.abc import MetaPathFinder
SEEN = []
class Spy(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" and not SEEN:
            SEEN.append(os.environ.get("HF_HUB_OFFLINE"))
        return None
sys.meta_path.insert(0, Spy())
from anomaly_ov import cli
cli.COMMANDS["probe"] = ("probe_command", "imports transformers")
assert cli.main(["probe"]) == 0
print("transformers imported with HF_HUB_OFFLINE =", SEEN)
"""
    done = _python(code, tmp_path, PYTHONPATH=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "transformers imported with HF_HUB_OFFLINE = ['1']" in done.stdout, done.stdout


def test_enforce_offline_keeps_an_explicit_choice(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    enforce_offline()
    assert os.environ["WANDB_MODE"] == "disabled" and os.environ["HF_HUB_OFFLINE"] == "1"
