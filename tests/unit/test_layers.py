"""The package's layering holds: import-linter's contracts in pyproject.toml ([tool.importlinter]) pass."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), f"{lint_imports} missing: install the dev extra (import-linter)"
    done = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "0 broken" in done.stdout, report


def test_the_contracts_cover_every_layer():
    # A contract that names no module checks nothing: the layers contract must name the whole stack.
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    by_id = {contract["id"]: contract for contract in contracts}
    assert set(by_id) == {"layers", "zoo", "acyclic"}
    assert by_id["layers"]["layers"] == [
        "cli",
        "recipes | report | app",
        "eval | training",
        "inference",
        "checkpoints",
        "models",
        "data",
    ]
    # every package of the library stands in the stack (the zoo has its own contract)
    layered = {name.strip() for layer in by_id["layers"]["layers"] for name in layer.split("|")}
    packages = {p.parent.name for p in (ROOT / "anomaly_ov").glob("*/__init__.py")}
    assert packages - {"zoo"} <= layered, sorted(packages - {"zoo"} - layered)
    assert by_id["zoo"]["source_modules"] == ["anomaly_ov.zoo"]
    assert "anomaly_ov.data" not in by_id["zoo"]["forbidden_modules"]
