"""Inference on what users bring: camera JPEGs with an EXIF orientation, 16-bit PNGs, a LLaVA-OneVision
checkpoint shaped like llava-hf's (not the tiny zoo's), and saved folders with a wrong or broken file."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoTokenizer
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

from anomaly_ov.checkpoints.model_folder import load_anomaly_ov, save_anomaly_ov
from anomaly_ov.data.tokens import anomaly_token_count
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config
from anomaly_ov.zoo.shapes import LLAVA_OV_05B, write_llava_onevision

QUESTION = [{"from": "human", "value": "<image>\nIs there any anomaly in the image?"}]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads (and spin on shared CPUs); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------ image files


# --------------------------------------------------------------------------------------------- llava-hf shape


@pytest.fixture(scope="module")
def llava_hf_like(tiny_zoo, tmp_path_factory):
    """llava-hf/llava-onevision-qwen2-0.5b-ov-hf's structure at toy width: SigLIP with 26 blocks, patch 14
    at 384 px (27x27 tokens, 384 is no multiple of 14), pinpoints 384..2304 per side, "full" features of
    layer -1, tied word embeddings, bfloat16 weights on disk."""
    folder = tmp_path_factory.mktemp("llava_hf_like")
    tokenizer = AutoTokenizer.from_pretrained(tiny_zoo.llava_ov)
    shape = replace(
        LLAVA_OV_05B,
        vision_width=32,
        vision_mlp=64,
        vision_heads=2,
        llm_width=32,
        llm_mlp=64,
        llm_heads=4,
        llm_layers=2,
        vocab_size=len(tokenizer) + 16,  # the real embedding table is larger than the tokenizer, too
    )
    assert shape.vision_layers == 26 and shape.tie_word_embeddings
    return write_llava_onevision(folder, shape, tokenizer, dtype=torch.bfloat16)


def test_a_llava_hf_shaped_checkpoint_runs_through_the_released_configs(tiny_zoo, llava_hf_like):
    config = compose_config(
        "predict",
        [
            f"paths.zoo_dir={tiny_zoo.root}",
            "model/llm=llava_ov_05b",
            "model/expert=anomaly_ov",
            f"model.llm.name_or_path={llava_hf_like}",
            "model.llm.dtype=float32",
            "model.llm.device_map=null",
            # only the widths shrink; grid 27, 2x2 pooling, levels 7/13/19/25 stay the released ones
            "model.expert.vision_dim=32",
            "model.expert.expert_dim=16",
            "model.expert.attention_dim=16",
            "model.expert.score_hidden_dim=16",
            "generation.max_new_tokens=2",
        ],
    )
    pipe = AnomalyOVPipeline.from_config(config)
    assert pipe.processor.patch_size == 14 and pipe.model.level_layers == (7, 13, 19, 25)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 700, 3), dtype=np.uint8))
    sample = pipe.processor.encode(QUESTION, [image], add_generation_prompt=True)
    rows, cols = get_anyres_image_grid_shape(
        [300, 700], pipe.processor.image_processor.image_grid_pinpoints, 384
    )
    assert sample.images.pixel_values.shape == (1 + rows * cols, 3, 384, 384) and (rows, cols) == (1, 2)
    anomaly_id = pipe.model.placeholders.anomaly
    assert sample.input_ids.count(anomaly_id) == anomaly_token_count((rows, cols), 2)

    answer = pipe.answer([QUESTION], [[image]])[0]
    finding = answer.images[0]
    assert finding.anomaly_map.shape == (27, 27) and 0.0 <= finding.score <= 1.0


# ---------------------------------------------------------------------------------------------- saved folders


def test_a_saved_folder_with_a_wrong_projector_or_manifest_names_the_file(tiny_zoo, tmp_path):
    config = compose_config("chat", [f"paths.zoo_dir={tiny_zoo.root}"])
    pipe = AnomalyOVPipeline.from_config(config)
    folder = save_anomaly_ov(pipe.model, pipe.processor, tmp_path / "model", config.model)

    # a projector of another LLaVA-OneVision size (e.g. 7B's copied into a 0.5B folder)
    projector = folder / "projector.safetensors"
    save_file(
        {
            "multi_modal_projector.linear_1.weight": torch.zeros(32, 64),
            "multi_modal_projector.linear_1.bias": torch.zeros(32),
            "multi_modal_projector.linear_2.weight": torch.zeros(32, 32),
            "multi_modal_projector.linear_2.bias": torch.zeros(32),
            "image_newline": torch.zeros(32),
        },
        str(projector),
    )
    with pytest.raises(ValueError, match=r"projector\.safetensors does not fit"):
        load_anomaly_ov(folder)

    (folder / "anomaly_ov.json").write_text(json.dumps({"format": "anomaly-ov"})[:-1])
    with pytest.raises(ValueError, match=r"anomaly_ov\.json: not valid JSON"):
        load_anomaly_ov(folder)
