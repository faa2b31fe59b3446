"""Stage 1 under the inputs researchers hit (an unusable mask, with cached or streamed features)."""

import numpy as np
import pytest
from PIL import Image
from transformers import LlavaOnevisionImageProcessor

from anomaly_ov.data.crops import ImageCrops
from anomaly_ov.data.features import build_feature_source
from anomaly_ov.data.zsad import MVTecSource
from anomaly_ov.eval.zsad import evaluate_dataset
from anomaly_ov.models.builders import build_expert, build_siglip_tower


def _mvtec_class_with_a_small_mask(root):
    """One class: 2 normal and 2 anomalous 64x64 images; the second mask is 32x32."""
    rng = np.random.default_rng(0)
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / "thing" / folder).mkdir(parents=True)
    for split, name in [("good", "000"), ("good", "001"), ("crack", "000"), ("crack", "001")]:
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "thing" / "test" / split / f"{name}.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(root / "thing" / "ground_truth" / "crack" / "000_mask.png")
    Image.fromarray(mask[::2, ::2]).save(root / "thing" / "ground_truth" / "crack" / "001_mask.png")
    return MVTecSource(root).read()


@pytest.mark.parametrize("cache", [True, False])
def test_a_skipped_mask_is_reported_and_left_out_of_metrics_and_heatmaps(tiny_zoo, tmp_path, cache):
    samples = _mvtec_class_with_a_small_mask(tmp_path / "data")
    tower = build_siglip_tower(str(tiny_zoo.siglip), [2, 3, 4, 5])
    crops = ImageCrops(LlavaOnevisionImageProcessor.from_pretrained(tiny_zoo.llava_ov), single_crop=True)
    source = build_feature_source(
        tower, crops, {"backend": "siglip"}, cache=cache, cache_dir=str(tmp_path / "cache"), max_gb=1.0
    )
    expert = build_expert(vision_dim=64, expert_dim=32, grid=8)
    kwargs = {"heatmap_dir": tmp_path / "heatmaps", "heatmaps_per_class": 4}
    # without skip_bad nothing is raised: the class says why it was not evaluated (streamed: the images
    # are screened with their masks) or why its pixel metrics are missing (cached: image metrics kept)
    result = evaluate_dataset("thing", samples, expert, source, **kwargs)
    reasons = [*result.failed_classes.values(), *result.problems.get("thing", [])]
    assert len(reasons) == 1 and "001_mask.png: mask size (32, 32) differs" in reasons[0]
    assert all(c.pixel_auroc is None for c in result.classes)
    result = evaluate_dataset("thing", samples, expert, source, skip_bad=True, **kwargs)
    assert [(s.path.rsplit("/", 1)[1], s.reason[:9]) for s in result.skipped] == [
        ("001_mask.png", "mask size")
    ]
    assert result.classes[0].num_images == 3
    assert [p.name for p in result.heatmaps] == ["thing.png"] and result.heatmaps[0].is_file()


def test_resuming_checkpoints_of_another_tower_is_refused(tmp_path):
    # A run_dir reused with another model/vision would continue the old expert on new features and
    # overwrite config.yaml, which would then name the wrong tower (SPEC §4: the config records it).
    from omegaconf import OmegaConf

    from anomaly_ov.recipes.train_expert import check_resumable

    crops = {"single_crop": True}
    started = {"model": {"vision": {"backend": "clip"}}, "features": {"crops": crops}}
    OmegaConf.save(OmegaConf.create(started), tmp_path / "config.yaml")
    check_resumable(tmp_path / "config.yaml", started)
    check_resumable(tmp_path / "missing.yaml", {})  # a run without a saved config: nothing to compare
    other_tower = {"model": {"vision": {"backend": "llava_onevision"}}, "features": {"crops": crops}}
    with pytest.raises(ValueError, match=r"checkpoints trained with another model \(see .*config\.yaml\)"):
        check_resumable(tmp_path / "config.yaml", other_tower)
    anyres = {**started, "features": {"crops": {"single_crop": False}}}
    with pytest.raises(ValueError, match=r"another features\.crops"):
        check_resumable(tmp_path / "config.yaml", anyres)
