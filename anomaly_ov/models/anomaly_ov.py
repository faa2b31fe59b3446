"""Anomaly-OV: transformers' LLaVA-OneVision with the anomaly expert's tokens fed to the LLM (SPEC §1, §3).

Xu et al., "Towards Zero-Shot Anomaly Detection and Reasoning with Multimodal Large Language Models",
CVPR 2025 (https://arxiv.org/abs/2502.07601).

Everything LLaVA-OneVision does is done by transformers' ``LlavaOnevisionForConditionalGeneration``: the
vision tower, the 2-layer projector, AnyRes packing (``pack_image_features``: unpadding, ``anyres_max_9``
downsampling, the image-newline embedding), the language model and ``generate``. :class:`AnomalyOV` only
composes the LLM input: it runs the vision tower once per crop, feeds its tokens both to LLaVA-OneVision's
packing and to the frozen :class:`~anomaly_ov.models.expert.AnomalyExpert`, and writes, after each image's
ordinary tokens, the severity text and the projected anomaly tokens (SPEC §3).

How positions are reserved. The processor (:class:`~anomaly_ov.models.processor.AnomalyOVProcessor`)
expands every ``<image>`` of a prompt into three runs of placeholder tokens::

    <image> x n_image      LLaVA-OneVision's own count (packed image features incl. newlines)
    <severity> x S         S = the longest of the three severity texts in this tokenizer's tokens
    <anomaly> x n_anomaly  1 + P + rows * (cols + 1) with tiles, 1 + P + 1 for a single crop

so ``input_ids``, ``labels`` and ``attention_mask`` have their final length before the model runs, and
padding and batching work as for any LLM. At forward time the model fills the runs in order. The severity
text is chosen from the expert's score, so its length is only known then: a text shorter than S is written
into the *last* slots and the unused first slots get attention mask 0. Position ids are
``cumsum(attention_mask) - 1`` (as ``generate`` computes them), so such a hole is invisible to the LLM: the
sequence behaves exactly like one without it. With Qwen2's tokenizer (and the tiny zoo's) the three texts
all have six tokens and no hole ever appears.

Anomaly tokens of one image (P = ``pool_grid ** 2`` local tokens per crop, 4 for the released 2x2 grid):

* with AnyRes tiles (an ``nh x nw`` tile grid): ``[r, t_0 (P), tiles]`` where ``tiles`` lays the tiles' local
  tokens out as a ``(pool*nh) x (pool*nw)`` grid, row-major, with the image-newline embedding after each
  row;
* single crop (no tiles, or each view of a multi-image sample): ``[r, t_0 (P), newline]``.

``r`` (global token) and ``t`` (local tokens) go through LLaVA-OneVision's projector, the one shared with
the ordinary image tokens. All reserved positions carry label -100.

Notation: ``B`` samples, ``L`` sequence length, ``M`` images of the batch, ``N`` crops of all images,
``T`` patch tokens per crop, ``D`` vision width, ``H`` LLM width.
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

from anomaly_ov.data.tokens import (
    ANOMALY_TOKEN,
    IGNORE_INDEX,
    SEVERITY_TOKEN,
    SEVERITY_WORDS,
    PlaceholderTokens,
    severity_word,
)
from anomaly_ov.models.expert import AnomalyExpert
from anomaly_ov.models.outputs import (
    AnomalyOVGeneration,
    AnomalyOVOutput,
    ImageEncoding,
    MultimodalEmbedding,
)


class AnomalyOV(nn.Module):
    """LLaVA-OneVision plus the frozen anomaly expert (SPEC §1, §3).

    The vision tower and the expert are frozen (SPEC §4, stage 2): they run without autograd and their
    parameters have ``requires_grad=False``. The projector, the image newline and the LLM keep whatever the
    caller (a LoRA adapter, full fine-tuning) makes trainable.

    Args:
        llava: A constructed ``LlavaOnevisionForConditionalGeneration`` (its ``vision_feature_layer`` must
            be one int: the expert reads those same final tokens).
        expert: A constructed anomaly expert sized for this vision tower (``vision_dim`` = vision width,
            ``grid`` = tokens per side), or None for plain LLaVA-OneVision (no severity text, no anomaly
            tokens: the baselines of the paper's Table 4). Its ``severity_thresholds`` choose the severity
            adverb.
        level_layers: Vision hidden-state indices of the expert's level tokens (released: [7, 13, 19, 25];
            tiny zoo: [2, 3, 4, 5]).
        placeholders: Ids of the reserved positions (from the processor's tokenizer).
        severity_ids: Adverb -> token ids of the severity text
            (:func:`anomaly_ov.models.processor.severity_token_ids`).
    """

    def __init__(
        self,
        llava: LlavaOnevisionForConditionalGeneration,
        expert: AnomalyExpert | None,
        level_layers: Sequence[int],
        placeholders: PlaceholderTokens,
        severity_ids: Mapping[str, Sequence[int]],
    ) -> None:
        super().__init__()
        config = llava.config
        vision_config = config.vision_config
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError(
                f"vision_feature_layer={config.vision_feature_layer!r}: Anomaly-OV needs one vision layer "
                "(the expert reads the same final tokens as the projector)."
            )
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"unknown vision_feature_select_strategy {config.vision_feature_select_strategy!r}"
            )
        if expert is not None:
            self._check_expert(expert, vision_config, level_layers, placeholders, severity_ids)
        elif placeholders.severity is not None or placeholders.anomaly is not None:
            raise ValueError(
                "the processor reserves severity/anomaly positions but the model has no expert: build the "
                "processor with expert_tokens=False."
            )
        if placeholders.image != config.image_token_id:
            raise ValueError(
                f"placeholders.image={placeholders.image} but the model's image_token_id is "
                f"{config.image_token_id}: the processor and the checkpoint disagree."
            )
        self.llava = llava
        self.expert = expert
        self.level_layers = tuple(int(i) for i in level_layers)
        self.placeholders = placeholders
        self.severity_ids = {word: tuple(int(i) for i in ids) for word, ids in severity_ids.items()}
        self.num_prefix_tokens = 1 if config.vision_feature_select_strategy == "default" else 0
        self.llava.model.vision_tower.requires_grad_(False)
        if self.expert is not None:
            self.expert.requires_grad_(False)
        self.train(False)

    @staticmethod
    def _check_expert(
        expert: AnomalyExpert,
        vision_config: object,
        level_layers: Sequence[int],
        placeholders: PlaceholderTokens,
        severity_ids: Mapping[str, Sequence[int]],
    ) -> None:
        """Raises if the expert, its level taps or the reserved positions do not fit this model."""
        grid = vision_config.image_size // vision_config.patch_size
        if expert.vision_dim != vision_config.hidden_size or expert.grid != grid:
            raise ValueError(
                f"expert (vision_dim={expert.vision_dim}, grid={expert.grid}) does not fit the vision tower "
                f"(hidden_size={vision_config.hidden_size}, {grid}x{grid} tokens)."
            )
        if len(level_layers) != expert.num_levels:
            raise ValueError(
                f"level_layers={list(level_layers)} has {len(level_layers)} entries; the expert reads "
                f"num_levels={expert.num_levels} levels."
            )
        if placeholders.severity is None or placeholders.anomaly is None:
            raise ValueError(
                "the model has an expert but the processor reserves no severity/anomaly positions "
                "(expert_tokens=False)."
            )
        if set(severity_ids) != set(SEVERITY_WORDS):
            raise ValueError(
                f"severity_ids has keys {sorted(severity_ids)}; expected {list(SEVERITY_WORDS)}."
            )
        for word, ids in severity_ids.items():
            if not 1 <= len(ids) <= placeholders.severity_slots:
                raise ValueError(
                    f"the severity text for {word!r} has {len(ids)} tokens; the processor reserves "
                    f"{placeholders.severity_slots} positions."
                )

    def train(self, mode: bool = True) -> "AnomalyOV":
        """Sets the mode; the frozen vision tower and expert always stay in eval mode."""
        super().train(mode)
        self.llava.model.vision_tower.eval()
        if self.expert is not None:
            self.expert.eval()
        return self

    @property
    def pool_grid(self) -> int:
        """Side of the expert's pooling grid (P = pool_grid ** 2 local tokens per crop)."""
        if self.expert is None:
            raise AttributeError("a model without the expert has no pooling grid.")
        return self.expert.pool_grid

    # ------------------------------------------------------------------ images

    def _flatten_crops(
        self, pixel_values: torch.Tensor, image_num_crops: torch.Tensor | Sequence[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Returns the crops of all images as [N, 3, h, w] and the crop count of each image.

        ``pixel_values`` is either already flat ([N, 3, h, w], the processor's output) or padded per image
        ([M, max_crops, 3, h, w], transformers' LLaVA-OneVision layout).
        """
        counts = [int(c) for c in image_num_crops]
        if pixel_values.dim() == 5:
            if len(counts) != pixel_values.shape[0]:
                raise ValueError(
                    f"pixel_values holds {pixel_values.shape[0]} images but image_num_crops has "
                    f"{len(counts)}."
                )
            pixel_values = torch.cat(
                [image[:count] for image, count in zip(pixel_values, counts, strict=True)]
            )
        elif pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected 4 or 5 dimensions."
            )
        if sum(counts) != pixel_values.shape[0] or min(counts, default=0) < 1:
            raise ValueError(
                f"image_num_crops={counts} (sum {sum(counts)}) does not match the "
                f"{pixel_values.shape[0]} crops in pixel_values."
            )
        return pixel_values, counts

    @torch.no_grad()
    def vision_tokens(self, crops: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs the vision tower once and returns the final tokens and the expert's level tokens.

        Args:
            crops: [N, 3, h, w].

        Returns:
            Final tokens [N, T, D] (LLaVA-OneVision's ``vision_feature_layer``, its selection strategy
            applied) and one [N, T, D] tensor per level layer.
        """
        tower = self.llava.model.vision_tower
        final_layer = self.llava.config.vision_feature_layer
        # Only the needed hidden states are kept (transformers accepts a list of indices).
        outputs = tower(
            crops.to(tower.dtype),
            output_hidden_states=[*self.level_layers, final_layer],
            return_dict=True,
        )
        hidden = outputs.hidden_states
        prefix = self.num_prefix_tokens
        return hidden[final_layer][:, prefix:], [hidden[i][:, prefix:] for i in self.level_layers]

    def _anomaly_sequence(
        self,
        global_token: torch.Tensor,
        local_tokens: torch.Tensor,
        image_size: Sequence[int],
        newline: torch.Tensor,
    ) -> torch.Tensor:
        """Lays out one image's projected anomaly tokens (SPEC §3).

        Args:
            global_token: [H].
            local_tokens: [c, P, H], the image's crops (whole image first, then tiles row-major).
            image_size: Original (height, width) of the image.
            newline: The image-newline embedding, [H].

        Returns:
            [n_anomaly, H]: ``[r, t_0, newline]`` for one crop, ``[r, t_0, tile grid with newlines]`` else.
        """
        pool = self.pool_grid
        head = torch.cat([global_token[None], local_tokens[0]])
        num_crops, _, width = local_tokens.shape
        if num_crops == 1:
            return torch.cat([head, newline[None]])
        config = self.llava.config
        rows, cols = get_anyres_image_grid_shape(
            [int(s) for s in image_size], config.image_grid_pinpoints, config.vision_config.image_size
        )
        if rows * cols != num_crops - 1:
            raise ValueError(
                f"an image of size {tuple(int(s) for s in image_size)} has a {rows}x{cols} AnyRes tile grid, "
                f"but {num_crops - 1} tiles were given."
            )
        # tile (a, b), cell (i, j) -> grid position (a * pool + i, b * pool + j)
        grid = (local_tokens[1:].reshape(rows, cols, pool, pool, width).permute(0, 2, 1, 3, 4)).reshape(
            rows * pool, cols * pool, width
        )
        grid = torch.cat([grid, newline.expand(rows * pool, 1, width)], dim=1)
        return torch.cat([head, grid.reshape(-1, width)])

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        image_num_crops: torch.Tensor | Sequence[int],
    ) -> ImageEncoding:
        """Encodes the images of a batch: packed image features, severity text, anomaly tokens.

        Args:
            pixel_values: Crops, [N, 3, h, w] (or [M, max_crops, 3, h, w]).
            image_sizes: Original (height, width) of each image, [M, 2].
            image_num_crops: Crops of each image, [M].

        Returns:
            The per-image pieces of the LLM input and the expert's outputs.
        """
        crops, counts = self._flatten_crops(pixel_values, image_num_crops)
        if len(image_sizes) != len(counts):
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {len(counts)} images.")
        final, levels = self.vision_tokens(crops)
        llava = self.llava.model
        projector = llava.multi_modal_projector
        dtype = projector.linear_1.weight.dtype
        image_features, _ = llava.pack_image_features(
            torch.split(projector(final.to(dtype)), counts),
            image_sizes,
            image_newline=llava.image_newline,
            vision_aspect_ratio=self.llava.config.vision_aspect_ratio,
        )
        if self.expert is None:
            return ImageEncoding(
                image_features=list(image_features),
                severity_embeds=[],
                anomaly_tokens=[],
                severity_words=[],
                crops_per_image=counts,
                expert=None,
            )
        with torch.no_grad():
            expert = self.expert(
                final.to(self.expert_dtype), [t.to(self.expert_dtype) for t in levels], counts
            )
        local_tokens = torch.split(projector(expert.local_tokens.to(dtype)), counts)
        global_tokens = projector(expert.global_tokens.to(dtype))
        newline = llava.image_newline.to(global_tokens.device, dtype)
        anomaly_tokens = [
            self._anomaly_sequence(global_tokens[i], local_tokens[i], image_sizes[i], newline)
            for i in range(len(counts))
        ]

        words = [
            severity_word(float(s), self.expert.severity_thresholds) for s in expert.scores.float().cpu()
        ]
        embed = self.llava.get_input_embeddings()
        severity_embeds = [
            embed(torch.tensor(self.severity_ids[word], device=embed.weight.device)) for word in words
        ]
        return ImageEncoding(
            image_features=list(image_features),
            severity_embeds=severity_embeds,
            anomaly_tokens=anomaly_tokens,
            severity_words=words,
            crops_per_image=counts,
            expert=expert,
        )

    @property
    def expert_dtype(self) -> torch.dtype:
        """Parameter dtype of the expert (its inputs are cast to it)."""
        return next(self.expert.parameters()).dtype

    # ------------------------------------------------------------------ sequence composition

    def _images_per_sample(
        self, batch_num_images: torch.Tensor | Sequence[int] | None, batch: int, images: int
    ):
        if batch_num_images is None:
            if images != batch:
                raise ValueError(
                    f"the batch has {images} images for {batch} samples: pass batch_num_images "
                    "(images per sample)."
                )
            return [1] * batch
        counts = [int(n) for n in batch_num_images]
        if len(counts) != batch or sum(counts) != images:
            raise ValueError(
                f"batch_num_images={counts} does not describe {images} images in {batch} samples."
            )
        return counts

    def _check_reserved_counts(
        self, reserved: Mapping[str, torch.Tensor], images: ImageEncoding, per_sample: Sequence[int]
    ) -> None:
        """Raises if a sample's reserved positions do not match its images' pieces, saying how many."""
        slots = self.placeholders.severity_slots
        lengths = {"<image>": [len(f) for f in images.image_features]}
        if self.expert is not None:
            lengths[SEVERITY_TOKEN] = [slots] * len(images.image_features)
            lengths[ANOMALY_TOKEN] = [len(a) for a in images.anomaly_tokens]
        found = {name: mask.sum(dim=1).tolist() for name, mask in reserved.items()}
        start = 0
        for sample, count in enumerate(per_sample):
            for name, per_image in lengths.items():
                expected = sum(per_image[start : start + count])
                if found[name][sample] != expected:
                    raise ValueError(
                        f"sample {sample}: its {count} image(s) need {expected} {name} positions "
                        f"(per image {per_image[start : start + count]}), found {found[name][sample]} in "
                        "input_ids; prepare inputs with AnomalyOVProcessor for the same images."
                    )
            start += count

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_num_crops: torch.Tensor | Sequence[int] | None = None,
        batch_num_images: torch.Tensor | Sequence[int] | None = None,
        labels: torch.Tensor | None = None,
    ) -> MultimodalEmbedding:
        """Composes the LLM input: token embeddings with every reserved run filled (see module docstring).

        Args:
            input_ids: [B, L] with the processor's reserved runs.
            attention_mask: [B, L] (1 = real token); all ones if None.
            pixel_values: Crops of all images, [N, 3, h, w]; None for a text-only batch.
            image_sizes: [M, 2] original (height, width) of each image.
            image_num_crops: [M] crops per image.
            batch_num_images: [B] images per sample (may be omitted when every sample has one image).
            labels: [B, L] or None.

        Returns:
            Embeddings [B, L, H], the attention mask with unused severity slots masked, position ids, labels
            with -100 on every reserved position, and the images' encoding.

        Raises:
            ValueError: If a sample's reserved positions do not match its images (how many expected, found).
        """
        ids = self.placeholders
        batch, _ = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        reserved = {"<image>": input_ids == ids.image}
        if self.expert is not None:
            reserved[SEVERITY_TOKEN] = input_ids == ids.severity
            reserved[ANOMALY_TOKEN] = input_ids == ids.anomaly
        any_reserved = torch.stack(list(reserved.values())).any(dim=0)
        embed = self.llava.get_input_embeddings()
        # Placeholder ids may lie outside the embedding table (tokens added to the tokenizer); their
        # embeddings are overwritten below anyway.
        inputs_embeds = embed(input_ids.masked_fill(any_reserved, 0).to(embed.weight.device))
        if labels is not None:
            labels = labels.masked_fill(any_reserved, IGNORE_INDEX)

        images = None
        if pixel_values is None:
            if bool(any_reserved.any()):
                raise ValueError(
                    f"input_ids hold {int(any_reserved.sum())} reserved image/severity/anomaly positions "
                    "but no pixel_values were given."
                )
        else:
            if image_sizes is None or image_num_crops is None:
                raise ValueError(
                    "pixel_values needs image_sizes and image_num_crops (from AnomalyOVProcessor)."
                )
            images = self.encode_images(pixel_values, image_sizes, image_num_crops)
            per_sample = self._images_per_sample(batch_num_images, batch, len(images.crops_per_image))
            self._check_reserved_counts(reserved, images, per_sample)

            device, dtype = inputs_embeds.device, inputs_embeds.dtype
            if self.expert is None:
                mask = reserved["<image>"].to(device).unsqueeze(-1)
                inputs_embeds = inputs_embeds.masked_scatter(
                    mask, torch.cat(images.image_features).to(device, dtype)
                )
                return self._embedding(inputs_embeds, attention_mask, labels, images)
            slots = ids.severity_slots
            severity = []
            hole = []
            for text in images.severity_embeds:
                unused = slots - len(text)
                severity.append(torch.cat([text.new_zeros(unused, text.shape[-1]), text]))
                hole.append(torch.arange(slots, device=device) < unused)
            pieces = {
                "<image>": images.image_features,
                SEVERITY_TOKEN: severity,
                ANOMALY_TOKEN: images.anomaly_tokens,
            }
            for name, parts in pieces.items():
                mask = reserved[name].to(device).unsqueeze(-1)
                values = torch.cat(parts).to(device, dtype)
                inputs_embeds = inputs_embeds.masked_scatter(mask, values)
            holes = torch.zeros_like(reserved[SEVERITY_TOKEN]).masked_scatter(
                reserved[SEVERITY_TOKEN], torch.cat(hole).to(input_ids.device)
            )
            attention_mask = attention_mask.masked_fill(holes, 0)

        return self._embedding(inputs_embeds, attention_mask, labels, images)

    @staticmethod
    def _embedding(
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        images: ImageEncoding | None,
    ) -> MultimodalEmbedding:
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return MultimodalEmbedding(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            images=images,
        )

    # ------------------------------------------------------------------ forward / generate

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_num_crops: torch.Tensor | Sequence[int] | None = None,
        batch_num_images: torch.Tensor | Sequence[int] | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> AnomalyOVOutput:
        """Runs the model on a batch prepared by the processor (arguments as in :meth:`embed_inputs`).

        The vocabulary projection is computed only where it is used. Most positions of a sample are image
        tokens with label -100 (SPEC §4): with ``labels``, the LLM's last hidden states are gathered at the
        K positions that predict a label, and only those go through ``lm_head`` and the cross-entropy. The
        loss equals transformers' full-logits loss (the mean next-token cross-entropy over labelled
        positions, computed in float32); a batch without any label gives a zero loss that still has a graph.

        Args:
            input_ids: [B, L] with the processor's reserved runs.
            attention_mask: [B, L] (1 = real token).
            pixel_values: Crops of all images, [N, 3, h, w]; None for a text-only batch.
            image_sizes: [M, 2].
            image_num_crops: [M].
            batch_num_images: [B].
            labels: [B, L] or None.
            logits_to_keep: Without labels, keep only the last ``k`` positions' logits (0 = all); 1 is what
                scoring the next token needs.

        Returns:
            Logits (see :class:`AnomalyOVOutput`), the loss when ``labels`` are given (every reserved
            position is -100) and the composed input with the expert's outputs.
        """
        embedding = self.embed_inputs(
            input_ids, attention_mask, pixel_values, image_sizes, image_num_crops, batch_num_images, labels
        )
        hidden = self.llava.model(
            inputs_embeds=embedding.inputs_embeds,
            attention_mask=embedding.attention_mask,
            position_ids=embedding.position_ids,
            use_cache=False,
        ).last_hidden_state
        lm_head = self.llava.lm_head
        if embedding.labels is None:
            kept = hidden if logits_to_keep <= 0 else hidden[:, -logits_to_keep:]
            return AnomalyOVOutput(logits=lm_head(kept), loss=None, embedding=embedding)
        targets = embedding.labels[:, 1:].to(hidden.device)
        labelled = targets != IGNORE_INDEX
        logits = lm_head(hidden[:, :-1][labelled])
        if logits.shape[0] == 0:
            loss = hidden.sum() * 0.0
        else:
            loss = F.cross_entropy(logits.float(), targets[labelled])
        return AnomalyOVOutput(logits=logits, loss=loss, embedding=embedding)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_num_crops: torch.Tensor | Sequence[int] | None = None,
        batch_num_images: torch.Tensor | Sequence[int] | None = None,
        **generate_kwargs: object,
    ) -> AnomalyOVGeneration:
        """Generates answers with transformers' ``generate`` (KV cache) from the composed prompt embeddings.

        The vision tower and the expert run once, on the prompt; decoding steps only see new tokens. Left
        padding is the right choice for batches (the processor's ``padding_side="left"``).

        Args:
            input_ids: [B, L] prompts from the processor.
            attention_mask: [B, L].
            pixel_values: Crops, [N, 3, h, w].
            image_sizes: [M, 2].
            image_num_crops: [M].
            batch_num_images: [B].
            **generate_kwargs: Passed to ``generate`` (``max_new_tokens``, ``do_sample``, ...).

        Returns:
            The new tokens [B, new_tokens] and the prompt's composed input (expert scores, maps, words).
        """
        embedding = self.embed_inputs(
            input_ids, attention_mask, pixel_values, image_sizes, image_num_crops, batch_num_images
        )
        sequences = self.llava.generate(
            inputs_embeds=embedding.inputs_embeds,
            attention_mask=embedding.attention_mask,
            **generate_kwargs,
        )
        return AnomalyOVGeneration(sequences=sequences, embedding=embedding)
