"""What trains in each stage-2 tuning mode: the exact parameter names and element counts (tiny zoo)."""

import pytest
import torch
from hydra.utils import instantiate

from anomaly_ov.inference.pipeline import compose_config
from anomaly_ov.training.tuning import TUNING_MODES, apply_tuning, trainable_counts

pytestmark = pytest.mark.usefixtures("one_thread")

# the tiny zoo's Qwen2: width 64, MLP 128, 2 layers, 4 query heads and 2 key/value heads of 16, untied head
WIDTH, MLP, LAYERS, KV = 64, 128, 2, 32
LM = "llava.model.language_model"
PROJECTOR = {
    "llava.model.multi_modal_projector.linear_1.weight": 64 * 64,
    "llava.model.multi_modal_projector.linear_1.bias": 64,
    "llava.model.multi_modal_projector.linear_2.weight": 64 * 64,
    "llava.model.multi_modal_projector.linear_2.bias": 64,
    "llava.model.image_newline": 64,
}
# (module, in, out) of every linear layer LoRA adapts
LINEARS = [
    ("self_attn.q_proj", WIDTH, WIDTH),
    ("self_attn.k_proj", WIDTH, KV),
    ("self_attn.v_proj", WIDTH, KV),
    ("self_attn.o_proj", WIDTH, WIDTH),
    ("mlp.gate_proj", WIDTH, MLP),
    ("mlp.up_proj", WIDTH, MLP),
    ("mlp.down_proj", MLP, WIDTH),
]


def _expected(mode: str, vocab: int, rank: int) -> dict[str, int]:
    expected = dict(PROJECTOR)
    if mode == "lora":
        for layer in range(LAYERS):
            for module, fan_in, fan_out in LINEARS:
                prefix = f"{LM}.layers.{layer}.{module}"
                expected[f"{prefix}.lora_A.default.weight"] = rank * fan_in
                expected[f"{prefix}.lora_B.default.weight"] = fan_out * rank
    elif mode == "full":
        expected[f"{LM}.embed_tokens.weight"] = vocab * WIDTH
        expected[f"{LM}.norm.weight"] = WIDTH
        expected["llava.lm_head.weight"] = vocab * WIDTH
        for layer in range(LAYERS):
            prefix = f"{LM}.layers.{layer}"
            for module, fan_in, fan_out in LINEARS:
                expected[f"{prefix}.{module}.weight"] = fan_in * fan_out
            for bias, size in (("q_proj", WIDTH), ("k_proj", KV), ("v_proj", KV)):  # Qwen2: q/k/v biases
                expected[f"{prefix}.self_attn.{bias}.bias"] = size
            expected[f"{prefix}.input_layernorm.weight"] = WIDTH
            expected[f"{prefix}.post_attention_layernorm.weight"] = WIDTH
    return expected


def _build(zoo, mode: str, expert: str = "tiny"):
    overrides = [
        f"paths.zoo_dir={zoo.root}",
        f"tuning={mode}",
        f"model/expert={expert}",
        "model.llm.device_map=null",
    ]
    if mode == "lora":
        overrides.append("model.lora.rank=4")
    cfg = compose_config("finetune", overrides)
    model = instantiate(cfg.model, _convert_="all").model
    apply_tuning(model, cfg.tuning)
    return model


@pytest.mark.parametrize("mode", TUNING_MODES)
def test_exact_trainable_parameters_per_mode(tiny_zoo, mode):
    model = _build(tiny_zoo, mode)
    vocab = model.llava.lm_head.weight.shape[0]
    assert trainable_counts(model) == _expected(mode, vocab, rank=4)
    # frozen parts stay frozen and in eval mode while training
    model.train()
    assert not any(p.requires_grad for p in model.expert.parameters())
    assert not any(p.requires_grad for p in model.llava.model.vision_tower.parameters())
    assert not model.expert.training and not model.llava.model.vision_tower.training


def test_plain_llava_onevision_trains_the_same_parts(tiny_zoo):
    model = _build(tiny_zoo, "projector", expert="none")
    assert model.expert is None
    assert trainable_counts(model) == PROJECTOR


def test_a_mode_that_does_not_match_the_adapter_is_refused(tiny_zoo):
    model = _build(tiny_zoo, "lora")
    with pytest.raises(ValueError, match="tuning=full but the model has LoRA"):
        apply_tuning(model, "full")
    with pytest.raises(ValueError, match="expected one of"):
        apply_tuning(model, "everything")


def test_lora_mode_trains_only_adapters_and_projector(tiny_zoo):
    model = _build(tiny_zoo, "lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.arange(5, 25)[None]
    model.train()
    # LoRA's B starts at zero: a first step moves B (and the projector only with images), a second A too
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
