"""Vision towers: level taps of HF SigLIP / CLIP / LLaVA-OneVision towers and open_clip ViTs; AnyRes crops."""

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file, save_file

from anomaly_ov.data.crops import anyres_crops
from anomaly_ov.models import (
    AnomalyExpert,
    ExpertConfig,
    HFVisionTower,
    OpenCLIPVisionTower,
    build_llava_onevision_tower,
    build_siglip_tower,
    builders,
)

SIZES = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
}
LEVELS = [2, 3, 4, 5]


def tiny_siglip() -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    return SiglipVisionModel(SiglipVisionConfig(**SIZES, intermediate_size=128)).eval()


def tiny_clip() -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**SIZES, intermediate_size=128)).eval()


def tiny_open_clip_visual() -> torch.nn.Module:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=64, patch_size=8, width=64, layers=6, heads=4, mlp_ratio=2.0).eval()


def assert_level_shapes(features, num_crops: int) -> None:
    assert features.final.shape == (num_crops, 64, 64)
    assert len(features.levels) == 4
    assert all(level.shape == (num_crops, 64, 64) for level in features.levels)


def test_siglip_tower_taps_hidden_states_without_post_layernorm() -> None:
    model = tiny_siglip()
    tower = HFVisionTower(model, level_layers=LEVELS, final_layer=-1)
    assert (tower.hidden_size, tower.grid, tower.num_tokens, tower.image_size) == (64, 8, 64, 64)
    pixels = torch.randn(3, 3, 64, 64)
    features = tower(pixels)
    assert_level_shapes(features, 3)
    with torch.no_grad():
        reference = model(pixel_values=pixels, output_hidden_states=True)
    assert len(reference.hidden_states) == 7  # embeddings + 6 blocks
    for level, index in zip(features.levels, LEVELS, strict=True):
        torch.testing.assert_close(level, reference.hidden_states[index])
    torch.testing.assert_close(features.final, reference.hidden_states[6])
    assert not torch.allclose(features.final, reference.last_hidden_state)  # that one is post-layernorm
    # Negative indices count from the end: -5..-2 are blocks 2..5 of 6.
    negative = HFVisionTower(model, level_layers=[-5, -4, -3, -2], final_layer=6)
    assert negative.level_layers == (2, 3, 4, 5) and negative.final_layer == 6


def test_image_size_need_not_be_a_multiple_of_the_patch_size() -> None:
    # SigLIP-so400m: 384 px, 14-px patches -> a 27x27 grid (the convolution drops the remainder). Same here
    # at tiny size: 60 px, 8-px patches -> 7x7.
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(**{**SIZES, "image_size": 60}, intermediate_size=128)
    tower = HFVisionTower(SiglipVisionModel(config).eval(), level_layers=LEVELS)
    assert (tower.grid, tower.num_tokens) == (7, 49)
    features = tower(torch.randn(2, 3, 60, 60))
    assert features.final.shape == (2, 49, 64)


def test_clip_tower_drops_the_class_token() -> None:
    model = tiny_clip()
    tower = HFVisionTower(model, level_layers=LEVELS, num_prefix_tokens=1)
    pixels = torch.randn(2, 3, 64, 64)
    features = tower(pixels)
    assert_level_shapes(features, 2)
    with torch.no_grad():
        reference = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert reference[2].shape[1] == 65
    torch.testing.assert_close(features.levels[0], reference[2][:, 1:])
    torch.testing.assert_close(features.final, reference[6][:, 1:])
    with pytest.raises(ValueError, match="tower returns 65 tokens per crop; expected 0 prefix"):
        HFVisionTower(model, level_layers=LEVELS)(pixels)


