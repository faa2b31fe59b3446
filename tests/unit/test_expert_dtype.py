"""The expert in bfloat16, as the release evaluates it: inputs follow its dtype, scores stay close to fp32."""

import numpy as np
import pytest
import torch
from transformers import LlavaOnevisionImageProcessor

from anomaly_ov.data.crops import ImageCrops
from anomaly_ov.data.features import build_feature_source
from anomaly_ov.data.zsad import MVTecSource
from anomaly_ov.eval.zsad import score_samples
from anomaly_ov.models.builders import build_expert, build_siglip_tower

pytestmark = pytest.mark.usefixtures("one_thread")


def _expert(dtype: str):
    torch.manual_seed(0)
    return build_expert(vision_dim=64, expert_dim=32, grid=8, dtype=dtype).eval()


def test_bf16_expert_scores_the_tiny_data_close_to_fp32(tiny_zoo, synthetic_data):
    tower = build_siglip_tower(str(tiny_zoo.siglip), [2, 3, 4, 5])
    crops = ImageCrops(LlavaOnevisionImageProcessor.from_pretrained(tiny_zoo.llava_ov), single_crop=True)
    source = build_feature_source(
        tower, crops, {"backend": "siglip"}, cache=False, cache_dir="unused", max_gb=1.0
    )
    samples = MVTecSource(synthetic_data.mvtec_root, split="test").read()[:24]
    full, half = _expert("float32"), _expert("bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    # score_samples feeds the tower's fp32 features in the expert's dtype (bf16 weights with fp32 inputs
    # would fail in the first linear layer)
    _, fp32, fp32_maps, _ = score_samples(full, source, samples, skip_bad=False, batch_size=8)
    _, bf16, bf16_maps, _ = score_samples(half, source, samples, skip_bad=False, batch_size=8)
    assert fp32.dtype == bf16.dtype == np.float32
    difference = np.abs(fp32 - bf16)
    assert 0 < difference.max() < 2e-2  # it did run in bf16, and bf16 keeps ~3 significant digits
    map_difference = max(float((a - b).abs().max()) for a, b in zip(fp32_maps, bf16_maps, strict=True))
    assert 0 < map_difference < 5e-2


def test_bf16_severity_words_agree_away_from_the_thresholds():
    full, half = _expert("float32"), _expert("bfloat16")
    generator = torch.Generator().manual_seed(1)
    crops = [1, 3, 1, 2]
    final = torch.randn(sum(crops), 64, 64, generator=generator)
    levels = [torch.randn(sum(crops), 64, 64, generator=generator) for _ in range(4)]
    with torch.no_grad():
        scores = full(final, levels, crops).scores
        half_scores = half(final.bfloat16(), [t.bfloat16() for t in levels], crops).scores.float()
    torch.testing.assert_close(half_scores, scores, atol=2e-2, rtol=0)
    # a word can only flip for a score within the bf16 error of a threshold
    thresholds = torch.tensor(full.severity_thresholds)
    safe = (scores[:, None] - thresholds).abs().min(dim=1).values > 2e-2
    words, half_words = full.severity_words(scores), half.severity_words(half_scores)
    assert all(w == h for w, h, ok in zip(words, half_words, safe, strict=True) if ok)


def test_an_expert_whose_parameters_alone_were_cast_to_bf16_runs_as_one_cast_whole():
    # DeepSpeed's bf16 mode casts a model's parameters, not its non-persistent buffers (the VT selector's
    # pooling matrix): stage 2 in bf16 failed in torch.bmm (float maps against bf16 tokens)
    whole, params_only = _expert("bfloat16"), _expert("float32")
    for parameter in params_only.parameters():
        parameter.data = parameter.data.bfloat16()
    assert params_only.pool_matrix.dtype == torch.float32
    generator = torch.Generator().manual_seed(2)
    crops = [1, 2]
    final = torch.randn(sum(crops), 64, 64, generator=generator).bfloat16()
    levels = [torch.randn(sum(crops), 64, 64, generator=generator).bfloat16() for _ in range(4)]
    with torch.no_grad():
        expected, got = whole(final, levels, crops), params_only(final, levels, crops)
    assert got.scores.dtype == torch.bfloat16
    torch.testing.assert_close(got.scores, expected.scores, atol=0, rtol=0)
    torch.testing.assert_close(got.local_tokens, expected.local_tokens, atol=0, rtol=0)
