"""The Anomaly-OV expert: Look-Twice Feature Matching (LTFM), the VT selector and the score head.

Xu et al., "Towards Zero-Shot Anomaly Detection and Reasoning with Multimodal Large Language Models",
CVPR 2025 (https://arxiv.org/abs/2502.07601); the formulas are those of SPEC §2.

Notation: ``B`` images; ``N`` crops of all images (each image's crops contiguous, its first crop the whole
image); ``T = grid * grid`` patch tokens per crop; ``D`` vision width; ``E`` expert width; ``L`` level
inputs (``K <= L`` of them used); ``P = pool_grid * pool_grid`` pooled cells (quadrants for the 2x2 grid).

Per crop j:

1. Look-back: ``c = MLP(Linear_T->1(V_0))`` [E] from the final tokens of the image's whole-image crop.
2. Prompts per level k: ``d_k = normalize(P_k([e ; c]))`` for ``e`` in (e_normal, e_abnormal).
3. Patches per level k: ``u_k = normalize(A_k(L_j^k))`` [T, E].
4. Matching: ``M_j^k = softmax(u_k d_k^T / temperature)[..., abnormal]``; ``M_j = mean_k M_j^k`` and the crop
   significance ``s_j = mean(M_j)``.
5. VT selector: ``q_j = pool(V_j * M_j) / pool(M_j)`` [P, D] with adaptive average pooling to a
   ``pool_grid x pool_grid`` grid (PyTorch ``adaptive_avg_pool2d``: for 27 -> 2 the two bins share the middle
   row/column); ``t_j = softmax(Wq q_j (Wk V_j)^T / sqrt(A)) V_j`` — the values are the raw tokens.
6. Global token ``r = sum_jq(w_jq t_jq) / sum_jq(w_jq)`` with ``w_jq = pool(M_j)_q * s_j`` over the crops
   of an image, and the score ``sigmoid(MLP(r))``.

Ablation switches (fields of :class:`ExpertConfig`, one config key each):

* ``look_back=False``: no class context; the prompt maps read ``e`` only (identical to ``c = 0``).
* ``learned_prompts=False``: no prompt vectors; the prompt maps read ``c`` only. With a shared map both
  prompts would be identical, so this needs ``shared_prompt_map=False``.
* ``shared_prompt_map=True`` (released): one ``P_k`` per level for both prompts; ``False``: the paper's
  separate ``P_k^normal`` and ``P_k^abnormal``.
* ``vt_attention=False``: no ``Wq``/``Wk``; the pooled tokens are the local tokens (``t_j = q_j``).
* ``pool_grid``, ``levels`` (which of the ``num_levels`` level inputs are used), ``temperature``,
  ``severity_thresholds``.

Computation: every step runs on all crops of all images at once (per-image quantities by indexing with
``crops_per_image``, per-image sums with ``index_add_``; no Python loop over images or crops). Prompts, maps
and pooling are batched over levels; the patch projection ``A_k`` is one GEMM per level over all crops,
which avoids copying the level inputs into one [K, N, T, D] tensor. The two-prompt softmax runs in float32.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ov.data.tokens import severity_word


@dataclass(frozen=True)
class ExpertOutput:
    """Outputs of :class:`AnomalyExpert`.

    Attributes:
        local_tokens: Local anomaly tokens per crop, [N, P, D] (P = 4 for the 2x2 pooling grid).
        global_tokens: Global anomaly token per image, [B, D].
        scores: Anomaly probability per image, [B].
        score_logits: Logit of ``scores``, [B] (for a numerically stable BCE loss).
        maps: Anomaly map per crop (mean over levels), [N, grid, grid].
        level_maps: Anomaly map per crop and used level, [N, K, grid, grid].
        significance: Crop significance ``s_j``, [N].

    """

    local_tokens: torch.Tensor
    global_tokens: torch.Tensor
    scores: torch.Tensor
    score_logits: torch.Tensor
    maps: torch.Tensor
    level_maps: torch.Tensor
    significance: torch.Tensor


@dataclass(frozen=True)
class ExpertConfig:
    """The structure of an :class:`AnomalyExpert`: its constructor value, the builder's product and the
    configuration stored in its safetensors checkpoints (:mod:`anomaly_ov.models.expert_io`).

    Defaults are resolved and values checked on construction: ``levels`` becomes a tuple (default: all
    levels), ``attention_dim`` and ``score_hidden_dim`` default to ``expert_dim``, lists become tuples, so
    two configs of the same structure compare equal.

    Attributes:
        vision_dim: Vision width D (1152 for SigLIP-so400m).
        expert_dim: Expert width E of prompts and patch embeddings (512 released).
        grid: Side of the token grid; inputs have ``grid * grid`` tokens (27 released).
        pool_grid: Side of the VT selector's pooling grid (2 released: 4 local tokens per crop).
        num_levels: Number of level-token tensors the caller passes (4 released).
        levels: Indices into the level inputs that the expert uses (default: all), e.g. ``(0, 2)``.
        attention_dim: Width of ``Wq``/``Wk`` (default: ``expert_dim``; 512 released).
        score_hidden_dim: Hidden width of the score MLP (default: ``expert_dim``; 512 released).
        temperature: Matching temperature (0.01 released: logits = 100 * cosine).
        look_back: Use the visual-aware class context from the whole-image crop.
        learned_prompts: Use the learned prompt vectors e_normal, e_abnormal.
        shared_prompt_map: One prompt map per level for both prompts (released) instead of two.
        vt_attention: Use the VT selector's attention (else local tokens = pooled tokens).
        severity_thresholds: Score thresholds of :func:`severity_word` (see
            :meth:`AnomalyExpert.severity_words`).
        eps: Floor of the denominators (pooled map, sum of global weights).

    Raises:
        ValueError: On a value out of range or a contradictory combination of switches, naming it.

    """

    vision_dim: int
    expert_dim: int
    grid: int
    pool_grid: int = 2
    num_levels: int = 4
    levels: tuple[int, ...] | None = None
    attention_dim: int | None = None
    score_hidden_dim: int | None = None
    temperature: float = 0.01
    look_back: bool = True
    learned_prompts: bool = True
    shared_prompt_map: bool = True
    vt_attention: bool = True
    severity_thresholds: tuple[float, float] = (0.3, 0.7)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        # Frozen: resolved values are written with object.__setattr__, once, here.
        def resolve(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        levels = self.levels
        resolve("levels", tuple(range(self.num_levels)) if levels is None else tuple(int(k) for k in levels))
        resolve("attention_dim", self.expert_dim if self.attention_dim is None else int(self.attention_dim))
        resolve(
            "score_hidden_dim",
            self.expert_dim if self.score_hidden_dim is None else int(self.score_hidden_dim),
        )
        resolve("temperature", float(self.temperature))
        resolve("severity_thresholds", tuple(float(t) for t in self.severity_thresholds))
        resolve("eps", float(self.eps))
        self._validate()

    def _validate(self) -> None:
        for name in ("vision_dim", "expert_dim", "grid", "attention_dim", "score_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive.")
        if not 1 <= self.pool_grid <= self.grid:
            raise ValueError(f"pool_grid={self.pool_grid} must be between 1 and grid={self.grid}.")
        levels = self.levels
        if (
            len(levels) == 0
            or len(set(levels)) != len(levels)
            or not all(0 <= k < self.num_levels for k in levels)
        ):
            raise ValueError(
                f"levels={list(levels)} must be distinct indices in 0..{self.num_levels - 1} "
                f"(num_levels={self.num_levels})."
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive.")
        if not (self.look_back or self.learned_prompts):
            raise ValueError("look_back=False and learned_prompts=False leave the prompts with no input.")
        if not self.learned_prompts and self.shared_prompt_map:
            raise ValueError(
                "learned_prompts=False with shared_prompt_map=True makes the normal and abnormal prompts "
                "identical (both are P_k(c)); use shared_prompt_map=False."
            )
        thresholds = self.severity_thresholds
        if len(thresholds) != 2 or thresholds[0] > thresholds[1]:
            raise ValueError(f"severity_thresholds={list(thresholds)} must be two increasing numbers.")


class AnomalyExpert(nn.Module):
    """Look-Twice Feature Matching + VT selector + score head (SPEC §2), batched over all crops and images.

    Args:
        config: The expert's structure and switches (see :class:`ExpertConfig`).

    Checkpoints are functions of :mod:`anomaly_ov.models.expert_io`: ``save_expert`` / ``load_expert``
    (safetensors with the config and the :attr:`tower_record` in the metadata, exact round trip),
    ``load_expert_weights`` (into an existing expert), ``load_official_expert`` / ``load_official_weights``
    (the released ``pretrained_expert_*.pth`` pickles).

    """

    def __init__(self, config: ExpertConfig) -> None:
        super().__init__()
        if not isinstance(config, ExpertConfig):
            raise TypeError(f"AnomalyExpert takes an ExpertConfig, got {type(config).__name__}.")
        self.config = config
        expert_dim, vision_dim, grid, pool_grid = (
            config.expert_dim,
            config.vision_dim,
            config.grid,
            config.pool_grid,
        )
        self.vision_dim = vision_dim
        self.expert_dim = expert_dim
        self.grid = grid
        self.num_tokens = grid * grid
        self.pool_grid = pool_grid
        self.num_levels = config.num_levels
        self.levels = config.levels
        self.temperature = config.temperature
        self.severity_thresholds = config.severity_thresholds
        self.eps = config.eps
        # The vision tower whose features the weights were trained on (FrozenVisionTower.record), kept with
        # the checkpoint so that a model with another tower can refuse them (SPEC §4); None if unknown.
        self.tower_record: dict[str, object] | None = None

        if config.learned_prompts:
            # Index 0 is the normal prompt, index 1 the abnormal one (the anomaly channel of the softmax).
            self.prompt_normal = nn.Parameter(torch.randn(expert_dim) * 0.02)
            self.prompt_abnormal = nn.Parameter(torch.randn(expert_dim) * 0.02)
        if config.look_back:
            self.lookback_pool = nn.Linear(self.num_tokens, 1)
            self.class_context = nn.Sequential(
                nn.Linear(vision_dim, expert_dim), nn.GELU(), nn.Linear(expert_dim, expert_dim)
            )
        prompt_in = expert_dim * (int(config.learned_prompts) + int(config.look_back))
        num_used = len(config.levels)
        if config.shared_prompt_map:
            self.prompt_adapters = nn.ModuleList(nn.Linear(prompt_in, expert_dim) for _ in range(num_used))
        else:
            self.prompt_adapters_normal = nn.ModuleList(
                nn.Linear(prompt_in, expert_dim) for _ in range(num_used)
            )
            self.prompt_adapters_abnormal = nn.ModuleList(
                nn.Linear(prompt_in, expert_dim) for _ in range(num_used)
            )
        self.patch_adapters = nn.ModuleList(nn.Linear(vision_dim, expert_dim) for _ in range(num_used))
        if config.vt_attention:
            self.query_proj = nn.Linear(vision_dim, config.attention_dim)
            self.key_proj = nn.Linear(vision_dim, config.attention_dim)
        hidden = config.score_hidden_dim
        self.score_head = nn.Sequential(nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        # Adaptive average pooling (PyTorch ``adaptive_avg_pool2d``; for 27 -> 2 the cells overlap on the
        # middle row and column) written as a [P, T] matrix: row p averages the tokens of cell p. Derived from
        # the library function itself; not a parameter and not saved.
        one_hot_tokens = torch.eye(self.num_tokens).reshape(self.num_tokens, 1, grid, grid)
        cells = F.adaptive_avg_pool2d(one_hot_tokens, pool_grid).reshape(
            self.num_tokens, pool_grid * pool_grid
        )
        self.register_buffer("pool_matrix", cells.T.contiguous(), persistent=False)

    # ------------------------------------------------------------------ forward

    def _check_inputs(
        self, final_tokens: torch.Tensor, level_tokens: Sequence[torch.Tensor], crops_per_image: Sequence[int]
    ) -> None:
        expected = f"[N, {self.num_tokens}, {self.vision_dim}] (N crops, grid {self.grid}x{self.grid}, D)"
        if final_tokens.dim() != 3:
            raise ValueError(f"final_tokens has shape {tuple(final_tokens.shape)}; expected {expected}.")
        num_crops, num_tokens, dim = final_tokens.shape
        if num_tokens != self.num_tokens:
            side = math.isqrt(num_tokens)
            kind = "a square" if side * side == num_tokens else "not a square"
            raise ValueError(
                f"final_tokens has {num_tokens} tokens per crop ({kind}); this expert expects "
                f"grid*grid = {self.grid}*{self.grid} = {self.num_tokens}."
            )
        if dim != self.vision_dim:
            raise ValueError(f"final_tokens has width {dim}; expected vision_dim={self.vision_dim}.")
        if len(level_tokens) != self.num_levels:
            raise ValueError(
                f"level_tokens has {len(level_tokens)} tensors; expected num_levels={self.num_levels}, "
                f"each {expected}."
            )
        for k, tokens in enumerate(level_tokens):
            if tokens.shape != final_tokens.shape:
                raise ValueError(
                    f"level_tokens[{k}] has shape {tuple(tokens.shape)}; expected the shape of final_tokens "
                    f"{tuple(final_tokens.shape)}."
                )
        if len(crops_per_image) == 0 or any(int(n) < 1 for n in crops_per_image):
            raise ValueError(
                f"crops_per_image={list(crops_per_image)} must be a non-empty list of positive ints."
            )
        if sum(int(n) for n in crops_per_image) != num_crops:
            raise ValueError(
                f"crops_per_image={list(crops_per_image)} sums to {sum(int(n) for n in crops_per_image)}; "
                f"expected N={num_crops}, the number of crops in final_tokens."
            )

    def _prompt_inputs(self, final_tokens: torch.Tensor, first_crop: torch.Tensor) -> list[torch.Tensor]:
        """Return the parts of the prompt-map input, each [B, 2, E] (concatenated in this order)."""
        num_images = first_crop.numel()
        parts = []
        if self.config.learned_prompts:
            prompts = torch.stack([self.prompt_normal, self.prompt_abnormal])
            parts.append(prompts.unsqueeze(0).expand(num_images, -1, -1))
        if self.config.look_back:
            whole_image = final_tokens[first_crop]  # [B, T, D]
            pooled = (
                torch.einsum("btd,t->bd", whole_image, self.lookback_pool.weight[0]) + self.lookback_pool.bias
            )
            context = self.class_context(pooled)  # [B, E]
            parts.append(context.unsqueeze(1).expand(-1, 2, -1))
        return parts

    def _prompts(self, final_tokens: torch.Tensor, first_crop: torch.Tensor) -> torch.Tensor:
        """Return the normalised prompts d_k, [K, B, 2, E] (index 0 normal, 1 abnormal)."""
        prompt_input = torch.cat(self._prompt_inputs(final_tokens, first_crop), dim=-1)  # [B, 2, E_in]
        if self.config.shared_prompt_map:
            weight = torch.stack([m.weight for m in self.prompt_adapters])  # [K, E, E_in]
            bias = torch.stack([m.bias for m in self.prompt_adapters])  # [K, E]
            prompts = torch.einsum("bpi,kei->kbpe", prompt_input, weight) + bias[:, None, None]
        else:
            # Separate maps: stack (normal, abnormal) on a prompt axis and contract each with its own input.
            weight = torch.stack(
                [
                    torch.stack([n.weight, a.weight])
                    for n, a in zip(self.prompt_adapters_normal, self.prompt_adapters_abnormal, strict=True)
                ]
            )  # [K, 2, E, E_in]
            bias = torch.stack(
                [
                    torch.stack([n.bias, a.bias])
                    for n, a in zip(self.prompt_adapters_normal, self.prompt_adapters_abnormal, strict=True)
                ]
            )  # [K, 2, E]
            prompts = torch.einsum("bpi,kpei->kbpe", prompt_input, weight) + bias[:, None]
        return F.normalize(prompts, dim=-1)

    def _matching_logits(self, level_tokens: Sequence[torch.Tensor], prompts: torch.Tensor) -> torch.Tensor:
        """Return ``cos(u_k, d_k) / temperature`` for every used level, crop, patch and prompt, [K, N, T, 2].

        Args:
            level_tokens: The ``num_levels`` level inputs, each [N, T, D].
            prompts: Normalised prompts of each crop's image, [K, N, 2, E].
        """
        logits = []
        # One GEMM per level over all crops and patches: stacking the inputs first would copy [K, N, T, D]
        # (1.1 GB for 80 released-size crops) for the same arithmetic.
        for index, adapter, level_prompts in zip(self.levels, self.patch_adapters, prompts, strict=True):
            embedded = adapter(level_tokens[index])  # [N, T, E]
            # cos = (A x . d) / |A x|: dividing the two logits by the norm avoids a normalised [N, T, E] copy.
            norms = torch.linalg.vector_norm(embedded, dim=-1, keepdim=True).clamp_min(1e-12)
            logits.append(torch.einsum("nte,npe->ntp", embedded, level_prompts) / norms)
        return torch.stack(logits) / self.temperature

    def forward(
        self,
        final_tokens: torch.Tensor,
        level_tokens: Sequence[torch.Tensor],
        crops_per_image: Sequence[int],
    ) -> ExpertOutput:
        """Run the expert on the crops of a batch of images.

        Args:
            final_tokens: Final vision tokens of all crops, [N, T, D].
            level_tokens: ``num_levels`` tensors of level tokens, each [N, T, D].
            crops_per_image: Crops of each image (sums to N); each image's crops are contiguous in N and its
                first crop is the whole-image crop, which supplies the class context of all its crops.

        Returns:
            Local tokens [N, P, D], global tokens [B, D], scores [B], maps [N, grid, grid] and more
            (see :class:`ExpertOutput`).

        """
        self._check_inputs(final_tokens, level_tokens, crops_per_image)
        num_crops, _, dim = final_tokens.shape
        device = final_tokens.device
        counts = torch.as_tensor([int(n) for n in crops_per_image], device=device)
        num_images = counts.numel()
        image_of_crop = torch.repeat_interleave(torch.arange(num_images, device=device), counts)  # [N]
        first_crop = torch.cumsum(counts, 0) - counts  # [B]

        # Matching of every crop, level and patch against the prompts of the crop's own image.
        prompts = self._prompts(final_tokens, first_crop)[:, image_of_crop]  # [K, N, 2, E]
        logits = self._matching_logits(level_tokens, prompts)  # [K, N, T, 2]
        level_maps = logits.float().softmax(dim=-1)[..., 1].to(final_tokens.dtype)  # [K, N, T]
        crop_map = level_maps.mean(dim=0)  # [N, T]
        significance = crop_map.mean(dim=1)  # [N]

        # VT selector: map-weighted mean token of each pooling cell, then attention over the raw tokens.
        # pool_matrix rows average the tokens of one cell, so (pool_matrix * M) @ V = pool(V * M) without
        # materialising the [N, T, D] product.
        # (the buffer in the maps' dtype: a run that casts only the parameters, e.g. DeepSpeed bf16, keeps it)
        cell_weights = self.pool_matrix.to(crop_map.dtype) * crop_map.unsqueeze(1)  # [N, P, T]
        pooled_map = cell_weights.sum(dim=-1)  # [N, P] = pool(M)
        cell_mass = pooled_map.clamp_min(self.eps).unsqueeze(-1)  # a cell with no abnormality gives q = 0
        queries = torch.bmm(cell_weights, final_tokens) / cell_mass  # [N, P, D]
        if self.config.vt_attention:
            local_tokens = F.scaled_dot_product_attention(
                self.query_proj(queries),
                self.key_proj(final_tokens),
                final_tokens,
                scale=1.0 / math.sqrt(self.config.attention_dim),
            )  # [N, P, D]
        else:
            local_tokens = queries

        # Global token: weighted mean over the crops and cells of each image (segment sums, no loop).
        weights = pooled_map * significance.unsqueeze(-1)  # [N, P]
        numerator = torch.zeros(num_images, dim, dtype=local_tokens.dtype, device=device).index_add_(
            0, image_of_crop, torch.einsum("np,npd->nd", weights, local_tokens)
        )
        denominator = torch.zeros(num_images, dtype=weights.dtype, device=device).index_add_(
            0, image_of_crop, weights.sum(dim=1)
        )
        global_tokens = numerator / denominator.clamp_min(self.eps).unsqueeze(-1)  # [B, D]
        score_logits = self.score_head(global_tokens).squeeze(-1)  # [B]

        return ExpertOutput(
            local_tokens=local_tokens,
            global_tokens=global_tokens,
            scores=torch.sigmoid(score_logits),
            score_logits=score_logits,
            maps=crop_map.reshape(num_crops, self.grid, self.grid),
            level_maps=level_maps.permute(1, 0, 2).reshape(num_crops, len(self.levels), self.grid, self.grid),
            significance=significance,
        )

    def severity_words(self, scores: torch.Tensor) -> list[str]:
        """Return the severity adverb of each score with this expert's thresholds.

        Args:
            scores: Anomaly probabilities, [B].

        Returns:
            B words from :data:`SEVERITY_WORDS`.

        """
        return [severity_word(float(s), self.severity_thresholds) for s in scores.detach().float().cpu()]