def test_open_clip_tower_matches_block_outputs() -> None:
    visual = tiny_open_clip_visual()
    tower = OpenCLIPVisionTower(visual, level_layers=LEVELS, final_layer=-1)
    assert (tower.hidden_size, tower.grid, tower.num_tokens, tower.image_size) == (64, 8, 64, 64)
    block_outputs: list[torch.Tensor] = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: block_outputs.append(out))
        for block in visual.transformer.resblocks
    ]
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        visual(pixels)
    for hook in hooks:
        hook.remove()
    assert visual.transformer.batch_first and len(block_outputs) == 6
    features = tower(pixels)
    assert_level_shapes(features, 2)
    for level, index in zip(features.levels, LEVELS, strict=True):
        torch.testing.assert_close(level, block_outputs[index - 1][:, 1:])  # hidden state i = block i output
    torch.testing.assert_close(features.final, block_outputs[5][:, 1:])
    with pytest.raises(ValueError, match="hidden-state index 0"):
        OpenCLIPVisionTower(visual, level_layers=[0, 2])
    with pytest.raises(TypeError, match="open_clip VisionTransformer"):
        OpenCLIPVisionTower(torch.nn.Linear(2, 2), level_layers=[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: HFVisionTower(tiny_siglip(), LEVELS),
        lambda: OpenCLIPVisionTower(tiny_open_clip_visual(), LEVELS),
    ],
)
def test_towers_are_frozen(make) -> None:
    tower = make()
    assert all(not p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.backbone.training
    pixels = torch.randn(1, 3, 64, 64, requires_grad=True)
    features = tower(pixels)
    assert not features.final.requires_grad and not any(level.requires_grad for level in features.levels)


def test_bad_tower_arguments_are_named() -> None:
    model = tiny_siglip()
    with pytest.raises(ValueError, match=r"level_layers=7 is out of range for a tower with 6 blocks"):
        HFVisionTower(model, level_layers=[2, 7])
    with pytest.raises(ValueError, match=r"final_layer=-8 is out of range"):
        HFVisionTower(model, level_layers=LEVELS, final_layer=-8)
    with pytest.raises(ValueError, match="level_layers is empty"):
        HFVisionTower(model, level_layers=[])
    with pytest.raises(
        ValueError, match=r"pixel_values has shape \(2, 3, 32, 32\); expected \[N, 3, 64, 64\]"
    ):
        HFVisionTower(model, LEVELS)(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="dtype='float64' is not one of"):
        build_siglip_tower("x", LEVELS, dtype="float64")


# ---------------------------------------------------------------------------------------------------------
# The tiny zoo through the configs and the builder (the same code path as the real checkpoints).

TINY_CONFIGS = ["tiny_siglip", "tiny_clip", "tiny_open_clip", "tiny_llava_ov"]


def instantiate_tower(project_root: Path, name: str, zoo_root: Path):
    config = OmegaConf.create(
        {
            "paths": {"zoo_dir": str(zoo_root)},
            "tower": OmegaConf.load(project_root / "configs" / "model" / "vision" / f"{name}.yaml"),
        }
    )
    return instantiate(config.tower)


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_tiny_zoo_towers_give_documented_shapes(project_root: Path, tiny_zoo, name: str) -> None:
    tower = instantiate_tower(project_root, name, tiny_zoo.root)
    expected_class = OpenCLIPVisionTower if name == "tiny_open_clip" else HFVisionTower
    assert isinstance(tower, expected_class)
    assert (tower.hidden_size, tower.grid, tower.num_tokens, tower.num_blocks) == (64, 8, 64, 6)
    assert tower.level_layers == (2, 3, 4, 5) and tower.final_layer == 6
    features = tower(torch.randn(2, 3, 64, 64))
    assert_level_shapes(features, 2)
    assert len({float(level.std()) for level in features.levels}) == 4  # four distinct taps


def test_llava_onevision_tower_is_the_checkpoint_tower(tiny_zoo) -> None:
    from transformers import LlavaOnevisionForConditionalGeneration

    tower = build_llava_onevision_tower(str(tiny_zoo.llava_ov), LEVELS)
    full = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_zoo.llava_ov).eval()
    reference_state = full.model.vision_tower.state_dict()
    state = tower.backbone.state_dict()
    assert set(state) == set(reference_state)
    assert all(torch.equal(state[k], reference_state[k]) for k in state)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = full.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    # LLaVA-OneVision's own image features read hidden_states[vision_feature_layer] = [-1].
    assert full.config.vision_feature_layer == -1
    torch.testing.assert_close(tower(pixels).final, hidden[-1])


