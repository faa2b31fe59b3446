"""The anomaly expert against SPEC §2: a plain-loop second implementation, hand-computed cases, ablations."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from anomaly_ov.data.tokens import severity_word
from anomaly_ov.models import AnomalyExpert, ExpertConfig, ExpertOutput, build_expert
from anomaly_ov.models.expert_io import (
    load_expert,
    load_expert_weights,
    load_official_expert,
    load_official_weights,
    save_expert,
)

TINY = {"vision_dim": 64, "expert_dim": 32, "grid": 8}


# ---------------------------------------------------------------------------------------------------------
# A second implementation of SPEC §2, written from the formulas with plain loops over images, crops, levels
# and pooling cells, on a state dict in the released key layout, in float64.


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _linear(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    # Adaptive average pooling: cell i covers [floor(i*size/out), ceil((i+1)*size/out)).
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def reference_expert(
    sd: dict[str, torch.Tensor],
    final: torch.Tensor,
    levels: list[torch.Tensor],
    crops: list[int],
    grid: int,
    pool: int = 2,
    temperature: float = 0.01,
) -> dict[str, torch.Tensor]:
    sd = {k: v.double() for k, v in sd.items()}
    final = final.double()
    levels = [level.double() for level in levels]
    dim = final.shape[-1]
    attention_dim = sd["q_former.query_proj.weight"].shape[0]
    e_normal, e_abnormal = sd["positive_embedding"][0], sd["negative_embedding"][0]
    local, global_tokens, scores, maps = [], [], [], []
    start = 0
    for count in crops:
        whole = final[start]  # [T, D]: the image's whole-image crop
        pooled = sd["pooling_layer.0.weight"][0] @ whole + sd["pooling_layer.0.bias"][0]
        context = _linear(_gelu(_linear(pooled, sd, "class_predictor.0")), sd, "class_predictor.2")
        numerator, denominator = torch.zeros(dim, dtype=torch.float64), 0.0
        for j in range(start, start + count):
            level_maps = []
            for k in range(len(levels)):
                d_normal = _unit(_linear(torch.cat([e_normal, context]), sd, f"prompt_adaptors.{k}"))
                d_abnormal = _unit(_linear(torch.cat([e_abnormal, context]), sd, f"prompt_adaptors.{k}"))
                patches = _unit(_linear(levels[k][j], sd, f"siglip_adaptors.{k}"))  # [T, E]
                logits = torch.stack([patches @ d_normal, patches @ d_abnormal], dim=-1) / temperature
                level_maps.append(torch.softmax(logits, dim=-1)[:, 1])
            crop_map = torch.stack(level_maps).mean(dim=0)  # [T]
            significance = crop_map.mean()
            map_grid = crop_map.reshape(grid, grid)
            token_grid = final[j].reshape(grid, grid, dim)
            keys = _linear(final[j], sd, "q_former.key_proj")
            cells = []
            for r0, r1 in _bins(grid, pool):
                for c0, c1 in _bins(grid, pool):
                    cell_map = map_grid[r0:r1, c0:c1]
                    query = (token_grid[r0:r1, c0:c1] * cell_map[..., None]).sum((0, 1)) / cell_map.sum()
                    attention = torch.softmax(
                        keys @ _linear(query, sd, "q_former.query_proj") / math.sqrt(attention_dim), dim=0
                    )
                    token = attention @ final[j]
                    weight = cell_map.mean() * significance
                    numerator = numerator + weight * token
                    denominator = denominator + weight
                    cells.append(token)
            local.append(torch.stack(cells))
            maps.append(map_grid)
        image_token = numerator / denominator
        global_tokens.append(image_token)
        hidden = _gelu(_linear(image_token, sd, "final_predictor.0"))
        scores.append(torch.sigmoid(_linear(hidden, sd, "final_predictor.2"))[0])
        start += count
    return {
        "local_tokens": torch.stack(local),
        "global_tokens": torch.stack(global_tokens),
        "scores": torch.stack(scores),
        "maps": torch.stack(maps),
    }


def random_official_state(
    dim: int, width: int, tokens: int, num_levels: int, seed: int
) -> dict[str, torch.Tensor]:
    """A state dict with the released key names and shapes (SPEC §2 table), random values."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def linear(name: str, out_dim: int, in_dim: int) -> dict[str, torch.Tensor]:
        return {
            f"{name}.weight": rand(out_dim, in_dim, scale=in_dim**-0.5),
            f"{name}.bias": rand(out_dim, scale=0.1),
        }

    sd = {
        "positive_embedding": rand(1, width),
        "negative_embedding": rand(1, width),
        **linear("pooling_layer.0", 1, tokens),
        **linear("class_predictor.0", width, dim),
        **linear("class_predictor.2", width, width),
        **linear("q_former.query_proj", width, dim),
        **linear("q_former.key_proj", width, dim),
        **linear("final_predictor.0", width, dim),
        **linear("final_predictor.2", 1, width),
    }
    for k in range(num_levels):
        sd.update(linear(f"siglip_adaptors.{k}", width, dim))
        sd.update(linear(f"prompt_adaptors.{k}", width, 2 * width))
    return sd


