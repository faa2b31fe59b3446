"""CUDA checks: run with ``pytest -m gpu tests/gpu`` on a machine with a GPU (deselected by default)."""

import pytest
import torch

from anomaly_ov.models import AnomalyExpert, ExpertConfig

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    assert torch.cuda.is_available(), "tests/gpu needs a CUDA device (run them with -m gpu on a GPU machine)"
    return torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_expert_at_released_shapes_agrees_with_fp32_on_cuda(cuda: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    expert = AnomalyExpert(ExpertConfig(vision_dim=1152, expert_dim=512, grid=27)).to(cuda)
    final = torch.randn(10, 729, 1152, device=cuda)
    levels = [torch.randn(10, 729, 1152, device=cuda) for _ in range(4)]
    reference = expert(final, levels, [5, 5])
    half = expert.to(dtype)(final.to(dtype), [level.to(dtype) for level in levels], [5, 5])
    torch.testing.assert_close(half.maps.float(), reference.maps, atol=2e-2, rtol=0)
    torch.testing.assert_close(half.scores.float(), reference.scores, atol=2e-2, rtol=0)


def test_expert_cpu_and_cuda_agree(cuda: torch.device) -> None:
    torch.manual_seed(0)
    expert = AnomalyExpert(ExpertConfig(vision_dim=64, expert_dim=32, grid=8))
    final = torch.randn(6, 64, 64)
    levels = [torch.randn(6, 64, 64) for _ in range(4)]
    on_cpu = expert(final, levels, [1, 5])
    on_gpu = expert.to(cuda)(final.to(cuda), [level.to(cuda) for level in levels], [1, 5])
    torch.testing.assert_close(on_gpu.global_tokens.cpu(), on_cpu.global_tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on_gpu.maps.cpu(), on_cpu.maps, atol=1e-5, rtol=0)
