"""Shared fixtures: everything is built locally, offline, once per test session."""

import os
from pathlib import Path

import pytest

from anomaly_ov.offline import enforce_offline

enforce_offline()
os.environ.setdefault("DS_ACCELERATOR", "cpu")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model zoo (SigLIP-like, CLIP-like, open_clip towers, tokenizer, LLaVA-OneVision)."""
    from anomaly_ov.models.zoo import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"), seed=0)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic anomaly dataset in MVTec layout plus instruction and benchmark files."""
    from anomaly_ov.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, scale="small")
