"""Anomaly-OV on the tiny zoo: the exact embedded sequence of SPEC §3 (checked against transformers'
LLaVA-OneVision and a loop-written layout), severity words, reserved positions, batching, generate,
save/load."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

from anomaly_ov.checkpoints.model_folder import load_anomaly_ov, save_anomaly_ov
from anomaly_ov.data.tokens import ANOMALY_TOKEN, SEVERITY_TOKEN, anomaly_token_count
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.models.processor import AnomalyOVProcessor, severity_token_ids

QUESTION = "Is there any anomaly in the image?"


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _config(zoo, *overrides: str):
    return compose_config("chat", [f"paths.zoo_dir={zoo.root}", *overrides])


@pytest.fixture(scope="module")
def pipeline(tiny_zoo) -> AnomalyOVPipeline:
    return AnomalyOVPipeline.from_config(_config(tiny_zoo, "generation.max_new_tokens=8"))


def _inputs(batch):
    return {key: value for key, value in batch.items() if key != "labels"}


def _runs(ids: list[int], placeholders) -> list[tuple[str, int]]:
    """Run-length encoding of the reserved tokens of a sequence (text runs dropped): [(kind, count), ...]."""
    kinds = {placeholders.image: "image", placeholders.severity: "severity", placeholders.anomaly: "anomaly"}
    runs: list[tuple[str, int]] = []
    for token in ids:
        kind = kinds.get(token, "text")
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    return [run for run in runs if run[0] != "text"]


def _expected_word(score: float) -> str:
    return "slightly" if score < 0.3 else "moderately" if score < 0.7 else "highly"


def _reference_vision(model: AnomalyOV, crops: torch.Tensor, counts: list[int]):
    """Vision tower (all hidden states), expert and projector, called directly."""
    hidden = model.llava.model.vision_tower(crops, output_hidden_states=True).hidden_states
    final, levels = hidden[-1], [hidden[i] for i in (2, 3, 4, 5)]
    expert = model.expert(final, levels, counts)
    return final, expert, model.llava.model.multi_modal_projector


def _expected_anomaly(project, expert, image: int, first_crop: int, tiles, newline) -> torch.Tensor:
    """SPEC §3 written with plain loops: [r, t_0 (4), tile-grid rows each followed by the newline]."""
    tokens = [project(expert.global_tokens[image])]
    tokens += [project(expert.local_tokens[first_crop, cell]) for cell in range(4)]
    if tiles is None:
        tokens.append(newline)
    else:
        tile_rows, tile_cols = tiles
        for row in range(2 * tile_rows):
            for col in range(2 * tile_cols):
                tile = (row // 2) * tile_cols + col // 2
                cell = (row % 2) * 2 + col % 2
                tokens.append(project(expert.local_tokens[first_crop + 1 + tile, cell]))
            tokens.append(newline)
    return torch.stack(tokens)


def _severity_embeds(model: AnomalyOV, tokenizer, word: str) -> torch.Tensor:
    ids = tokenizer(f"with {word} suspicious features: ", add_special_tokens=False)["input_ids"]
    return model.llava.get_input_embeddings()(torch.tensor(ids))


# ------------------------------------------------------------------------------------------------ layout


def test_anyres_image_layout_matches_transformers_and_spec(pipeline, tiny_zoo):
    model, processor = pipeline.model, pipeline.processor
    image = _image(80, 120, seed=1)
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[image]])
    ids = batch["input_ids"][0].tolist()

    # LLaVA-OneVision's own processor reserves the same number of image tokens
    hf = LlavaOnevisionProcessor.from_pretrained(tiny_zoo.llava_ov)(
        text="<image>", images=image, return_tensors="pt"
    )
    n_image = int((hf["input_ids"] == model.placeholders.image).sum())
    assert n_image == 234  # 64 base + 2x2 tiles unpadded to 10x16 + 10 newlines
    tiles = (2, 2)
    n_anomaly = 1 + 4 + (2 * 2) * (2 * 2 + 1)
    assert anomaly_token_count(tiles, 2) == n_anomaly == 25
    assert _runs(ids, model.placeholders) == [
        ("image", n_image),
        ("severity", 6),
        ("anomaly", n_anomaly),
    ]
    start = ids.index(model.placeholders.image)
    text_after = processor.tokenizer.decode(ids[start + n_image + 6 + n_anomaly :])
    assert text_after.startswith(f"\n{QUESTION}")

    with torch.no_grad():
        embedding = model.embed_inputs(**batch)
        # the ordinary image tokens are exactly transformers' LLaVA-OneVision features
        hf_features = model.llava.model.get_image_features(
            hf["pixel_values"], hf["image_sizes"], batch_num_images=hf["batch_num_images"]
        ).pooler_output[0]
        crops = batch["pixel_values"]
        assert torch.equal(crops, hf["pixel_values"][0, :5])
        _, expert, project = _reference_vision(model, crops, [5])
        word = _expected_word(float(expert.scores[0]))
        expected = torch.cat(
            [
                hf_features,
                _severity_embeds(model, processor.tokenizer, word),
                _expected_anomaly(project, expert, 0, 0, tiles, model.llava.model.image_newline),
            ]
        )
    block = embedding.inputs_embeds[0, start : start + n_image + 6 + n_anomaly]
    torch.testing.assert_close(block, expected, rtol=1e-5, atol=1e-5)
    assert embedding.images.severity_words == [word]
    assert (embedding.labels[0, start : start + n_image + 6 + n_anomaly] == -100).all()
    assert embedding.attention_mask.all()


def test_single_crop_image_layout(tiny_zoo, pipeline):
    model = pipeline.model
    processor = AnomalyOVProcessor(LlavaOnevisionProcessor.from_pretrained(tiny_zoo.llava_ov), anyres=False)
    image = _image(80, 120, seed=2)
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[image]])
    ids = batch["input_ids"][0].tolist()
    assert _runs(ids, model.placeholders) == [
        ("image", 64 + 1),
        ("severity", 6),
        ("anomaly", 1 + 4 + 1),
    ]
    # a single crop is encoded exactly as LLaVA-OneVision encodes a view of a multi-image sample
    views = processor.image_processor([[image, _image(64, 64, seed=3)]], return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert torch.equal(batch["pixel_values"][0], views[0, 0])
    assert batch["image_num_crops"].tolist() == [1]

    with torch.no_grad():
        embedding = model.embed_inputs(**batch)
        final, expert, project = _reference_vision(model, batch["pixel_values"], [1])
        newline = model.llava.model.image_newline
        expected = torch.cat(
            [
                project(final[0]),
                newline[None],
                _severity_embeds(model, processor.tokenizer, _expected_word(float(expert.scores[0]))),
                _expected_anomaly(project, expert, 0, 0, None, newline),
            ]
        )
    start = ids.index(model.placeholders.image)
    torch.testing.assert_close(embedding.inputs_embeds[0, start : start + 77], expected, rtol=1e-5, atol=1e-5)


def test_multi_view_sample_layout(pipeline, tiny_zoo):
    model, processor = pipeline.model, pipeline.processor
    views = [_image(64, 64, seed=4), _image(90, 70, seed=5)]
    batch = processor([[{"from": "human", "value": "<image>\n<image>\nCompare the two views."}]], [views])
    ids = batch["input_ids"][0].tolist()
    per_view = [("image", 65), ("severity", 6), ("anomaly", 6)]
    assert _runs(ids, model.placeholders) == per_view + per_view
    assert batch["image_num_crops"].tolist() == [1, 1]
    assert batch["batch_num_images"].tolist() == [2]

    hf = LlavaOnevisionProcessor.from_pretrained(tiny_zoo.llava_ov)(
        text="<image>\n<image>\nCompare", images=[views], return_tensors="pt"
    )
    assert int((hf["input_ids"] == model.placeholders.image).sum()) == 2 * 65
    with torch.no_grad():
        embedding = model.embed_inputs(**batch)
        hf_features = model.llava.model.get_image_features(
            hf["pixel_values"], hf["image_sizes"], batch_num_images=hf["batch_num_images"]
        ).pooler_output
        _, expert, project = _reference_vision(model, batch["pixel_values"], [1, 1])
        newline = model.llava.model.image_newline
    offset = 0
    for view in range(2):
        start = ids.index(model.placeholders.image, offset)
        word = _expected_word(float(expert.scores[view]))
        expected = torch.cat(
            [
                hf_features[view],
                _severity_embeds(model, processor.tokenizer, word),
                _expected_anomaly(project, expert, view, view, None, newline),
            ]
        )
        torch.testing.assert_close(
            embedding.inputs_embeds[0, start : start + 77], expected, rtol=1e-5, atol=1e-5
        )
        offset = start + 77
    assert embedding.images.severity_words == [_expected_word(float(s)) for s in expert.scores]


# ------------------------------------------------------------------------------------------------ severity


@pytest.mark.parametrize(
    ("bias", "thresholds", "word"),
    [
        (-8.0, (0.3, 0.7), "slightly"),
        (0.0, (0.3, 0.7), "moderately"),
        (8.0, (0.3, 0.7), "highly"),
        (0.0, (0.6, 0.9), "slightly"),
        (0.0, (0.1, 0.4), "highly"),
    ],
)
def test_severity_word_follows_score_and_thresholds(tiny_zoo, bias, thresholds, word):
    cfg = _config(tiny_zoo, f"model.expert.severity_thresholds=[{thresholds[0]},{thresholds[1]}]")
    pipe = AnomalyOVPipeline.from_config(cfg)
    model, processor = pipe.model, pipe.processor
    head = model.expert.score_head[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(bias)  # score = sigmoid(bias) whatever the image
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(64, 64, seed=6)]])
    with torch.no_grad():
        embedding = model.embed_inputs(**batch)
    assert float(embedding.images.expert.scores[0]) == pytest.approx(torch.sigmoid(torch.tensor(bias)).item())
    assert embedding.images.severity_words == [word]
    positions = batch["input_ids"][0] == model.placeholders.severity
    expected = _severity_embeds(model, processor.tokenizer, word)
    torch.testing.assert_close(embedding.inputs_embeds[0, positions], expected)


def test_severity_text_is_tokenized_with_the_real_tokenizer(pipeline):
    tokenizer = pipeline.processor.tokenizer
    ids = severity_token_ids(tokenizer)
    for word, tokens in ids.items():
        assert tokenizer.decode(tokens) == f"with {word} suspicious features: "
    assert pipeline.processor.placeholders.severity_slots == max(len(t) for t in ids.values()) == 6
    assert {SEVERITY_TOKEN, ANOMALY_TOKEN} <= set(tokenizer.get_vocab())


def test_unused_severity_slots_are_invisible(pipeline):
    """A severity text shorter than the reserved slots leaves masked holes: same logits as without them."""
    model, processor = pipeline.model, pipeline.processor
    wide = dataclasses.replace(processor.placeholders, severity_slots=9)
    padded_model = AnomalyOV(model.llava, model.expert, model.level_layers, wide, processor.severity_ids)
    turns = [{"from": "human", "value": f"<image>\n{QUESTION}"}]
    image = _image(64, 64, seed=7)
    compact = processor([turns], [[image]])
    ids = compact["input_ids"][0].tolist()
    first = ids.index(model.placeholders.severity)
    holes = torch.tensor(ids[:first] + [model.placeholders.severity] * 3 + ids[first:])[None]
    wide_batch = {**_inputs(compact), "input_ids": holes, "attention_mask": torch.ones_like(holes)}
    with torch.no_grad():
        reference = model(**_inputs(compact)).logits
        output = padded_model(**wide_batch)
    mask = output.embedding.attention_mask[0]
    assert mask[first : first + 3].tolist() == [0, 0, 0] and int(mask.sum()) == len(ids)
    torch.testing.assert_close(output.logits[0, mask.bool()], reference[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        a = model.generate(**_inputs(compact), max_new_tokens=6, do_sample=False).sequences
        b = padded_model.generate(**wide_batch, max_new_tokens=6, do_sample=False).sequences
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ errors


def test_reserved_position_mismatch_says_expected_and_found(pipeline):
    model, processor = pipeline.model, pipeline.processor
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(64, 64, seed=8)]])
    ids = batch["input_ids"]
    drop = int((ids[0] == model.placeholders.anomaly).nonzero()[0])
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[drop] = False
    broken = {**_inputs(batch), "input_ids": ids[:, keep], "attention_mask": batch["attention_mask"][:, keep]}
    expected = anomaly_token_count((1, 1), 2)
    with pytest.raises(
        ValueError, match=rf"sample 0: .*need {expected} <anomaly> positions.*found {expected - 1}"
    ):
        model.embed_inputs(**broken)
    with pytest.raises(ValueError, match="no pixel_values"):
        model.embed_inputs(ids, batch["attention_mask"])


def test_bad_prompts_and_images_are_named(pipeline):
    processor = pipeline.processor
    image = _image(64, 64, seed=9)
    with pytest.raises(ValueError, match=r"sample 0: .*0 <image> placeholder\(s\) but 1 image"):
        processor([[{"from": "human", "value": QUESTION}]], [[image]])
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but 1 image"):
        processor([[{"from": "human", "value": f"<image><image>\n{QUESTION}"}]], [[image]])
    with pytest.raises(
        ValueError, match=r"small\.png: the image is 6x5 pixels, smaller than the vision patch size 8"
    ):
        processor.encode_images([_image(5, 6, seed=10)], ["small.png"])


# ------------------------------------------------------------------------------------------------ batching


def _mixed_samples():
    return (
        [
            [{"from": "human", "value": f"<image>\n{QUESTION}"}],
            [{"from": "human", "value": "<image>\nDescribe the defect in detail, please."}],
            [{"from": "human", "value": "<image>\n<image>\nCompare the two views."}],
        ],
        [
            [_image(80, 120, seed=11)],
            [_image(64, 64, seed=12)],
            [_image(70, 90, seed=13), _image(64, 64, seed=14)],
        ],
    )


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_forward_equals_one_by_one(pipeline, padding_side):
    model, processor = pipeline.model, pipeline.processor
    conversations, images = _mixed_samples()
    batch = processor(conversations, images, padding_side=padding_side)
    with torch.no_grad():
        batched = model(**_inputs(batch))
        for row, (turns, sample_images) in enumerate(zip(conversations, images, strict=True)):
            single = processor([turns], [sample_images])
            alone = model(**_inputs(single))
            real = batch["attention_mask"][row].bool()
            torch.testing.assert_close(batched.logits[row, real], alone.logits[0], rtol=1e-4, atol=1e-5)
    assert batched.scores.shape == (4,)


def test_batched_generate_equals_one_by_one(pipeline):
    conversations, images = _mixed_samples()
    batched = pipeline.answer(conversations, images)
    for row, (turns, sample_images) in enumerate(zip(conversations, images, strict=True)):
        alone = pipeline.answer([turns], [sample_images])[0]
        assert alone.text == batched[row].text
        assert [f.score for f in alone.images] == pytest.approx(
            [f.score for f in batched[row].images], abs=1e-6
        )


def test_generate_with_kv_cache_equals_a_loop_without_it(pipeline):
    model, processor = pipeline.model, pipeline.processor
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(80, 120, seed=15)]])
    with torch.no_grad():
        generated = model.generate(**_inputs(batch), max_new_tokens=6, do_sample=False).sequences[0]
        # greedy decoding by hand: full forward passes, no cache
        ids, mask = batch["input_ids"], batch["attention_mask"]
        tokens = []
        for _ in range(6):
            logits = model(
                ids, mask, batch["pixel_values"], batch["image_sizes"], batch["image_num_crops"]
            ).logits
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if token == model.llava.generation_config.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
    assert generated.tolist() == tokens


def test_loss_counts_only_labelled_positions(pipeline):
    model, processor = pipeline.model, pipeline.processor
    turns = [
        {"from": "human", "value": f"<image>\n{QUESTION}"},
        {"from": "gpt", "value": "Yes, there is a crack."},
    ]
    batch = processor([turns], [[_image(64, 64, seed=16)]], add_generation_prompt=False, padding_side="right")
    with torch.no_grad():
        output = model(**batch)
        full = model(**{k: v for k, v in batch.items() if k != "labels"})
        reference = model.llava(
            inputs_embeds=output.embedding.inputs_embeds,
            attention_mask=output.embedding.attention_mask,
            position_ids=output.embedding.position_ids,
            labels=output.embedding.labels,
            use_cache=False,
        )
    labels = batch["labels"][0]
    assert (labels[batch["input_ids"][0] >= model.placeholders.image] == -100).all()
    shift_logits, shift_labels = full.logits[0, :-1], labels[1:]
    keep = shift_labels != -100
    assert 0 < int(keep.sum()) < len(keep) // 4  # most positions are image tokens without labels
    # the vocabulary projection is computed at the labelled positions only, with the same values
    assert output.logits.shape == (int(keep.sum()), full.logits.shape[-1])
    torch.testing.assert_close(output.logits, shift_logits[keep])
    expected = F.cross_entropy(shift_logits[keep], shift_labels[keep])
    torch.testing.assert_close(output.loss, expected)
    # transformers' own full-logits loss, 1e-5 relative
    torch.testing.assert_close(output.loss, reference.loss, rtol=1e-5, atol=0)


def test_loss_without_any_label_is_zero_with_a_graph(pipeline):
    model, processor = pipeline.model, pipeline.processor
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(64, 64, seed=3)]])
    batch["labels"] = torch.full_like(batch["input_ids"], -100)
    output = model(**batch)
    assert output.loss.item() == 0.0 and output.loss.requires_grad == any(
        p.requires_grad for p in model.parameters()
    )


def test_logits_to_keep_gives_the_last_positions(pipeline):
    model, processor = pipeline.model, pipeline.processor
    batch = processor(
        [[{"from": "human", "value": f"<image>\n{QUESTION}"}]] * 2,
        [[_image(64, 64, seed=4)], [_image(80, 120, seed=5)]],
    )
    batch.pop("labels")
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=1).logits
    assert last.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:])


def test_bfloat16_forward_runs(tiny_zoo):
    pipe = AnomalyOVPipeline.from_config(
        _config(tiny_zoo, "model.llm.dtype=bfloat16", "model.expert.dtype=bfloat16")
    )
    batch = pipe.processor(
        [[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(80, 120, seed=17)]]
    )
    with torch.no_grad():
        output = pipe.model(**_inputs(batch))
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.logits.float()).all()
    assert (
        len(pipe.answer([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(64, 64, seed=18)]]))
        == 1
    )


# ------------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("base_weights", [False, True])
def test_save_load_round_trip_gives_identical_logits(tiny_zoo, tmp_path, base_weights):
    lora = "model/lora=default" if not base_weights else "model/lora=none"
    cfg = (
        _config(tiny_zoo, lora, "model.lora.rank=4", "model.lora.alpha=8")
        if not base_weights
        else _config(tiny_zoo, lora)
    )
    pipe = AnomalyOVPipeline.from_config(cfg)
    model = pipe.model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every saved part away from its initial value
        for name, parameter in model.named_parameters():
            if "lora_" in name or "multi_modal_projector" in name or name.endswith("image_newline"):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
            if base_weights and "language_model.layers.0" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    batch = pipe.processor(
        [[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(80, 120, seed=19)]]
    )
    with torch.no_grad():
        before = model(**_inputs(batch)).logits

    folder = save_anomaly_ov(model, pipe.processor, tmp_path / "model", cfg.model, base_weights=base_weights)
    assert (folder / "expert.safetensors").is_file() and (folder / "projector.safetensors").is_file()
    assert (folder / "adapter").is_dir() != base_weights
    assert (folder / "base").is_dir() == base_weights
    loaded = load_anomaly_ov(folder)
    with torch.no_grad():
        after = loaded.model(
            **_inputs(
                loaded.processor(
                    [[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[_image(80, 120, seed=19)]]
                )
            )
        )
    assert torch.equal(before, after.logits)
    assert load_anomaly_ov(folder).model.expert.config == model.expert.config


@pytest.mark.parametrize("lora", ["none", "default"])
def test_trainable_parameters_follow_the_lora_option(tiny_zoo, lora):
    overrides = [f"model/lora={lora}"] + (["model.lora.rank=4"] if lora == "default" else [])
    pipe = AnomalyOVPipeline.from_config(_config(tiny_zoo, *overrides))
    model = pipe.model
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    projector = (64 * 64 + 64) * 2 + 64  # two Linear(64, 64) with bias + the image newline
    if lora == "default":
        # rank 4 on q, o (64->64), k, v (64->32), gate, up (64->128), down (128->64), 2 layers
        per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
        assert sum(trainable.values()) == 2 * per_layer + projector
        assert all("lora_" in n or "multi_modal_projector" in n or "image_newline" in n for n in trainable)
    else:
        language_model = sum(p.numel() for p in model.llava.model.language_model.parameters())
        lm_head = model.llava.lm_head.weight.numel()
        assert sum(trainable.values()) == language_model + lm_head + projector
    assert not any(n.startswith("expert.") or "vision_tower" in n for n in trainable)

    model.train()
    assert not model.expert.training and not model.llava.model.vision_tower.training
    turns = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "Yes, a crack."}]
    batch = pipe.processor(
        [turns], [[_image(64, 64, seed=20)]], add_generation_prompt=False, padding_side="right"
    )
    model(**batch).loss.backward()
    assert model.llava.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.expert.parameters())


def test_an_expert_trained_on_another_tower_is_refused(tiny_zoo, tmp_path):
    from anomaly_ov.models import AnomalyExpert, ExpertConfig
    from anomaly_ov.models.builders import build_llava_onevision_tower, build_siglip_tower
    from anomaly_ov.models.expert_io import load_expert, save_expert
    from anomaly_ov.models.mllm_builders import build_anomaly_ov, build_llm

    levels = [2, 3, 4, 5]
    own = build_llava_onevision_tower(str(tiny_zoo.llava_ov), levels)
    other = build_siglip_tower(str(tiny_zoo.siglip), levels)  # same shapes, other weights
    torch.manual_seed(0)
    expert = AnomalyExpert(ExpertConfig(vision_dim=64, expert_dim=32, grid=8))
    expert.tower_record = own.record(str(tiny_zoo.llava_ov))
    path = tmp_path / "expert.safetensors"
    save_expert(expert, path)
    loaded = load_expert(path)
    assert loaded.tower_record == expert.tower_record
    assert loaded.tower_record["level_layers"] == levels

    # Trained on this model's own tower: accepted, also when the model runs in bf16.
    build_anomaly_ov(build_llm(str(tiny_zoo.llava_ov), levels), loaded)
    build_anomaly_ov(build_llm(str(tiny_zoo.llava_ov), levels, dtype="bfloat16"), load_expert(path))

    llm = build_llm(str(tiny_zoo.llava_ov), levels)
    foreign = load_expert(path)
    foreign.tower_record = other.record(str(tiny_zoo.siglip))
    with pytest.raises(ValueError, match="weights differ"):
        build_anomaly_ov(llm, foreign)
    foreign.tower_record = {**own.record(str(tiny_zoo.llava_ov)), "level_layers": [1, 2, 3, 4]}
    with pytest.raises(ValueError, match=r"hidden states \[1, 2, 3, 4\]"):
        build_anomaly_ov(llm, foreign)
    # An expert without a record (a released .pth, a fresh one) is not checked.
    foreign.tower_record = None
    build_anomaly_ov(llm, foreign)


def test_without_expert_logits_equal_transformers_llava_onevision(tiny_zoo):
    """model/expert=none is plain LLaVA-OneVision: same logits as transformers' model on the same inputs."""
    plain = AnomalyOVPipeline.from_config(_config(tiny_zoo, "model/expert=none"))
    model, processor = plain.model, plain.processor
    assert model.expert is None and processor.placeholders.severity is None
    image = _image(80, 120, seed=21)
    batch = processor([[{"from": "human", "value": f"<image>\n{QUESTION}"}]], [[image]])
    ids = batch["input_ids"][0].tolist()
    assert ids.count(processor.placeholders.image) > 0
    assert set(ids) & set(tiny_zoo_reserved(processor)) == set()
    folder = tiny_zoo.root / "llava_ov"
    reference_model = LlavaOnevisionForConditionalGeneration.from_pretrained(folder).eval()
    base = LlavaOnevisionProcessor.from_pretrained(tiny_zoo.root / "llava_ov")
    reference_inputs = base.image_processor([image], return_tensors="pt")
    with torch.no_grad():
        ours = model(**_inputs(batch)).logits
        theirs = reference_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=reference_inputs["pixel_values"],
            image_sizes=reference_inputs["image_sizes"],
        ).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def tiny_zoo_reserved(processor) -> list[int]:
    """Ids of the expert's placeholder tokens, if the tokenizer knows them."""
    vocab = processor.tokenizer.get_vocab()
    return [vocab[token] for token in (SEVERITY_TOKEN, ANOMALY_TOKEN) if token in vocab]


@pytest.mark.parametrize("sizes", [[(64, 64)], [(80, 120)], [(200, 90)], [(64, 64), (80, 120)]])
def test_token_ids_from_sizes_equal_the_encoded_ids(pipeline, sizes):
    """Stage 2 plans lengths from image headers: the pixel-free ids equal those of a full encoding."""
    processor = pipeline.processor
    images = [_image(h, w, seed=h + w) for h, w in sizes]
    turns = [
        {"from": "human", "value": "<image>\n" * len(images) + QUESTION},
        {"from": "gpt", "value": "No."},
    ]
    encoded = processor.encode(turns, images)
    assert processor.token_ids(turns, sizes) == encoded.input_ids