def random_tokens(
    num_crops: int, tokens: int, dim: int, num_levels: int = 4, seed: int = 1
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    final = torch.randn(num_crops, tokens, dim, generator=gen)
    levels = [torch.randn(num_crops, tokens, dim, generator=gen) for _ in range(num_levels)]
    return final, levels


def tiny_expert(seed: int = 0, **overrides: object) -> AnomalyExpert:
    torch.manual_seed(seed)
    return AnomalyExpert(ExpertConfig(**{**TINY, **overrides}))


def assert_matches_reference(out: ExpertOutput, ref: dict[str, torch.Tensor], atol: float) -> None:
    for name, expected in ref.items():
        torch.testing.assert_close(getattr(out, name).double(), expected, atol=atol, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------------------
# Released sizes: load_official_expert round trip against the second implementation.


def test_load_official_released_sizes_match_reference(tmp_path: Path) -> None:
    official = random_official_state(dim=1152, width=512, tokens=729, num_levels=4, seed=0)
    path = tmp_path / "pretrained_expert_05b.pth"
    torch.save(official, path)
    expert = load_official_expert(path)
    crops = [2, 1]  # image 0: whole image + one tile; image 1: a single crop
    final, levels = random_tokens(sum(crops), 729, 1152)
    with torch.no_grad():
        out = expert(final, levels, crops)
    assert out.local_tokens.shape == (3, 4, 1152)
    assert out.global_tokens.shape == (2, 1152)
    assert out.scores.shape == (2,)
    assert out.maps.shape == (3, 27, 27)
    ref = reference_expert(official, final, levels, crops, grid=27)
    # The maps are not saturated, so the comparison tests the matching and not only 0/1 values.
    assert ref["maps"].std() > 0.05 and ref["maps"].min() < 0.5 < ref["maps"].max()
    assert_matches_reference(out, ref, atol=2e-4)


@pytest.mark.parametrize(
    ("pool", "temperature", "crops"), [(2, 0.01, [3, 1, 2]), (3, 0.05, [1]), (1, 1.0, [2, 2])]
)
def test_tiny_configs_match_reference(
    tmp_path: Path, pool: int, temperature: float, crops: list[int]
) -> None:
    official = random_official_state(dim=64, width=32, tokens=64, num_levels=4, seed=pool)
    path = tmp_path / "expert.pth"
    torch.save(official, path)
    expert = AnomalyExpert(ExpertConfig(**TINY, pool_grid=pool, temperature=temperature))
    load_official_weights(expert, path)
    final, levels = random_tokens(sum(crops), 64, 64, seed=pool)
    out = expert(final, levels, crops)
    assert out.local_tokens.shape == (sum(crops), pool * pool, 64)
    ref = reference_expert(official, final, levels, crops, grid=8, pool=pool, temperature=temperature)
    assert_matches_reference(out, ref, atol=1e-5)


def test_load_official_refuses_files_that_do_not_fit(tmp_path: Path) -> None:
    official = random_official_state(dim=64, width=32, tokens=64, num_levels=4, seed=0)
    broken = dict(official)
    del broken["q_former.key_proj.bias"]
    broken["extra.weight"] = torch.zeros(3)
    broken["siglip_adaptors.2.weight"] = torch.zeros(32, 63)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as error:
        load_official_expert(path, vision_dim=64, expert_dim=32, grid=8)
    message = str(error.value)
    assert "broken.pth" in message
    assert "q_former.key_proj.bias (32,)" in message
    assert "extra.weight (3,)" in message
    assert "siglip_adaptors.2.weight: file (32, 63) vs expected (32, 64)" in message
    # The released sizes do not fit a tiny file.
    torch.save(official, path)
    with pytest.raises(ValueError, match=r"pooling_layer.0.weight: file \(1, 64\) vs expected \(1, 729\)"):
        load_official_expert(path)
    torch.save([official], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_official_expert(path, vision_dim=64, expert_dim=32, grid=8)


def test_load_official_never_unpickles_code(tmp_path: Path) -> None:
    path = tmp_path / "malicious.pth"
    torch.save({"positive_embedding": torch.zeros(1, 32), "payload": Path("/etc/passwd")}, path)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed|Unsupported global"):
        load_official_expert(path, vision_dim=64, expert_dim=32, grid=8)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases.


def uniform_map_expert(vt_attention: bool) -> AnomalyExpert:
    """D=4, E=2, 4x4 grid, temperature 1: every patch embedding is [1, 0], d_normal = [0, 1], d_abnormal =
    [1, 0], so every level map is softmax([0, 1])[1] = sigmoid(1) everywhere; the score head computes
    sigmoid(sum(r)) (GELU(x + 30) = x + 30 in float32 for the values used)."""
    expert = AnomalyExpert(
        ExpertConfig(
            vision_dim=4, expert_dim=2, grid=4, score_hidden_dim=4, temperature=1.0, vt_attention=vt_attention
        )
    )
    with torch.no_grad():
        for parameter in expert.parameters():
            parameter.zero_()
        expert.prompt_normal.copy_(torch.tensor([0.0, 1.0]))
        expert.prompt_abnormal.copy_(torch.tensor([1.0, 0.0]))
        for adapter in expert.prompt_adapters:
            adapter.weight[:, :2] = torch.eye(2)  # P_k([e ; c]) = e
        for adapter in expert.patch_adapters:
            adapter.bias.copy_(torch.tensor([3.0, 0.0]))  # A_k(x) = [3, 0] -> u = [1, 0]
        if vt_attention:
            expert.lookback_pool.bias.fill_(1.0)  # Wq = 0 -> uniform attention whatever the context
        expert.score_head[0].weight.copy_(torch.eye(4))
        expert.score_head[0].bias.fill_(30.0)
        expert.score_head[2].weight.fill_(1.0)
        expert.score_head[2].bias.fill_(-120.0)
    return expert


def ramp_tokens(scales: list[float]) -> torch.Tensor:
    """Crop j has token t = scales[j] * [t, 0, 1, -t] for t = 0..15 (row-major on the 4x4 grid)."""
    t = torch.arange(16.0)
    base = torch.stack([t, torch.zeros(16), torch.ones(16), -t], dim=1)
    return torch.stack([s * base for s in scales])


def test_uniform_map_without_attention_gives_plain_quadrant_means() -> None:
    expert = uniform_map_expert(vt_attention=False)
    final = ramp_tokens([1.0, 2.0])
    out = expert(final, [final] * 4, [2])
    m = 1.0 / (1.0 + math.exp(-1.0))
    torch.testing.assert_close(out.maps, torch.full((2, 4, 4), m))
    torch.testing.assert_close(out.significance, torch.full((2,), m))
    # Quadrants of the 4x4 ramp: {0,1,4,5} -> 2.5, {2,3,6,7} -> 4.5, {8,9,12,13} -> 10.5,
    # {10,11,14,15} -> 12.5.
    quadrant_means = torch.tensor([2.5, 4.5, 10.5, 12.5])
    expected = torch.stack([quadrant_means, torch.zeros(4), torch.ones(4), -quadrant_means], dim=1)
    torch.testing.assert_close(out.local_tokens, torch.stack([expected, 2.0 * expected]))
    # Equal weights: r = mean of the 8 local tokens = 1.5 * [7.5, 0, 1, -7.5]; score = sigmoid(sum(r)).
    torch.testing.assert_close(out.global_tokens, torch.tensor([[11.25, 0.0, 1.5, -11.25]]))
    torch.testing.assert_close(out.scores, torch.tensor([1.0 / (1.0 + math.exp(-1.5))]))


def test_uniform_map_with_uniform_attention_gives_crop_means() -> None:
    expert = uniform_map_expert(vt_attention=True)
    final = ramp_tokens([1.0, 2.0, -1.0])
    out = expert(final, [final] * 4, [2, 1])
    crop_means = torch.tensor([[7.5, 0.0, 1.0, -7.5], [15.0, 0.0, 2.0, -15.0], [-7.5, 0.0, -1.0, 7.5]])
    torch.testing.assert_close(out.local_tokens, crop_means[:, None].expand(3, 4, 4))
    torch.testing.assert_close(out.global_tokens, torch.stack([crop_means[:2].mean(0), crop_means[2]]))
    torch.testing.assert_close(out.scores, torch.sigmoid(torch.tensor([1.5, -1.0])))


def test_global_token_weights_crops_by_significance() -> None:
    """A single crop with a half-abnormal map: r is the w-weighted mean of its quadrant tokens."""
    expert = uniform_map_expert(vt_attention=False)
    final = ramp_tokens([1.0])
    levels = torch.zeros(1, 16, 4)
    with torch.no_grad():
        for adapter in expert.patch_adapters:
            adapter.bias.zero_()
            adapter.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))  # u = [x1, x0]
    # Left half of the grid has u = [1, 0] (abnormal logit 1), right half u = [0, 1] (normal logit 1).
    columns = torch.arange(16) % 4
    levels[0, columns < 2, 1] = 1.0
    levels[0, columns >= 2, 0] = 1.0
    out = expert(final, [levels] * 4, [1])
    high, low = 1.0 / (1.0 + math.exp(-1.0)), 1.0 / (1.0 + math.exp(1.0))
    assert torch.allclose(out.maps[0, :, :2], torch.tensor(high)) and torch.allclose(
        out.maps[0, :, 2:], torch.tensor(low)
    )
    s = (high + low) / 2
    weights = torch.tensor([high, low, high, low]) * s  # quadrants TL, TR, BL, BR
    expected = (weights[:, None] * out.local_tokens[0]).sum(0) / weights.sum()
    torch.testing.assert_close(out.global_tokens[0], expected)
    torch.testing.assert_close(out.significance, torch.tensor([s]))


def test_images_are_independent_one_crop_or_several() -> None:
    expert = tiny_expert()
    final, levels = random_tokens(6, 64, 64)
    together = expert(final, levels, [1, 3, 2])
    for start, count, image in ((0, 1, 0), (1, 3, 1), (4, 2, 2)):
        part = slice(start, start + count)
        alone = expert(final[part], [level[part] for level in levels], [count])
        torch.testing.assert_close(alone.maps, together.maps[part])
        torch.testing.assert_close(alone.local_tokens, together.local_tokens[part])
        torch.testing.assert_close(alone.global_tokens[0], together.global_tokens[image])
        torch.testing.assert_close(alone.scores[0], together.scores[image])
    # Splitting one 3-crop image into three single-crop images changes contexts and the global pooling.
    split = expert(final[1:4], [level[1:4] for level in levels], [1, 1, 1])
    torch.testing.assert_close(split.maps[0], together.maps[1])
    assert not torch.allclose(split.maps[1:], together.maps[2:4])
    assert split.global_tokens.shape == (3, 64)


def test_whole_image_crop_supplies_the_context_of_its_tiles() -> None:
    expert = tiny_expert()
    final, levels = random_tokens(5, 64, 64)
    crops = [3, 2]
    base = expert(final, levels, crops)
    changed_whole = final.clone()
    changed_whole[0] += torch.randn(64, 64)
    out = expert(changed_whole, levels, crops)
    assert not torch.allclose(out.maps[:3], base.maps[:3])  # every crop of image 0 follows its I0
    torch.testing.assert_close(out.maps[3:], base.maps[3:])  # image 1 does not
    changed_tile = final.clone()
    changed_tile[1] += torch.randn(64, 64)
    out = expert(changed_tile, levels, crops)
    torch.testing.assert_close(out.maps, base.maps)  # a tile's final tokens never set a context
    assert not torch.allclose(out.local_tokens[1], base.local_tokens[1])


# ---------------------------------------------------------------------------------------------------------
# Trainable parameters and gradients.

# Tiny config: D=64, E=32, T=64, 4 levels, attention and score widths 32.
TINY_PARAMETERS = {
    "prompt vectors": 2 * 32,
    "look-back pooling": 64 + 1,
    "class-context MLP": (64 * 32 + 32) + (32 * 32 + 32),
    "prompt maps P_k": 4 * (64 * 32 + 32),
    "patch maps A_k": 4 * (64 * 32 + 32),
    "Wq, Wk": 2 * (64 * 32 + 32),
    "score MLP": (64 * 32 + 32) + (32 + 1),
}


def count_trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_gradients_reach_exactly_the_stage1_parameters() -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from anomaly_ov.models import HFVisionTower

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        image_size=64,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=128,
    )
    tower = HFVisionTower(SiglipVisionModel(config), level_layers=[2, 3, 4, 5])
    expert = tiny_expert()
    assert count_trainable(expert) == sum(TINY_PARAMETERS.values()) == 26178
    assert count_trainable(tower) == 0

    features = tower(torch.randn(5, 3, 64, 64))
    out = expert(features.final, features.levels, [3, 2])
    loss = F.binary_cross_entropy_with_logits(out.score_logits, torch.tensor([1.0, 0.0]))
    loss.backward()
    reached = {name for name, p in expert.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {name for name, _ in expert.named_parameters()}
    assert all(p.grad is None for p in tower.parameters())
    assert not features.final.requires_grad


# ---------------------------------------------------------------------------------------------------------
# Ablation switches: one effect each.


def test_look_back_off_removes_the_class_context() -> None:
    expert = tiny_expert(look_back=False)
    assert not hasattr(expert, "lookback_pool") and not hasattr(expert, "class_context")
    # Prompt maps read e only: Linear(E, E) per level.
    expected = (
        sum(TINY_PARAMETERS.values())
        - TINY_PARAMETERS["look-back pooling"]
        - TINY_PARAMETERS["class-context MLP"]
        - TINY_PARAMETERS["prompt maps P_k"]
        + 4 * (32 * 32 + 32)
    )
    assert count_trainable(expert) == expected == 18881
    final, levels = random_tokens(4, 64, 64)
    base = expert(final, levels, [4])
    changed = final.clone()
    changed[0] += 5.0
    torch.testing.assert_close(expert(changed, levels, [4]).maps, base.maps)


def test_look_back_off_equals_a_zero_class_context() -> None:
    full, ablated = tiny_expert(), tiny_expert(look_back=False)
    with torch.no_grad():
        for k in range(4):
            ablated.prompt_adapters[k].weight.copy_(full.prompt_adapters[k].weight[:, :32])
            ablated.prompt_adapters[k].bias.copy_(full.prompt_adapters[k].bias)
        full.class_context[2].weight.zero_()
        full.class_context[2].bias.zero_()  # c = 0
        for name in ("prompt_normal", "prompt_abnormal"):
            getattr(ablated, name).copy_(getattr(full, name))
        for mine, theirs in (
            (ablated.patch_adapters, full.patch_adapters),
            (ablated.query_proj, full.query_proj),
            (ablated.key_proj, full.key_proj),
            (ablated.score_head, full.score_head),
        ):
            mine.load_state_dict(theirs.state_dict())
    final, levels = random_tokens(3, 64, 64)
    torch.testing.assert_close(ablated(final, levels, [3]).maps, full(final, levels, [3]).maps)


def test_learned_prompts_off_uses_two_maps_of_the_context() -> None:
    with pytest.raises(ValueError, match="shared_prompt_map=False"):
        tiny_expert(learned_prompts=False)
    expert = tiny_expert(learned_prompts=False, shared_prompt_map=False)
    assert not hasattr(expert, "prompt_normal")
    expected = (
        sum(TINY_PARAMETERS.values())
        - TINY_PARAMETERS["prompt vectors"]
        - TINY_PARAMETERS["prompt maps P_k"]
        + 2 * 4 * (32 * 32 + 32)
    )
    assert count_trainable(expert) == expected == 26242
    out = expert(*random_tokens(2, 64, 64), [2])
    assert out.maps.std() > 0.01  # the two prompts differ


def test_separate_prompt_maps_reduce_to_the_shared_one_when_equal() -> None:
    shared = tiny_expert()
    separate = tiny_expert(shared_prompt_map=False)
    assert count_trainable(separate) == sum(TINY_PARAMETERS.values()) + TINY_PARAMETERS["prompt maps P_k"]
    state = shared.state_dict()
    for k in range(4):
        for kind in ("weight", "bias"):
            state[f"prompt_adapters_normal.{k}.{kind}"] = state[f"prompt_adapters.{k}.{kind}"]
            state[f"prompt_adapters_abnormal.{k}.{kind}"] = state.pop(f"prompt_adapters.{k}.{kind}")
    separate.load_state_dict(state)
    final, levels = random_tokens(3, 64, 64)
    torch.testing.assert_close(separate(final, levels, [2, 1]).maps, shared(final, levels, [2, 1]).maps)
    with torch.no_grad():
        separate.prompt_adapters_abnormal[0].bias += 1.0
    assert not torch.allclose(separate(final, levels, [2, 1]).maps, shared(final, levels, [2, 1]).maps)


def test_vt_attention_off_uses_the_pooled_tokens() -> None:
    expert = tiny_expert(vt_attention=False)
    assert not hasattr(expert, "query_proj")
    assert count_trainable(expert) == sum(TINY_PARAMETERS.values()) - TINY_PARAMETERS["Wq, Wk"]
    final, levels = random_tokens(2, 64, 64)
    out = expert(final, levels, [2])
    # t_j = q_j: the map-weighted mean token of each 4x4 quadrant of the 8x8 grid.
    for j in range(2):
        for cell, (rows, cols) in enumerate(
            [(r, c) for r in (slice(0, 4), slice(4, 8)) for c in (slice(0, 4), slice(4, 8))]
        ):
            weights = out.maps[j, rows, cols].reshape(-1)
            tokens = final[j].reshape(8, 8, 64)[rows, cols].reshape(-1, 64)
            torch.testing.assert_close(
                out.local_tokens[j, cell], (weights[:, None] * tokens).sum(0) / weights.sum()
            )


@pytest.mark.parametrize("pool", [1, 2, 3])
def test_pool_grid_sets_the_number_of_local_tokens(pool: int) -> None:
    expert = tiny_expert(pool_grid=pool, vt_attention=False)
    final, levels = random_tokens(3, 64, 64)
    out = expert(final, levels, [3])
    assert out.local_tokens.shape == (3, pool * pool, 64)
    if pool == 1:
        weights = out.maps.reshape(3, 64)
        expected = (weights[..., None] * final).sum(1) / weights.sum(1, keepdim=True)
        torch.testing.assert_close(out.local_tokens[:, 0], expected)


def test_levels_subset_uses_only_those_inputs() -> None:
    expert = tiny_expert(levels=[0, 2])
    assert len(expert.patch_adapters) == 2
    assert count_trainable(expert) == sum(TINY_PARAMETERS.values()) - 2 * (64 * 32 + 32) * 2 == 17858
    final, levels = random_tokens(2, 64, 64)
    out = expert(final, levels, [2])
    assert out.level_maps.shape == (2, 2, 8, 8)
    torch.testing.assert_close(out.maps, out.level_maps.mean(1))
    unused_changed = [levels[0], levels[1] + 3.0, levels[2], levels[3] * -1.0]
    torch.testing.assert_close(expert(final, unused_changed, [2]).maps, out.maps)
    used_changed = [levels[0], levels[1], levels[2] + 3.0, levels[3]]
    assert not torch.allclose(expert(final, used_changed, [2]).maps, out.maps)
    with pytest.raises(ValueError, match="levels="):
        tiny_expert(levels=[0, 4])


def test_temperature_scales_the_matching_logits() -> None:
    sharp, soft = tiny_expert(temperature=0.01), tiny_expert(temperature=1.0)
    final, levels = random_tokens(2, 64, 64)
    a, b = sharp(final, levels, [2]).level_maps, soft(final, levels, [2]).level_maps
    # Same weights: the logit of the abnormal prompt scales with 1 / temperature.
    torch.testing.assert_close(torch.logit(a.double()), 100.0 * torch.logit(b.double()), atol=2e-3, rtol=1e-3)
    assert (b - 0.5).abs().max() < 0.5 * (a - 0.5).abs().max()


def test_severity_words_and_thresholds() -> None:
    assert [severity_word(s) for s in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0)] == [
        "slightly", "slightly", "moderately", "moderately", "highly", "highly",
    ]  # fmt: skip
    assert severity_word(0.5, thresholds=(0.6, 0.9)) == "slightly"
    assert severity_word(0.95, thresholds=(0.6, 0.9)) == "highly"
    with pytest.raises(ValueError, match="increasing"):
        severity_word(0.5, thresholds=(0.7, 0.3))
    expert = tiny_expert(severity_thresholds=(0.1, 0.2))
    assert expert.severity_words(torch.tensor([0.05, 0.15, 0.5])) == ["slightly", "moderately", "highly"]
    assert tiny_expert().severity_words(torch.tensor([0.05, 0.15, 0.5])) == [
        "slightly",
        "slightly",
        "moderately",
    ]


