"""The tiny offline zoo: tokenizer, vision towers, open_clip and LLaVA-OneVision, built and reloaded."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data as skimage_data
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaOnevisionForConditionalGeneration,
    Qwen2TokenizerFast,
    SiglipVisionModel,
)

from anomaly_ov.zoo import (
    MANIFEST_NAME,
    ZOO_FOLDERS,
    build_tiny_llava_ov,
    build_tiny_open_clip,
    build_tiny_zoo,
    cli_main,
    load_tiny_open_clip,
)
from anomaly_ov.zoo.tokenizer import SPECIAL_TOKENS

PROMPT = "<|im_start|>user\n<image>\nIs there any anomaly in the image?<|im_end|>\n<|im_start|>assistant\n"


def _photo(height: int, width: int) -> Image.Image:
    """A real RGB photo (skimage's astronaut), cropped and resized to height x width."""
    return Image.fromarray(skimage_data.astronaut()[:300, 50:500]).resize((width, height), Image.BICUBIC)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of every safetensors file in a folder, keyed by file and tensor name."""
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    assert tensors, f"no safetensors in {folder}"
    return tensors


@pytest.fixture(scope="module")
def tokenizer(tiny_zoo):
    return AutoTokenizer.from_pretrained(tiny_zoo.tokenizer)


@pytest.fixture(scope="module")
def processor(tiny_zoo):
    return AutoProcessor.from_pretrained(tiny_zoo.llava_ov)


@pytest.fixture(scope="module")
def llava(tiny_zoo):
    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_zoo.llava_ov).eval()


# --- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_is_qwen2_style(tokenizer):
    assert isinstance(tokenizer, Qwen2TokenizerFast)
    assert 1000 <= len(tokenizer) <= 2000
    assert tokenizer.bos_token is None
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    # no BOS / EOS is added around plain text
    ids = tokenizer("a crack").input_ids
    assert not set(ids) & set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))


def test_tokenizer_round_trips_text_with_special_tokens(tokenizer):
    texts = [
        "<|im_start|>user\n<image>\nIs there a defect?<|im_end|>\n<|im_start|>assistant\nA crack.<|im_end|>",
        "with moderately suspicious features: ",
        "Unseen words, digits 31415 and unicode: Größe, 缺陷, 🙂 <video>\n\n  two spaces",
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_single_ids(tokenizer, tiny_zoo):
    ids = [tokenizer.encode(token) for token in SPECIAL_TOKENS]
    assert all(len(token_ids) == 1 for token_ids in ids)
    assert len({token_ids[0] for token_ids in ids}) == len(SPECIAL_TOKENS)
    assert tokenizer.image_token == "<image>"
    assert tokenizer.encode("<image>") == [tokenizer.image_token_id]
    assert tokenizer.encode("<video>") == [tokenizer.video_token_id]
    config = json.loads((tiny_zoo.llava_ov / "config.json").read_text())
    assert config["image_token_index"] == tokenizer.image_token_id
    assert config["video_token_index"] == tokenizer.video_token_id
    assert config["text_config"]["vocab_size"] == len(tokenizer)


def test_severity_words_and_defect_vocabulary_are_whole_tokens(tokenizer):
    for word in [
        "slightly",
        "moderately",
        "highly",
        "defect",
        "anomaly",
        "scratch",
        "crack",
        "contamination",
    ]:
        assert len(tokenizer.tokenize(" " + word)) == 1, word
    # the SPEC §3 text splits into the same six pieces as with Qwen2's tokenizer
    pieces = tokenizer.tokenize("with slightly suspicious features: ")
    assert pieces == ["with", "Ġslightly", "Ġsuspicious", "Ġfeatures", ":", "Ġ"]


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "user", "content": "Is it normal?"}, {"role": "assistant", "content": "Yes."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nIs it normal?<|im_end|>\n"
        "<|im_start|>assistant\nYes.<|im_end|>\n"
    )
    with_system = [{"role": "system", "content": "Inspect."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    assert (
        rendered
        == "<|im_start|>system\nInspect.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # processor-style typed content: the image placeholder comes first on its own line
    typed = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Any defect?"}]}]
    rendered = tokenizer.apply_chat_template(typed, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\n<image>\nAny defect?<|im_end|>\n<|im_start|>assistant\n")


# --- LLaVA-OneVision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "crops", "image_tokens"),
    [
        # best pinpoint 64x64: base crop + 1 tile; 64 base + 8x8 tile features + 8 newlines
        (64, 64, 2, 136),
        # best pinpoint 128x128 (same kept pixels as 128x192, less padding): base + 2x2 tiles; the 16x16
        # tile grid is unpadded to 10 rows (80 * 16 / 120 = 10.67 -> 10, 3 rows cut each side):
        # 64 + 10 * 16 + 10 newlines
        (80, 120, 5, 234),
    ],
)
def test_processor_expands_image_token_to_model_features(
    processor, llava, height, width, crops, image_tokens
):
    inputs = processor(text=PROMPT, images=_photo(height, width), return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, crops, 3, 64, 64)
    assert inputs["image_sizes"].tolist() == [[height, width]]
    assert int((inputs["input_ids"] == llava.config.image_token_index).sum()) == image_tokens
    with torch.no_grad():
        features = llava.model.get_image_features(
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            batch_num_images=inputs["batch_num_images"],
        ).pooler_output
        logits = llava(**inputs).logits  # raises on a token / feature count mismatch
    assert [f.shape for f in features] == [torch.Size([image_tokens, 64])]
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_llava_ov_reloads_to_identical_logits_and_generates(processor, llava, tokenizer):
    fresh = build_tiny_llava_ov(tokenizer, seed=0)
    inputs = processor(text=PROMPT, images=_photo(80, 120), return_tensors="pt")
    with torch.no_grad():
        reloaded_logits = llava(**inputs).logits
        fresh_logits = fresh(**inputs).logits
    assert torch.equal(reloaded_logits, fresh_logits)

    generated = llava.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new_tokens) <= 4
    assert int(new_tokens.max()) < len(tokenizer)


def test_llava_ov_config_matches_the_interface(llava, processor):
    config = llava.config
    assert config.vision_feature_layer == -1
    assert config.vision_feature_select_strategy == "full"
    assert config.vision_aspect_ratio == "anyres_max_9"
    pinpoints = [[64 * i, 64 * j] for i in range(1, 4) for j in range(1, 4)]
    assert config.image_grid_pinpoints == pinpoints
    assert processor.image_processor.image_grid_pinpoints == pinpoints
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (
        64,
        8,
        64,
        6,
    )
    assert (vision.num_attention_heads, vision.intermediate_size, vision.vision_use_head) == (4, 128, False)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 4)
    assert text.num_key_value_heads == 2
    assert processor.num_image_tokens == 64
    assert processor.vision_feature_select_strategy == "full"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it normal?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n<image>\nIs it normal?<|im_end|>\n<|im_start|>assistant\n")


# --- vision towers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "model_class", "tokens"), [("siglip", SiglipVisionModel, 64), ("clip", CLIPVisionModel, 65)]
)
def test_hf_vision_towers_load_with_seven_hidden_states(tiny_zoo, folder, model_class, tokens):
    path = getattr(tiny_zoo, folder)
    model = model_class.from_pretrained(path).eval()
    image_processor = AutoImageProcessor.from_pretrained(path)
    pixels = image_processor(images=[_photo(90, 70), _photo(64, 64)], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (2, 3, 64, 64)
    with torch.no_grad():
        hidden_states = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden_states) == 7
    assert all(tuple(h.shape) == (2, tokens, 64) for h in hidden_states)
    assert not torch.equal(hidden_states[2], hidden_states[5])


def test_open_clip_loads_offline_and_encodes_an_image(tiny_zoo):
    model = load_tiny_open_clip(tiny_zoo.open_clip)
    visual = model.visual
    assert tuple(visual.positional_embedding.shape) == (65, 64)
    assert len(visual.transformer.resblocks) == 6
    assert visual.image_size == (64, 64)
    mean = torch.tensor(visual.preprocess_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(visual.preprocess_cfg["std"]).view(3, 1, 1)
    image = torch.from_numpy(np.array(_photo(64, 64))).permute(2, 0, 1).float() / 255
    pixels = ((image - mean) / std)[None]
    with torch.no_grad():
        embedding = model.encode_image(pixels)
        expected = build_tiny_open_clip(seed=0).encode_image(pixels)
    assert embedding.shape == (1, 64)
    assert torch.equal(embedding, expected)


def test_open_clip_loader_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"open_clip_config\.json"):
        load_tiny_open_clip(tmp_path)


# --- building, determinism, reuse ------------------------------------------------------------------


def test_same_seed_gives_identical_weights_other_seed_differs(tiny_zoo, tmp_path):
    again = build_tiny_zoo(tmp_path / "zoo", seed=0)
    for name in ("siglip", "clip", "open_clip", "llava_ov"):
        reference, rebuilt = _weights(getattr(tiny_zoo, name)), _weights(getattr(again, name))
        assert reference.keys() == rebuilt.keys()
        assert all(torch.equal(reference[k], rebuilt[k]) for k in reference), name
    assert (tiny_zoo.tokenizer / "tokenizer.json").read_text() == (
        again.tokenizer / "tokenizer.json"
    ).read_text()

    other = build_tiny_zoo(tmp_path / "zoo", seed=1, overwrite=True)
    assert json.loads((other.root / MANIFEST_NAME).read_text())["seed"] == 1
    for name in ("siglip", "clip", "open_clip", "llava_ov"):
        reference, reseeded = _weights(getattr(tiny_zoo, name)), _weights(getattr(other, name))
        assert not all(torch.equal(reference[k], reseeded[k]) for k in reference), name
    # the staging folder was moved into place, nothing is left next to the zoo
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]


def test_existing_zoo_is_reused_and_foreign_folders_are_refused(tiny_zoo, tmp_path):
    manifest = tiny_zoo.root / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns
    assert build_tiny_zoo(tiny_zoo.root, seed=0) == tiny_zoo
    assert manifest.stat().st_mtime_ns == before
    assert sorted(p.name for p in tiny_zoo.root.iterdir()) == sorted([MANIFEST_NAME, *ZOO_FOLDERS])

    with pytest.raises(FileExistsError, match="overwrite"):
        build_tiny_zoo(tiny_zoo.root, seed=1)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a tiny zoo"):
            build_tiny_zoo(foreign, seed=0, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_prints_paths_and_reports_errors(tiny_zoo, capsys):
    assert cli_main(["--out", str(tiny_zoo.root), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    for name in ZOO_FOLDERS:
        assert str(getattr(tiny_zoo, name)) in printed
    assert cli_main(["--out", str(tiny_zoo.root), "--seed", "3"]) == 1
    assert "--overwrite" in capsys.readouterr().err
