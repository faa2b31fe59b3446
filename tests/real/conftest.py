"""The real zoo, built once per test session (or reused: ANOMALY_OV_REAL_ZOO names a folder that is kept
between sessions, so CI builds it once; a complete zoo there is reused, a missing or partial one built)."""

import os
from pathlib import Path

import pytest

REAL_ZOO_ENV = "ANOMALY_OV_REAL_ZOO"


@pytest.fixture(scope="session")
def real_zoo(tmp_path_factory: pytest.TempPathFactory):
    """The real offline zoo (DINOv2-S/14, SmolLM2-135M-Instruct, their LLaVA-OneVision)."""
    from anomaly_ov.zoo.real import build_real_zoo

    folder = os.environ.get(REAL_ZOO_ENV)
    root = Path(folder) if folder else tmp_path_factory.mktemp("real") / "real_zoo"
    return build_real_zoo(root)
