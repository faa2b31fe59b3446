"""The crops of the tower and the on-disk feature cache (keying, budget, resume, bad input)."""

import hashlib
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import LlavaOnevisionImageProcessor

from anomaly_ov.data.crops import ImageCrops
from anomaly_ov.data.feature_cache import (
    CacheBudgetError,
    FeatureCache,
    cache_fingerprint,
    collate_features,
    weights_sha256,
)
from anomaly_ov.data.features import build_feature_source
from anomaly_ov.data.zsad import AnomalySample, BadInputError, InstructionSource, sample
from anomaly_ov.models.builders import build_siglip_tower


class CountingTower(nn.Module):
    """The tiny tower, counting the crops it encodes."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.crops = 0
        for name in ("hidden_size", "num_tokens", "level_layers", "final_layer"):
            setattr(self, name, getattr(tower, name))

    def forward(self, pixel_values: torch.Tensor):
        self.crops += pixel_values.shape[0]
        return self.tower(pixel_values)


@pytest.fixture(scope="module")
def tower(tiny_zoo):
    return build_siglip_tower(str(tiny_zoo.siglip), [2, 3, 4, 5])


@pytest.fixture(scope="module")
def processor(tiny_zoo):
    return LlavaOnevisionImageProcessor.from_pretrained(tiny_zoo.llava_ov)


@pytest.fixture(scope="module")
def train_samples(synthetic_data):
    return InstructionSource(synthetic_data.instruct_json, synthetic_data.root).read()


def _cache(
    root: Path, tower: nn.Module, crops: ImageCrops, layers: tuple[int, ...] = (2, 3, 4, 5)
) -> FeatureCache:
    fingerprint = cache_fingerprint(
        {"backend": "siglip"}, layers, -1, weights_sha256(tower), crops.fingerprint()
    )
    return FeatureCache(root, fingerprint, tower.num_tokens, tower.hidden_size, len(tower.level_layers))


def test_crops_single_anyres_and_multiview(processor, tmp_path):
    crops = ImageCrops(processor, single_crop=False)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(wide)
    anyres = crops(sample(wide, 0, "x"))
    assert anyres.shape[1:] == (3, 64, 64)
    assert anyres.shape[0] == crops.num_crops(sample(wide, 0, "x")) > 1
    single = ImageCrops(processor, single_crop=True)(sample(wide, 0, "x"))
    assert single.shape == (1, 3, 64, 64)
    # The single crop is LLaVA-OneVision's padded square (data/crops.py), not AnyRes' stretched whole image:
    # the 80x120 image is padded by 20 rows above and below (about 10.7 of the 64 input rows), one colour.
    band = single[0, :, :8]  # [3, 8, 64], clear of the resampling blur at the image's edge
    assert torch.equal(band, band[:, :1, :1].expand_as(band))
    assert (single[0, :, 20:44].std(dim=(1, 2)) > 0.1).all()
    assert not torch.allclose(single[0], anyres[0])
    views = AnomalySample((wide, wide, wide), 1, "x")
    assert crops(views).shape == (3, 3, 64, 64) and crops.num_crops(views) == 3
    assert crops.fingerprint() != ImageCrops(processor, single_crop=True).fingerprint()


def test_a_crop_at_released_shapes_is_8_4_mb(tmp_path):
    cache = FeatureCache(tmp_path, {"tower": "so400m"}, num_tokens=729, hidden_size=1152, num_levels=4)
    assert cache.bytes_per_crop == 5 * 729 * 1152 * 2 == 8_398_080


def test_cache_holds_the_tower_features_and_is_reused(tower, processor, train_samples, tmp_path):
    crops = ImageCrops(processor, single_crop=True)
    counting = CountingTower(tower)
    cache = _cache(tmp_path, counting, crops)
    samples = train_samples[:20]
    assert cache.build(samples, crops, counting, max_bytes=10**9, shard_size=8, progress=False) == []
    assert counting.crops == 20
    assert cache.build(samples, crops, counting, max_bytes=10**9, progress=False) == []
    assert counting.crops == 20  # nothing recomputed
    assert len(list(cache.dir.glob("shard-*"))) == 3

    dataset, kept = cache.dataset(samples, crops)
    assert kept == list(range(20))
    batch = collate_features([dataset[i] for i in (3, 11)])
    assert batch.final.dtype == torch.float16 and batch.crops_per_image == [1, 1] and batch.indices == [3, 11]
    expected = tower(torch.cat([crops(samples[3]), crops(samples[11])]))
    torch.testing.assert_close(batch.final.float(), expected.final, atol=2e-2, rtol=1e-2)
    for cached, computed in zip(batch.levels, expected.levels, strict=True):
        torch.testing.assert_close(cached.float(), computed, atol=2e-2, rtol=1e-2)

    # A subset (an ablation without some data) reuses the features; a new image is the only work.
    assert cache.build(samples[5:10], crops, counting, max_bytes=10**9, progress=False) == []
    assert counting.crops == 20
    cache.build(train_samples[:21], crops, counting, max_bytes=10**9, progress=False)
    assert counting.crops == 21


def test_streamed_features_equal_cached_ones(tower, processor, train_samples, tmp_path):
    samples = train_samples[:6]
    spec = {"backend": "siglip"}
    kwargs = {"tower": tower, "tower_spec": spec, "cache_dir": str(tmp_path), "max_gb": 1.0}
    crops = ImageCrops(processor, single_crop=False)
    cached = build_feature_source(crops=crops, cache=True, **kwargs).prepare(samples, skip_bad=False)
    streamed = build_feature_source(crops=crops, cache=False, **kwargs).prepare(samples, skip_bad=False)
    a = cached.featurize(cached.collate_fn([cached.dataset[i] for i in range(6)]))
    b = streamed.featurize(streamed.collate_fn([streamed.dataset[i] for i in range(6)]))
    assert a.crops_per_image == b.crops_per_image and sum(a.crops_per_image) > 6  # AnyRes tiles
    torch.testing.assert_close(a.final.float(), b.final, atol=2e-2, rtol=1e-2)


def test_cache_key_tracks_layers_preprocessing_and_weights(tower, processor, tmp_path):
    single, anyres = ImageCrops(processor, single_crop=True), ImageCrops(processor, single_crop=False)
    base = _cache(tmp_path, tower, single)
    assert _cache(tmp_path, tower, single).key == base.key
    assert _cache(tmp_path, tower, anyres).key != base.key
    assert _cache(tmp_path, tower, single, layers=(1, 3, 4, 5)).key != base.key
    changed = build_siglip_tower(str(Path(tower.backbone.config._name_or_path)), [2, 3, 4, 5])
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert _cache(tmp_path, changed, single).key != base.key


def test_a_changed_image_is_recomputed(tower, processor, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    crops = ImageCrops(processor, single_crop=True)
    cache = _cache(tmp_path / "cache", tower, crops)
    cache.build([sample(image, 0, "x")], crops, tower, max_bytes=10**9, progress=False)
    assert cache.plan([sample(image, 0, "x")], crops, skip_bad=False).missing == []
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(image)
    os.utime(image, ns=(1, 2))  # a different modification time, whatever the clock resolution
    assert len(cache.plan([sample(image, 0, "x")], crops, skip_bad=False).missing) == 1


def test_budget_is_checked_before_building(tower, processor, train_samples, tmp_path):
    crops = ImageCrops(processor, single_crop=True)
    cache = _cache(tmp_path, tower, crops)
    plan = cache.plan(train_samples[:10], crops, skip_bad=False)
    assert plan.bytes == 10 * cache.bytes_per_crop
    with pytest.raises(
        CacheBudgetError, match=r"10 images .* exceed the budget.*features\.max_gb.*features=streamed"
    ):
        cache.build(train_samples[:10], crops, tower, max_bytes=plan.bytes - 1, progress=False)
    assert not list(tmp_path.rglob("*.npy"))


def test_interrupted_build_resumes_without_recomputing(
    tower, processor, train_samples, tmp_path, monkeypatch
):
    crops = ImageCrops(processor, single_crop=True)
    counting = CountingTower(tower)
    cache = _cache(tmp_path, counting, crops)
    original = FeatureCache._build_shard
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "_build_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.build(train_samples[:24], crops, counting, max_bytes=10**9, shard_size=8, progress=False)
    monkeypatch.setattr(FeatureCache, "_build_shard", original)
    assert counting.crops == 16
    cache.build(train_samples[:24], crops, counting, max_bytes=10**9, shard_size=8, progress=False)
    assert counting.crops == 24  # only the third shard was computed again
    assert cache.dataset(train_samples[:24], crops)[1] == list(range(24))


def test_bad_images_in_a_build_raise_or_are_reported(tower, processor, train_samples, tmp_path):
    broken = tmp_path / "broken.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(broken)
    broken.write_bytes(broken.read_bytes()[:2000])
    samples = [*train_samples[:3], sample(broken, 1, "x"), sample(tmp_path / "missing.png", 0, "x")]
    crops = ImageCrops(processor, single_crop=True)
    cache = _cache(tmp_path / "cache", tower, crops)
    with pytest.raises(BadInputError, match=r"missing\.png"):
        cache.build(samples, crops, tower, max_bytes=10**9, progress=False)
    with pytest.raises(BadInputError, match=r"broken\.png: unreadable or truncated"):
        cache.build(samples[:4], crops, tower, max_bytes=10**9, progress=False)
    skipped = cache.build(samples, crops, tower, max_bytes=10**9, skip_bad=True, progress=False)
    assert sorted(Path(s.path).name for s in skipped) == ["broken.png", "missing.png"]
    assert cache.dataset(samples, crops)[1] == [0, 1, 2]


def test_a_bad_image_is_reported_by_every_later_build(tower, processor, train_samples, tmp_path):
    # A shard whose images all failed is not stored: a later build (skip or not) must read the bad file
    # again, not find a "finished" shard of it and drop the sample silently.
    broken = tmp_path / "broken.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 77).save(broken)
    broken.write_bytes(broken.read_bytes()[:60])
    samples = [*train_samples[:2], sample(broken, 1, "x")]
    crops = ImageCrops(processor, single_crop=True)
    cache = _cache(tmp_path / "cache", tower, crops)
    for _ in range(3):
        skipped = cache.build(samples, crops, tower, max_bytes=10**9, skip_bad=True, progress=False)
        assert [Path(s.path).name for s in skipped] == ["broken.png"]
    with pytest.raises(BadInputError, match=r"broken\.png"):
        cache.build(samples, crops, tower, max_bytes=10**9, progress=False)
    assert not [p.name for p in cache.dir.iterdir() if ".tmp" in p.name]  # a failed shard leaves nothing
    assert cache.dataset(samples, crops)[1] == [0, 1]


def test_a_killed_builds_temporary_shard_is_removed(tower, processor, train_samples, tmp_path):
    crops = ImageCrops(processor, single_crop=True)
    cache = _cache(tmp_path, tower, crops)
    keys = [key for key, _, _ in cache.plan(train_samples[:4], crops, skip_bad=False).missing]
    name = "shard-" + hashlib.sha256("".join(keys).encode()).hexdigest()[:20]
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = cache.dir / f"{name}.tmp-{socket.gethostname()}-{dead.pid}"
    elsewhere = cache.dir / f"{name}.tmp-another-node-{dead.pid}"  # a shared cache: maybe still writing
    for folder in (killed, elsewhere):
        folder.mkdir(parents=True)
        (folder / "final.npy").write_bytes(b"half written")
        (folder / "index.json").write_text(f'[["{keys[0]}", 0, 1]]')
    assert cache.load_index() == {}  # temporary folders are never read, index or not
    cache.build(train_samples[:4], crops, tower, max_bytes=10**9, progress=False)
    assert not killed.exists() and elsewhere.is_dir()
    assert cache.dataset(train_samples[:4], crops)[1] == [0, 1, 2, 3]
