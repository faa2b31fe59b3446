"""Package list for setuptools (everything else is in pyproject.toml).

pyproject's ``packages.find`` cannot add the top-level ``configs/`` folder as ``anomaly_ov.configs``, so
the list is built here: every ``anomaly_ov*`` package, then the configs folder and each of its groups.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CONFIG_GROUPS = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*") if p.is_dir())

setup(
    packages=[
        *find_packages(where=str(ROOT), include=["anomaly_ov*"]),
        "anomaly_ov.configs",
        *("anomaly_ov.configs." + ".".join(group.parts) for group in CONFIG_GROUPS),
    ]
)
