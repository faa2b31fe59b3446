"""The 0.5B shape the benchmarks build: checked against the published checkpoint's numbers."""

from dataclasses import replace

import torch
from transformers import LlavaOnevisionForConditionalGeneration

from anomaly_ov.zoo.shapes import LLAVA_OV_05B, llava_onevision_config


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_05b_shape_has_qwen2_05b_parameter_count_and_27x27_tiles():
    config = llava_onevision_config(LLAVA_OV_05B, image_token_index=151_646)
    with torch.device("meta"):  # shapes only, no memory
        model = LlavaOnevisionForConditionalGeneration(config)
    # Qwen2-0.5B (tied embeddings): 494,032,768 parameters, as its released safetensors hold
    assert _parameters(model.model.language_model) == 494_032_768
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert LLAVA_OV_05B.crop_grid == 27 and config.vision_config.image_size == 384
    assert len(config.image_grid_pinpoints) == 36 and max(map(max, config.image_grid_pinpoints)) == 2304
    assert config.vision_aspect_ratio == "anyres_max_9"


def test_reduced_layers_change_only_the_depth():
    shape = replace(LLAVA_OV_05B, llm_layers=2, vision_layers=4, tie_word_embeddings=False)
    config = llava_onevision_config(shape, image_token_index=151_646, eos_token_id=151_645)
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.num_hidden_layers == 4
    assert config.text_config.hidden_size == 896 and config.vision_config.hidden_size == 1152
    assert config.text_config.eos_token_id == 151_645 and not config.text_config.tie_word_embeddings
