import subprocess
import sys

from anomaly_ov import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_every_command_module_has_cli_main():
    import importlib

    for module_name, _ in cli.COMMANDS.values():
        module = importlib.import_module(module_name)
        assert callable(module.cli_main), module_name


def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "anomaly_ov.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "make-synthetic" in result.stdout