# ---------------------------------------------------------------------------------------------------------
# Bad input, dtypes, checkpoints, configs.


def test_bad_inputs_name_the_argument() -> None:
    expert = tiny_expert()
    final, levels = random_tokens(3, 64, 64)
    with pytest.raises(ValueError, match=r"level_tokens has 3 tensors; expected num_levels=4"):
        expert(final, levels[:3], [3])
    with pytest.raises(ValueError, match=r"final_tokens has 50 tokens per crop \(not a square\).*8\*8 = 64"):
        expert(final[:, :50], [level[:, :50] for level in levels], [3])
    with pytest.raises(ValueError, match=r"final_tokens has 49 tokens per crop \(a square\)"):
        expert(final[:, :49], [level[:, :49] for level in levels], [3])
    with pytest.raises(ValueError, match=r"crops_per_image=\[2, 2\] sums to 4; expected N=3"):
        expert(final, levels, [2, 2])
    with pytest.raises(ValueError, match=r"crops_per_image=\[3, 0\]"):
        expert(final, levels, [3, 0])
    with pytest.raises(ValueError, match=r"level_tokens\[2\] has shape \(2, 64, 64\)"):
        expert(final, [levels[0], levels[1], levels[2][:2], levels[3]], [3])
    with pytest.raises(ValueError, match="final_tokens has width 32; expected vision_dim=64"):
        expert(final[..., :32], [level[..., :32] for level in levels], [3])
    with pytest.raises(ValueError, match="final_tokens has shape"):
        expert(final[0], levels, [3])


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.02), (torch.float16, 0.004)])
def test_half_precision_runs_and_agrees(dtype: torch.dtype, tolerance: float) -> None:
    expert = tiny_expert()
    final, levels = random_tokens(3, 64, 64)
    reference = expert(final, levels, [2, 1])
    out = expert.to(dtype)(final.to(dtype), [level.to(dtype) for level in levels], [2, 1])
    for name in ("local_tokens", "global_tokens", "scores", "maps"):
        value = getattr(out, name)
        assert value.dtype == dtype and torch.isfinite(value).all(), name
        assert (value.float() - getattr(reference, name)).abs().mean() < tolerance, name


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    expert = tiny_expert(
        seed=3, look_back=False, shared_prompt_map=False, pool_grid=3, levels=[1, 3], temperature=0.05
    )
    path = tmp_path / "expert.safetensors"
    save_expert(expert, path)
    loaded = load_expert(path)
    assert loaded.config == expert.config
    for (name, a), (_, b) in zip(expert.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    final, levels = random_tokens(3, 64, 64)
    a, b = expert(final, levels, [1, 2]), loaded(final, levels, [1, 2])
    for name in ("local_tokens", "global_tokens", "scores", "maps"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(ValueError, match=r"missing keys .*lookback_pool\.weight"):
        load_expert_weights(tiny_expert(), path)


def test_builder_loads_both_checkpoint_kinds(tmp_path: Path) -> None:
    expert = tiny_expert(seed=5)
    ours = tmp_path / "ours.safetensors"
    save_expert(expert, ours)
    built = build_expert(**TINY, checkpoint=str(ours))
    assert all(
        torch.equal(a, b)
        for a, b in zip(expert.state_dict().values(), built.state_dict().values(), strict=True)
    )
    official = random_official_state(dim=64, width=32, tokens=64, num_levels=4, seed=0)
    torch.save(official, tmp_path / "official.pth")
    built = build_expert(**TINY, official_checkpoint=str(tmp_path / "official.pth"), dtype="bfloat16")
    assert built.patch_adapters[1].weight.dtype == torch.bfloat16
    assert torch.equal(built.query_proj.weight, official["q_former.query_proj.weight"].bfloat16())
    with pytest.raises(ValueError, match="at most one"):
        build_expert(**TINY, checkpoint=str(ours), official_checkpoint=str(tmp_path / "official.pth"))


@pytest.mark.parametrize("name", ["anomaly_ov", "tiny"])
def test_expert_configs_instantiate(project_root: Path, name: str) -> None:
    # Composed as Hydra composes the group option (tiny.yaml overrides the released anomaly_ov.yaml).
    with initialize_config_dir(str(project_root / "configs" / "model" / "expert"), version_base=None):
        config = compose(name)
    expert = instantiate(config)
    assert isinstance(expert, AnomalyExpert)
    assert expert.config.look_back and expert.config.learned_prompts and expert.config.shared_prompt_map
    grid, dim = (27, 1152) if name == "anomaly_ov" else (8, 64)
    assert (expert.grid, expert.vision_dim) == (grid, dim)
    if name == "anomaly_ov":
        # The released structure: every released key has a place.
        from anomaly_ov.models.expert_io import official_key_map

        assert set(official_key_map(4).values()) == set(expert.state_dict())
    else:
        assert count_trainable(expert) == 26178


def test_one_config_for_builder_module_and_checkpoint(tmp_path: Path) -> None:
    built = build_expert(**TINY, levels=[0, 2], pool_grid=1, severity_thresholds=[0.2, 0.8])
    expected = ExpertConfig(**TINY, levels=(0, 2), pool_grid=1, severity_thresholds=(0.2, 0.8))
    assert built.config == expected
    assert (expected.attention_dim, expected.score_hidden_dim) == (32, 32)  # defaults resolved to E
    path = tmp_path / "expert.safetensors"
    save_expert(built, path)
    from safetensors import safe_open

    from anomaly_ov.models.expert_io import CONFIG_METADATA_KEY

    with safe_open(str(path), framework="pt") as handle:
        stored = json.loads(handle.metadata()[CONFIG_METADATA_KEY])
    assert stored == json.loads(json.dumps(dataclasses.asdict(expected)))
    assert ExpertConfig(**stored) == expected
    with pytest.raises(TypeError, match="takes an ExpertConfig"):
        AnomalyExpert(TINY)  # a plain dict of values is not a config
