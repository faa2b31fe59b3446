"""What :class:`~anomaly_ov.models.anomaly_ov.AnomalyOV` returns: the per-image encoding, the composed LLM
input and the outputs of ``forward`` and ``generate``.

Notation: ``B`` samples, ``L`` sequence length, ``M`` images of the batch, ``N`` crops of all images, ``K``
labelled positions, ``H`` LLM width.
"""

from dataclasses import dataclass

import torch

from anomaly_ov.models.expert import ExpertOutput


@dataclass
class ImageEncoding:
    """What the images of a batch put into the LLM input, one entry per image (M images).

    Attributes:
        image_features: Packed LLaVA-OneVision image features, each [n_image, H].
        severity_embeds: Embedded severity text, each [s, H] (s <= severity slots).
        anomaly_tokens: Projected anomaly tokens with newlines, each [n_anomaly, H].
        severity_words: The adverb chosen for each image.
        crops_per_image: Crops of each image.
        expert: The expert's outputs (scores [M], maps [N, g, g], ...); None for a model without the
            expert (then the severity and anomaly lists are empty).
    """

    image_features: list[torch.Tensor]
    severity_embeds: list[torch.Tensor]
    anomaly_tokens: list[torch.Tensor]
    severity_words: list[str]
    crops_per_image: list[int]
    expert: ExpertOutput | None


@dataclass
class MultimodalEmbedding:
    """The composed LLM input of a batch.

    Attributes:
        inputs_embeds: [B, L, H].
        attention_mask: [B, L]; 0 on padding and on unused severity slots.
        position_ids: [B, L], ``cumsum(attention_mask) - 1`` (0 on masked positions).
        labels: [B, L] with -100 on every reserved position, or None.
        images: The per-image encoding, or None for a text-only batch.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    images: ImageEncoding | None


@dataclass
class AnomalyOVOutput:
    """Output of :meth:`AnomalyOV.forward`.

    Attributes:
        logits: Without labels: [B, L, vocab], or [B, k, vocab] for the last ``logits_to_keep=k``
            positions. With labels: [K, vocab], only the K positions that predict a label (the vocabulary
            projection is computed nowhere else).
        loss: Mean next-token cross-entropy over labelled positions, or None without labels.
        embedding: The composed input (mask, positions, per-image expert outputs).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    embedding: MultimodalEmbedding

    @property
    def scores(self) -> torch.Tensor | None:
        """Expert anomaly score per image, [M] (None for a text-only batch or a model without the expert)."""
        images = self.embedding.images
        return None if images is None or images.expert is None else images.expert.scores


@dataclass
class AnomalyOVGeneration:
    """Output of :meth:`AnomalyOV.generate`.

    Attributes:
        sequences: Generated token ids only (the prompt is not repeated), [B, new_tokens].
        embedding: The composed prompt input (per-image expert scores, maps and severity words).
    """

    sequences: torch.Tensor
    embedding: MultimodalEmbedding

    @property
    def images(self) -> ImageEncoding | None:
        """Per-image encoding of the prompt (None for a text-only batch)."""
        return self.embedding.images