def test_builder_refuses_a_partly_missing_checkpoint(tmp_path: Path, tiny_zoo) -> None:
    folder = tmp_path / "siglip"
    shutil.copytree(tiny_zoo.siglip, folder)
    weights = next(folder.glob("*.safetensors"))
    state = load_file(weights)
    dropped = sorted(k for k in state if "layers.3." in k)
    save_file({k: v for k, v in state.items() if k not in dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights are incomplete \(missing keys .*layers\.3\."):
        build_siglip_tower(str(folder), LEVELS)


def test_builder_dtype(tiny_zoo) -> None:
    tower = build_siglip_tower(str(tiny_zoo.siglip), LEVELS, dtype="bfloat16")
    assert tower.dtype == torch.bfloat16
    assert tower(torch.randn(1, 3, 64, 64)).final.dtype == torch.bfloat16


# Each vision config and the builder of its backend: one builder per backend, no backend key.
VISION_BUILDERS = {
    "siglip_so400m": "build_siglip_tower",
    "tiny_siglip": "build_siglip_tower",
    "tiny_clip": "build_clip_tower",
    "llava_ov_05b": "build_llava_onevision_tower",
    "llava_ov_7b": "build_llava_onevision_tower",
    "tiny_llava_ov": "build_llava_onevision_tower",
    "open_clip_vit_l14_336": "build_open_clip_tower",
    "tiny_open_clip": "build_open_clip_tower",
    "dinov2_s14": "build_dinov2_tower",
    "dinov2_s14_random": "build_random_dinov2_tower",
}


def _vision_config(folder: Path, name: str) -> dict:
    """The group option as Hydra composes it: the options its defaults list names, then its own keys."""
    config = OmegaConf.load(folder / f"{name}.yaml")
    merged = OmegaConf.create()
    for base in config.pop("defaults", []):
        merged = OmegaConf.merge(merged, config if base == "_self_" else _vision_config(folder, base))
    return OmegaConf.to_container(OmegaConf.merge(merged, config))


def test_all_vision_configs_bind_to_their_backend_builder(project_root: Path) -> None:
    folder = project_root / "configs" / "model" / "vision"
    names = sorted(path.stem for path in folder.glob("*.yaml"))
    assert names == sorted(VISION_BUILDERS)
    for name in names:
        config = _vision_config(folder, name)
        builder = VISION_BUILDERS[name]
        assert config.pop("_target_") == f"anomaly_ov.models.builders.{builder}", name
        parameters = inspect.signature(getattr(builders, builder)).parameters
        # Every key is one the builder reads, and the config sets them all: no ignored or defaulted keys.
        assert set(config) == set(parameters), name
        if name in ("llava_ov_05b", "llava_ov_7b", "siglip_so400m"):
            assert config["level_layers"] == [7, 13, 19, 25], name


# ---------------------------------------------------------------------------------------------------------
# AnyRes crops come from transformers' LLaVA-OneVision image processor.


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_image_processor():
    from transformers import LlavaOnevisionImageProcessor

    pinpoints = [[64 * i, 64 * j] for i in range(1, 4) for j in range(1, 4)]
    return LlavaOnevisionImageProcessor(size={"height": 64, "width": 64}, image_grid_pinpoints=pinpoints)


def test_anyres_crops_unpad_the_processor_batch() -> None:
    processor = tiny_image_processor()
    images = [random_image(100, 150, 0), random_image(64, 64, 1)]
    crops = anyres_crops(processor, images)
    # 100x150 fits best in 128x192 (no upscaling past the original area, least padding): 2x3 tiles + whole
    # image = 7 crops; 64x64 fits 64x64: one tile + whole image = 2 crops.
    assert crops.crops_per_image == [7, 2]
    assert crops.pixel_values.shape == (9, 3, 64, 64)
    assert crops.image_sizes == [(100, 150), (64, 64)]
    batch = processor(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(crops.pixel_values[:7], batch[0, :7])
    torch.testing.assert_close(crops.pixel_values[7:], batch[1, :2])
    # A 64x64 image: the whole-image crop and its single tile are the same pixels.
    torch.testing.assert_close(crops.pixel_values[7], crops.pixel_values[8])
    views = anyres_crops(processor, images, single_crop=True)
    assert views.crops_per_image == [1, 1] and views.pixel_values.shape == (2, 3, 64, 64)
    # A lone image in single-crop mode is one square crop too, the same pixels as in a batch of views.
    lone = anyres_crops(processor, images[:1], single_crop=True)
    assert lone.crops_per_image == [1] and lone.pixel_values.shape == (1, 3, 64, 64)
    assert lone.image_sizes == [(100, 150)]
    torch.testing.assert_close(lone.pixel_values[0], views.pixel_values[0])
    with pytest.raises(ValueError, match="images is empty"):
        anyres_crops(processor, [])


def test_anyres_crops_through_the_zoo_tower_and_expert(tiny_zoo) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_zoo.llava_ov).image_processor
    crops = anyres_crops(
        processor, [random_image(100, 150, 0), random_image(80, 60, 2), random_image(64, 64, 3)]
    )
    tower = build_llava_onevision_tower(str(tiny_zoo.llava_ov), LEVELS)
    features = tower(crops.pixel_values)
    torch.manual_seed(0)
    expert = AnomalyExpert(ExpertConfig(vision_dim=tower.hidden_size, expert_dim=32, grid=tower.grid))
    out = expert(features.final, features.levels, crops.crops_per_image)
    assert out.scores.shape == (3,) and out.maps.shape == (sum(crops.crops_per_image), 8, 8)


def test_siglip_backend_reads_a_full_siglip_checkpoint(tmp_path: Path) -> None:
    # google/siglip-so400m-patch14-384 is a full SiglipModel (text + vision); the builder takes its tower.
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    config = SiglipConfig(
        vision_config={**SIZES, "intermediate_size": 128},
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    )
    full = SiglipModel(config).eval()
    full.save_pretrained(tmp_path / "siglip_full")
    tower = build_siglip_tower(str(tmp_path / "siglip_full"), LEVELS)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    features = tower(pixels)
    torch.testing.assert_close(features.final, hidden[-1])
    torch.testing.assert_close(features.levels[1], hidden[3])


def test_tower_record_identifies_the_weights_across_dtypes() -> None:
    from anomaly_ov.models.vision import same_tower_weights

    tower = HFVisionTower(tiny_siglip(), LEVELS)
    record = tower.record("tiny")
    assert record["level_layers"] == LEVELS and record["final_layer"] == 6
    assert record["name_or_path"] == "tiny"
    half = HFVisionTower(tiny_siglip().to(torch.bfloat16), LEVELS).record("tiny")
    assert same_tower_weights(record["patch_embedding_sample"], half["patch_embedding_sample"])
    other = HFVisionTower(tiny_clip(), LEVELS).record("clip")
    assert not same_tower_weights(record["patch_embedding_sample"], other["patch_embedding_sample"])
    open_clip = OpenCLIPVisionTower(tiny_open_clip_visual(), LEVELS).record("open_clip")
    assert len(open_clip["patch_embedding_sample"]) == len(record["patch_embedding_sample"])
