"""Zero-shot evaluation as the field measures it: smoothing, stitched tile maps, mixed mask sizes, a bad
class, the AUPRO mode (anomaly_ov.eval.pixel_maps, anomaly_ov.eval.zsad)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from transformers import LlavaOnevisionImageProcessor

from anomaly_ov.data.crops import ImageCrops
from anomaly_ov.data.features import build_feature_source
from anomaly_ov.data.zsad import MVTecSource, sample
from anomaly_ov.eval.aupro import aupro, aupro_200_thresholds
from anomaly_ov.eval.metrics import pixel_metrics
from anomaly_ov.eval.pixel_maps import gaussian_smooth, region_layout, stitch_tile_maps
from anomaly_ov.eval.zsad import PixelMapSettings, evaluate_dataset
from anomaly_ov.models.builders import build_expert, build_siglip_tower

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------------- smoothing


@pytest.mark.parametrize(("shape", "sigma"), [((2, 40, 56), 4.0), ((1, 7, 300), 4.0), ((1, 33, 20), 1.5)])
def test_gaussian_smoothing_equals_scipy(shape, sigma):
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    smoothed = gaussian_smooth(torch.as_tensor(maps), sigma)
    # scipy smooths each map on its own (sigma 0 along the image axis); a 7-pixel side is shorter than
    # the kernel's radius 16, so the border rule is exercised beyond one reflection
    expected = np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma) for m in maps])
    np.testing.assert_allclose(smoothed, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(maps, 0.0)


# -------------------------------------------------------------------------------------------- stitching

PINPOINTS = [[64, 64], [64, 128], [128, 64], [128, 128]]


def test_stitched_tiles_are_placed_row_major_and_the_padding_is_cut():
    # A 40 x 100 image fits the 64 x 128 pinpoint (1 x 2 tiles of 64): resized to 52 x 128 (transformers'
    # get_patch_output_size: ceil(40 * 1.28)), padded by 6 rows above and below. With 8x8 maps per tile
    # (8 map cells per 64 pixels) the image covers map rows round(6/8) = 1 .. round(58/8) = 7.
    tiles = torch.stack([torch.full((8, 8), 1.0), torch.full((8, 8), 2.0)])
    tiles[1, 3, 4] = 9.0
    stitched = stitch_tile_maps(tiles, (40, 100), PINPOINTS, 64)
    assert stitched.shape == (6, 16)
    assert (stitched[:, :8] == 1).all() and stitched[2, 12] == 9 and (stitched[:, 8:] != 1).all()
    # a 2 x 2 grid, no padding: tile k lands in row k // 2, column k % 2
    grid = torch.arange(4.0).repeat_interleave(64).reshape(4, 8, 8)
    square = stitch_tile_maps(grid, (128, 128), PINPOINTS, 64)
    assert square.shape == (16, 16)
    assert [square[0, 0], square[0, 8], square[8, 0], square[8, 8]] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"3 tile maps for the 2x2 grid"):
        stitch_tile_maps(grid[:3], (128, 128), PINPOINTS, 64)


def test_stitching_matches_the_processor_tile_count(tiny_zoo, tmp_path):
    processor = LlavaOnevisionImageProcessor.from_pretrained(tiny_zoo.llava_ov)
    crops = ImageCrops(processor)
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((40, 150, 3), np.uint8)).save(path)
    tiles = crops.num_crops(sample(path, 0, "x")) - 1
    assert tiles > 1
    stitched = stitch_tile_maps(torch.zeros(tiles, 8, 8), (40, 150), processor.image_grid_pinpoints, 64)
    assert stitched.shape[1] > stitched.shape[0]  # the image's aspect, at tile resolution


# ------------------------------------------------------------------------------------ mixed mask sizes


def _brute_force_aupro(maps, masks, max_fpr=0.3):
    """Second implementation: per-image regions, every distinct value a threshold, linear interpolation."""
    regions = []
    for value, mask in zip(maps, masks, strict=True):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [value[labels == k] for k in range(1, count + 1)]
    normal = np.concatenate([value[~mask] for value, mask in zip(maps, masks, strict=True)])
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    fpr = [0.0] + [np.mean(normal >= t) for t in thresholds]
    pro = [0.0] + [np.mean([np.mean(r >= t) for r in regions]) for t in thresholds]
    fpr, pro = np.asarray(fpr), np.asarray(pro)
    keep = fpr <= max_fpr
    xs, ys = list(fpr[keep]), list(pro[keep])
    nxt = np.argmax(fpr > max_fpr)
    if fpr[nxt] > max_fpr and xs[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
        xs.append(max_fpr)
        ys.append(y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return np.trapezoid(ys, xs) / max_fpr


def _class(rng, sizes):
    maps, masks = [], []
    for height, width in sizes:
        mask = np.zeros((height, width), bool)
        mask[2:5, 3:7] = True
        mask[height - 3 :, width - 2 :] = True  # a second region touching the border
        maps.append((rng.random((height, width)) + 0.8 * mask).astype(np.float32))
        masks.append(mask)
    masks.append(np.zeros(sizes[0], bool))  # a defect-free image
    maps.append(rng.random(sizes[0]).astype(np.float32))
    return maps, masks


def test_region_layout_keeps_every_metric_of_equal_sizes():
    maps, masks = _class(np.random.default_rng(1), [(12, 16), (12, 16)])
    stacked = np.stack(maps), np.stack(masks)
    laid = region_layout(maps, masks)
    assert laid[0].shape[:2] == (1, 1) and laid[0].size == stacked[0].size
    assert aupro(*laid) == pytest.approx(aupro(*stacked), abs=1e-12)
    assert aupro_200_thresholds(*laid) == pytest.approx(aupro_200_thresholds(*stacked), abs=1e-12)
    assert pixel_metrics(*laid) == pixel_metrics(*stacked)


def test_region_layout_of_different_sizes_against_brute_force():
    maps, masks = _class(np.random.default_rng(2), [(12, 16), (20, 9), (7, 30)])
    exact = aupro(*region_layout(maps, masks))
    assert exact == pytest.approx(_brute_force_aupro(maps, masks), abs=1e-9)


# ------------------------------------------------------------------------------------- whole datasets


def _mvtec(root, mask_sides=(64, 64), classes=("thing",), one_label_class=None):
    rng = np.random.default_rng(0)
    for name in classes:
        for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
            (root / name / folder).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(
                root / name / "test" / "good" / f"{index:03d}.png"
            )
        if name == one_label_class:
            continue
        for index, side in enumerate(mask_sides):
            pixels = rng.integers(0, 256, (side, side, 3), np.uint8)
            Image.fromarray(pixels).save(root / name / "test" / "crack" / f"{index:03d}.png")
            mask = np.zeros((side, side), np.uint8)
            mask[side // 4 : side // 2, side // 4 : side // 2] = 255
            Image.fromarray(mask).save(root / name / "ground_truth" / "crack" / f"{index:03d}_mask.png")
    return MVTecSource(root).read()


@pytest.fixture(scope="module")
def tiny_parts(tiny_zoo):
    tower = build_siglip_tower(str(tiny_zoo.siglip), [2, 3, 4, 5])
    processor = LlavaOnevisionImageProcessor.from_pretrained(tiny_zoo.llava_ov)
    torch.manual_seed(0)
    expert = build_expert(vision_dim=64, expert_dim=32, grid=8)
    return tower, processor, expert


def _source(tiny_parts, single_crop=True):
    tower, processor, _ = tiny_parts
    return build_feature_source(
        tower,
        ImageCrops(processor, single_crop=single_crop),
        {"backend": "siglip"},
        cache=False,
        cache_dir="unused",
        max_gb=1.0,
    )


def test_a_class_with_mixed_mask_sizes_gets_all_metrics(tiny_parts, tmp_path):
    samples = _mvtec(tmp_path, mask_sides=(64, 48))
    result = evaluate_dataset("d", samples, tiny_parts[2], _source(tiny_parts))
    metrics = result.classes[0]
    assert metrics.num_images == 4 and not result.failed_classes and not result.problems
    assert None not in (metrics.pixel_auroc, metrics.pixel_ap, metrics.aupro)
    assert result.mean["aupro"] == metrics.aupro


def test_a_bad_class_never_aborts_the_dataset(tiny_parts, tmp_path):
    samples = _mvtec(tmp_path, classes=("good_class", "normal_only"), one_label_class="normal_only")
    result = evaluate_dataset("d", samples, tiny_parts[2], _source(tiny_parts))
    assert [c.name for c in result.classes] == ["good_class"]
    assert "labels are normal" in result.failed_classes["normal_only"]
    assert result.mean["image_auroc"] == result.classes[0].image_auroc
    assert result.to_dict()["failed_classes"] == result.failed_classes


def test_a_mask_that_does_not_fit_its_image_fails_its_class_only(tiny_parts, tmp_path):
    samples = _mvtec(tmp_path, classes=("other", "thing"))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "thing/ground_truth/crack/001_mask.png")
    result = evaluate_dataset("d", samples, tiny_parts[2], _source(tiny_parts))
    assert [c.name for c in result.classes] == ["other"]
    assert "001_mask.png: mask size (32, 32) differs" in result.failed_classes["thing"]
    assert result.mean["aupro"] == result.classes[0].aupro
    # skipping and reporting instead keeps the class, less that image
    kept = evaluate_dataset("d", samples, tiny_parts[2], _source(tiny_parts), skip_bad=True)
    assert [c.num_images for c in kept.classes] == [4, 3] and not kept.failed_classes


def test_pixel_map_options_change_pixel_metrics_only(tiny_parts, tmp_path):
    samples = _mvtec(tmp_path, mask_sides=(128, 128))  # 2 x 2 tiles each
    expert = tiny_parts[2]
    plain = evaluate_dataset("d", samples, expert, _source(tiny_parts, single_crop=False))
    options = {
        "smoothed": PixelMapSettings(smoothing_sigma=4.0),
        "tiles": PixelMapSettings(source="tiles"),
        "compat": PixelMapSettings(aupro="compat_200"),
    }
    for name, settings in options.items():
        other = evaluate_dataset(
            "d", samples, expert, _source(tiny_parts, single_crop=False), pixel_maps=settings
        )
        assert other.mean["image_auroc"] == plain.mean["image_auroc"], name
        changed = [m for m in ("pixel_auroc", "pixel_ap", "aupro") if other.mean[m] != plain.mean[m]]
        assert changed, name
        assert other.to_dict()["pixel_maps"]["source"] == settings.source


def test_pixel_map_settings_are_checked():
    with pytest.raises(ValueError, match="source 'crop'"):
        PixelMapSettings(source="crop")
    with pytest.raises(ValueError, match="aupro mode 'approx'"):
        PixelMapSettings(aupro="approx")


# ----------------------------------------------------------------------- the field's resolution (518 px)


def test_field_mask_is_anomalyclips_resize_and_threshold():
    """AnomalyCLIP's test script: torchvision Resize((518, 518)) of the 0/255 mask, ToTensor, > 0.5."""
    from torchvision import transforms

    from anomaly_ov.eval.pixel_maps import field_mask

    reference = transforms.Compose([transforms.Resize((518, 518)), transforms.ToTensor()])
    rng = np.random.default_rng(0)
    for shape in ((900, 700), (300, 300), (1000, 1500)):
        mask = ndimage.binary_dilation(rng.random(shape) > 0.999, iterations=9)
        expected = reference(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"))[0].numpy() > 0.5
        np.testing.assert_array_equal(field_mask(mask, 518), expected)
        assert expected.any() and not expected.all()


def test_pixel_size_resizes_masks_and_smooths_maps_at_that_size():
    from anomaly_ov.data.crops import upsample_maps
    from anomaly_ov.eval.pixel_maps import field_mask
    from anomaly_ov.eval.zsad import _pixel_arrays

    rng = np.random.default_rng(1)
    maps = [torch.as_tensor(rng.random((27, 27), dtype=np.float32)) for _ in range(2)]
    masks = [rng.random((300, 400)) > 0.7, rng.random((250, 250)) > 0.7]  # two mask sizes
    values, labels = _pixel_arrays(maps, masks, 518, 4.0)
    assert values.shape == labels.shape == (2, 518, 518)  # one size: no per-image layout needed
    for value, mask, out_value, out_mask in zip(maps, masks, values, labels, strict=True):
        # sigma 4 in pixels of the 518x518 map, not of the mask's own size
        expected = ndimage.gaussian_filter(upsample_maps(value[None], (518, 518))[0].astype(np.float64), 4.0)
        np.testing.assert_allclose(out_value, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(out_mask, field_mask(mask, 518))


def test_pixel_size_is_named_in_the_results(tiny_parts, tmp_path):
    samples = _mvtec(tmp_path, mask_sides=(64, 48))
    settings = PixelMapSettings(smoothing_sigma=4.0, pixel_size=96)
    field = evaluate_dataset("d", samples, tiny_parts[2], _source(tiny_parts), pixel_maps=settings)
    own = evaluate_dataset(
        "d", samples, tiny_parts[2], _source(tiny_parts), pixel_maps=PixelMapSettings(smoothing_sigma=4.0)
    )
    assert (
        field.to_dict()["pixel_maps"]["pixel_size"] == 96
        and own.to_dict()["pixel_maps"]["pixel_size"] is None
    )
    assert field.mean["image_auroc"] == own.mean["image_auroc"]
    assert field.mean["pixel_auroc"] != own.mean["pixel_auroc"]
    assert "96x96" in settings.describe() and "each mask's own size" in PixelMapSettings().describe()
    with pytest.raises(ValueError, match="pixel_size"):
        PixelMapSettings(pixel_size=0)


def test_image_score_options_rank_the_expert_score_the_map_maximum_or_their_mean(tiny_parts, tmp_path):
    from sklearn.metrics import roc_auc_score

    samples = _mvtec(tmp_path, mask_sides=(64, 64, 64))
    expert = tiny_parts[2]
    results = {
        kind: evaluate_dataset("d", samples, expert, _source(tiny_parts), image_score=kind)
        for kind in ("expert", "map_max", "expert_map_mean")
    }
    rows = results["expert"].image_scores
    labels = [row["label"] for row in rows]
    expected = {
        "expert": [row["expert_score"] for row in rows],
        "map_max": [row["map_max"] for row in rows],
        "expert_map_mean": [(row["expert_score"] + row["map_max"]) / 2 for row in rows],
    }
    for kind, result in results.items():
        assert [row["score"] for row in result.image_scores] == pytest.approx(expected[kind]), kind
        assert result.mean["image_auroc"] == pytest.approx(roc_auc_score(labels, expected[kind])), kind
        # the pixel metrics never depend on the image score
        assert result.mean["pixel_auroc"] == results["expert"].mean["pixel_auroc"]
    assert len({round(v, 6) for v in expected["map_max"]}) > 1  # the maps differ between images
    assert all(0.0 <= row["map_max"] <= 1.0 for row in rows)
    with pytest.raises(ValueError, match="image score 'top_k' is not one of"):
        evaluate_dataset("d", samples, expert, _source(tiny_parts), image_score="top_k")
