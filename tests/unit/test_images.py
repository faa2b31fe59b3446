"""The one image reader and the one crop function (data/images.py, data/crops.py)."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import LlavaOnevisionImageProcessor
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

from anomaly_ov.data.crops import ImageCrops, anyres_crops, crop_map_to_image
from anomaly_ov.data.images import BadInputError, image_size, limited_size, read_image
from anomaly_ov.data.zsad import sample


def test_read_image_applies_the_exif_orientation(tmp_path):
    # stored 40 wide x 20 high, red on the left half; orientation 6 = "rotate 90 degrees clockwise to view"
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20, 0] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "camera.jpg", exif=exif, quality=95)

    upright = read_image(tmp_path / "camera.jpg")
    assert upright.size == (20, 40)  # (width, height) as viewers show it
    assert image_size(tmp_path / "camera.jpg") == (20, 40)  # the header-only size agrees
    pixels = np.asarray(upright).astype(int)
    # clockwise rotation puts the stored left half on top
    assert pixels[:15, :, 0].mean() > 200 and pixels[25:, :, 0].mean() < 50


def test_read_image_scales_sixteen_bit_grayscale_to_eight_bits(tmp_path):
    values = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode.startswith("I")

    rgb = np.asarray(read_image(tmp_path / "depth.png"))
    assert rgb.shape == (32, 32, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1500, 1000), 1024, (1024, 682)),  # the release's int(1024 * 1000 / 1500), not round's 683
        ((1000, 1500), 1024, (682, 1024)),
        ((1200, 1200), 1024, (1024, 1024)),
        ((1024, 300), 1024, (1024, 300)),  # fits: unchanged
        ((4096, 256), 1024, (1024, 64)),  # AITEX strip
        ((1500, 1000), None, (1500, 1000)),  # limit off
    ],
)
def test_long_side_limit(size, max_side, expected):
    assert limited_size(*size, max_side) == expected


def test_long_side_limit_truncates_as_the_release_for_every_size():
    """The release's scripts: ``int(1024 * h / w)`` on the short side (w > h; the other branch otherwise)."""
    for width in range(1025, 2600, 7):
        for height in range(1, width + 1, 13):
            assert limited_size(width, height, 1024) == (1024, max(1, int(1024 * height / width)))
            assert limited_size(height, width, 1024) == (max(1, int(1024 * height / width)), 1024)


def test_read_image_resizes_the_long_side_to_1024_before_anything_else(tmp_path):
    Image.new("RGB", (1500, 1000), (10, 200, 30)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png").size == (1024, 682)
    assert read_image(tmp_path / "big.png", max_side=None).size == (1500, 1000)
    assert image_size(tmp_path / "big.png", max_side=1024) == (1024, 682)


def test_a_1500x1000_image_gets_the_release_2x3_tile_grid_not_3x4(tmp_path):
    """SPEC §5: the release resizes to long side 1024 first, which changes the AnyRes grid."""
    processor = LlavaOnevisionImageProcessor()  # LLaVA-OneVision's 384 px crops, pinpoints 1x1..6x6
    Image.new("RGB", (1500, 1000), (120, 120, 120)).save(tmp_path / "wide.png")
    item = sample(tmp_path / "wide.png", 0, "x")
    crops = ImageCrops(processor)  # the release's max_image_side=1024
    assert crops.num_crops(item) == 1 + 2 * 3
    assert crops(item).shape == (7, 3, 384, 384)
    assert ImageCrops(processor, max_image_side=None).num_crops(item) == 1 + 3 * 4
    height, width = 682, 1024
    grid = get_anyres_image_grid_shape((height, width), processor.image_grid_pinpoints, 384)
    assert tuple(grid) == (2, 3)


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(BadInputError, match=r"broken\.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(BadInputError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


def test_single_crop_is_llava_onevision_padded_square():
    """One meaning of "single crop": the image padded (centred) to a square, as LLaVA-OV encodes views."""
    processor = LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32]]
    )
    image = Image.new("RGB", (64, 32), (255, 255, 255))  # wide white image
    crops = anyres_crops(processor, [image], single_crop=True)
    assert crops.crops_per_image == [1] and crops.single_crop
    pixels = crops.pixel_values[0]
    # padded top and bottom with the background colour: rows near the top differ from the centre rows
    assert not torch.allclose(pixels[:, 2], pixels[:, 16])
    assert torch.allclose(pixels[:, 14], pixels[:, 16])


def test_crop_map_to_image_cuts_the_padding():
    crop_map = torch.zeros(4, 4)
    crop_map[1:3] = 1.0  # the image occupies the middle rows of the padded square
    out = crop_map_to_image(crop_map, (20, 40), padded_to_square=True)
    assert out.shape == (20, 40)
    assert float(out.mean()) > 0.8  # the padding (zeros) was cut away
    same = crop_map_to_image(crop_map, (20, 40), padded_to_square=False)
    assert torch.equal(same, crop_map)


def test_stage1_tower_level_tokens_equal_those_anomaly_ov_feeds_its_expert(tiny_zoo, tmp_path):
    """Same image -> the stage-1 tower path (crops + frozen tower) gives the expert exactly the final and
    level tokens AnomalyOV computes inside the multimodal model."""
    from hydra.utils import instantiate

    from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config

    config = OmegaConf.create(
        {
            "paths": {"zoo_dir": str(tiny_zoo.root)},
            "vision": OmegaConf.load("configs/model/vision/tiny_llava_ov.yaml"),
        }
    )
    tower = instantiate(config.vision)
    pipe = AnomalyOVPipeline.from_config(compose_config("chat", [f"paths.zoo_dir={tiny_zoo.root}"]))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(tmp_path / "part.png")
    item = sample(tmp_path / "part.png", 0, "x")
    crops = ImageCrops(pipe.processor.image_processor)(item)
    encoded = pipe.processor.encode_images([read_image(tmp_path / "part.png")])
    assert torch.equal(crops, encoded.pixel_values)  # the same crops
    stage1 = tower(crops)
    final, levels = pipe.model.vision_tokens(encoded.pixel_values)
    torch.testing.assert_close(stage1.final, final, rtol=0, atol=0)
    assert len(stage1.levels) == len(levels) == 4
    for ours, theirs in zip(stage1.levels, levels, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
