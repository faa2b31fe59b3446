"""The Anomaly-OV processor: images + conversations -> model inputs with every position reserved.

It wraps transformers' ``LlavaOnevisionProcessor`` (AnyRes image processing, LLaVA-OneVision's own count of
image tokens per image) and adds, per image, the positions of the severity text and of the anomaly tokens
(see :mod:`anomaly_ov.models.anomaly_ov` for the layout). Prompts are rendered and labelled by the single
conversation function :func:`anomaly_ov.data.conversation.tokenize_conversation`.

Two added special tokens mark the reserved positions: ``<severity>`` and ``<anomaly>``. They are added to
the tokenizer when missing (they are never embedded: the model overwrites their positions), and saved with it.

Image encoding (as LLaVA-OneVision): the image of a single-image sample gets AnyRes crops (the whole image
resized, then its tiles); each view of a multi-image sample is one crop (padded to a square). With
``anyres=False`` single images are encoded as one crop too.
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import BatchFeature, LlavaOnevisionProcessor, PreTrainedTokenizerBase
from transformers.models.llava_onevision.modeling_llava_onevision import (
    get_anyres_image_grid_shape,
)

from anomaly_ov.data.conversation import TokenizedConversation, tokenize_conversation
from anomaly_ov.data.crops import anyres_crops
from anomaly_ov.data.images import RELEASE_MAX_IMAGE_SIDE, limit_side
from anomaly_ov.data.tokens import (
    ANOMALY_TOKEN,
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    SEVERITY_TOKEN,
    SEVERITY_WORDS,
    PlaceholderTokens,
    anomaly_token_count,
    severity_text,
)

PROCESSOR_CONFIG_NAME = "anomaly_ov_processor.json"


def severity_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """Tokenizes the three severity texts with the LLM's own tokenizer (no hard-coded ids).

    Returns:
        Adverb ("slightly", "moderately", "highly") -> token ids of ``with {adverb} suspicious features: ``.
    """
    return {
        word: list(tokenizer(severity_text(word), add_special_tokens=False)["input_ids"])
        for word in SEVERITY_WORDS
    }


@dataclass
class EncodedImages:
    """The images of one sample, ready for the model.

    Attributes:
        pixel_values: Crops of all images, [N, 3, h, w] (each image's crops contiguous, whole image first).
        image_sizes: Original (height, width) of each image, [M, 2].
        image_num_crops: Crops of each image, [M].
        expansions: One string per image that replaces its ``<image>`` placeholder: the image tokens, the
            severity slots and the anomaly-token slots.
    """

    pixel_values: torch.Tensor
    image_sizes: torch.Tensor
    image_num_crops: torch.Tensor
    expansions: list[str]


@dataclass
class EncodedSample:
    """One tokenized conversation with its images.

    Attributes:
        input_ids: Token ids (reserved runs expanded).
        labels: Labels (assistant answers only).
        images: The sample's images, or None for a text-only sample.
    """

    input_ids: list[int]
    labels: list[int]
    images: EncodedImages | None


class AnomalyOVProcessor:
    """Prepares images and conversations for :class:`~anomaly_ov.models.anomaly_ov.AnomalyOV`.

    Args:
        base: transformers' LLaVA-OneVision processor of the checkpoint (tokenizer + image processor).
        pool_grid: Side of the expert's pooling grid (2 released: 4 local tokens per crop).
        anyres: Encode the image of a single-image sample with AnyRes tiles (LLaVA-OneVision's default);
            False encodes every image as one crop.
        system_prompt: System message of conversations that have none (None: no system message).
        expert_tokens: Reserve the severity-text and anomaly-token positions after each image (False for
            plain LLaVA-OneVision, a model without the expert).
        max_image_side: The release's long-side limit, applied to every image before anything else (the
            one image reader applies it too; None: off).
        label_rule: Which tokens are learned: "assistant" (answers and their ``<|im_end|>``) or "release"
            (LLaVA-NeXT's rule, SPEC §4); see :func:`anomaly_ov.data.conversation.tokenize_conversation`.
    """

    def __init__(
        self,
        base: LlavaOnevisionProcessor,
        pool_grid: int = 2,
        anyres: bool = True,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        expert_tokens: bool = True,
        max_image_side: int | None = RELEASE_MAX_IMAGE_SIDE,
        label_rule: str = "assistant",
    ) -> None:
        if base.num_image_tokens is None:
            raise ValueError(
                "the LLaVA-OneVision processor has no num_image_tokens; it cannot count image tokens."
            )
        if pool_grid < 1:
            raise ValueError(f"pool_grid={pool_grid} must be positive.")
        self.base = base
        self.tokenizer = base.tokenizer
        self.image_processor = base.image_processor
        self.pool_grid = pool_grid
        self.anyres = anyres
        self.system_prompt = system_prompt
        self.expert_tokens = expert_tokens
        self.max_image_side = max_image_side
        self.label_rule = label_rule
        vocab = self.tokenizer.get_vocab()  # once: a 151k-token vocabulary takes most of a second to list
        missing = [token for token in (SEVERITY_TOKEN, ANOMALY_TOKEN) if token not in vocab]
        if missing and expert_tokens:
            self.tokenizer.add_special_tokens(
                {
                    "extra_special_tokens": [
                        AddedToken(token, special=True, normalized=False) for token in missing
                    ]
                },
                replace_extra_special_tokens=False,
            )
        self.severity_ids = severity_token_ids(self.tokenizer) if expert_tokens else {}
        self.placeholders = PlaceholderTokens(
            image=base.image_token_id,
            severity=self.tokenizer.convert_tokens_to_ids(SEVERITY_TOKEN) if expert_tokens else None,
            anomaly=self.tokenizer.convert_tokens_to_ids(ANOMALY_TOKEN) if expert_tokens else None,
            severity_slots=max(len(ids) for ids in self.severity_ids.values()) if expert_tokens else 0,
        )
        size = self.image_processor.size
        self.crop_size = int(size["height"] if size.get("height") else size["shortest_edge"])
        grid = math.isqrt(int(base.num_image_tokens))
        self.patch_size = self.crop_size // grid

    @property
    def pad_token_id(self) -> int:
        """Id used to pad ``input_ids`` (the tokenizer's pad token, else its end-of-sequence token)."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    # ------------------------------------------------------------------ images

    def check_image(self, image: Image.Image, name: str) -> None:
        """Raises if ``image`` cannot be encoded (not a PIL image, or smaller than the vision patch size).

        Args:
            image: The image.
            name: Its name (file path) for the message.
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"{name}: expected a PIL image, got {type(image).__name__}.")
        width, height = image.size
        if min(width, height) < self.patch_size:
            raise ValueError(
                f"{name}: the image is {width}x{height} pixels, smaller than the vision patch size "
                f"{self.patch_size}; use an image of at least {self.patch_size}x{self.patch_size} pixels."
            )

    def without_expert_tokens(self) -> "AnomalyOVProcessor":
        """The same processor for plain LLaVA-OneVision (no severity or anomaly positions)."""
        return AnomalyOVProcessor(
            self.base,
            pool_grid=self.pool_grid,
            anyres=self.anyres,
            system_prompt=self.system_prompt,
            expert_tokens=False,
            max_image_side=self.max_image_side,
            label_rule=self.label_rule,
        )

    @property
    def reserved_ids(self) -> frozenset[int]:
        """Ids of every reserved (image, severity, anomaly) position: never labelled, never truncated."""
        ids = self.placeholders
        return frozenset(i for i in (ids.image, ids.severity, ids.anomaly) if i is not None)

    def _expansion(self, image_tokens: str, tile_grid: tuple[int, int] | None) -> str:
        if not self.expert_tokens:
            return image_tokens
        slots = self.placeholders.severity_slots
        anomaly = anomaly_token_count(tile_grid, self.pool_grid)
        return image_tokens + SEVERITY_TOKEN * slots + ANOMALY_TOKEN * anomaly

    def image_expansions(self, image_sizes: Sequence[Sequence[int]]) -> list[str]:
        """The placeholder expansion of each image of one sample, from the image sizes alone (no pixels).

        Args:
            image_sizes: (height, width) of each image after the long-side limit.

        Returns:
            One string per image: its image tokens (transformers' own count: unpadding, ``anyres_max_9``
            downsampling, newlines), then the severity slots and the anomaly-token slots.
        """
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        single = not (len(sizes) == 1 and self.anyres)
        side = self.crop_size
        # replace_image_token reads only the crop side from pixel_values; a single crop counts as a view of
        # a multi-image sample.
        counted = {
            "batch_num_images": [max(2, len(sizes))] if single else [1],
            "image_sizes": sizes,
            "pixel_values": torch.empty(1, 1, 0, side, side),
        }
        pinpoints = self.image_processor.image_grid_pinpoints
        expansions = []
        for index, size in enumerate(sizes):
            image_tokens = self.base.replace_image_token(counted, image_idx=index)
            tile_grid = None if single else tuple(get_anyres_image_grid_shape(size, pinpoints, side))
            expansions.append(self._expansion(image_tokens, tile_grid))
        return expansions

    def token_ids(
        self,
        turns: Sequence[Mapping[str, str]],
        image_sizes: Sequence[Sequence[int]],
        source: str = "conversation",
    ) -> list[int]:
        """Token ids of a training conversation from its image sizes only (no decoding, no pixels).

        Exactly the ``input_ids`` :meth:`encode` gives for images of these sizes; stage 2 uses it to plan
        lengths (truncation, length-grouped batches) before any image is read.

        Args:
            turns: The conversation.
            image_sizes: (height, width) of each image after the long-side limit (header sizes).
            source: Record name for error messages.
        """
        tokens = tokenize_conversation(
            turns,
            self.tokenizer,
            image_expansions=self.image_expansions(image_sizes) if len(image_sizes) > 0 else (),
            system_prompt=self.system_prompt,
            source=source,
            label_rule=self.label_rule,
        )
        return tokens.input_ids

    def encode_images(
        self, images: Sequence[Image.Image], names: Sequence[str] | None = None
    ) -> EncodedImages:
        """Encodes the images of one sample (one image: AnyRes unless ``anyres=False``; several: one crop
        each).

        Args:
            images: The sample's images (PIL, any mode; converted to RGB by the image processor).
            names: A name per image for error messages (file paths); defaults to "image <i>".

        Returns:
            Crops, sizes, crop counts and the placeholder expansion of each image.

        Raises:
            ValueError: If there is no image or an image is smaller than the vision patch size.
        """
        if len(images) == 0:
            raise ValueError("encode_images needs at least one image.")
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        for image, name in zip(images, names, strict=True):
            self.check_image(image, name)
        images = [limit_side(image.convert("RGB"), self.max_image_side) for image in images]
        single = not (len(images) == 1 and self.anyres)
        crops = anyres_crops(self.image_processor, images, single_crop=single)
        expansions = self.image_expansions(crops.image_sizes)
        return EncodedImages(
            pixel_values=crops.pixel_values,
            image_sizes=torch.tensor(crops.image_sizes, dtype=torch.long),
            image_num_crops=torch.tensor(crops.crops_per_image, dtype=torch.long),
            expansions=expansions,
        )

    # ------------------------------------------------------------------ conversations

    def encode(
        self,
        turns: Sequence[Mapping[str, str]],
        images: Sequence[Image.Image] = (),
        add_generation_prompt: bool = False,
        source: str = "conversation",
        image_names: Sequence[str] | None = None,
    ) -> EncodedSample:
        """Encodes one conversation (SPEC §5 turns) and its images.

        Args:
            turns: The conversation; its ``<image>`` placeholders take the images in order.
            images: The sample's images.
            add_generation_prompt: End with the assistant header (for generation).
            source: Record name for error messages.
            image_names: Names of the images for error messages.

        Returns:
            Token ids, labels (assistant answers only) and the encoded images.
        """
        encoded = self.encode_images(images, image_names) if len(images) > 0 else None
        tokens: TokenizedConversation = tokenize_conversation(
            turns,
            self.tokenizer,
            image_expansions=encoded.expansions if encoded is not None else (),
            system_prompt=self.system_prompt,
            add_generation_prompt=add_generation_prompt,
            source=source,
            label_rule=self.label_rule,
        )
        return EncodedSample(input_ids=tokens.input_ids, labels=tokens.labels, images=encoded)

    def collate(self, samples: Sequence[EncodedSample], padding_side: str = "right") -> BatchFeature:
        """Pads encoded samples into a batch.

        Args:
            samples: Encoded samples.
            padding_side: "right" for training, "left" for generation.

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` [B, L]; and when any sample has images
            ``pixel_values`` [N, 3, h, w], ``image_sizes`` [M, 2], ``image_num_crops`` [M],
            ``batch_num_images`` [B].
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'left' or 'right'.")
        if len(samples) == 0:
            raise ValueError("collate needs at least one sample.")
        length = max(len(sample.input_ids) for sample in samples)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            size = len(sample.input_ids)
            span = slice(length - size, length) if padding_side == "left" else slice(0, size)
            input_ids[row, span] = torch.tensor(sample.input_ids, dtype=torch.long)
            labels[row, span] = torch.tensor(sample.labels, dtype=torch.long)
            attention_mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        with_images = [sample.images for sample in samples if sample.images is not None]
        if with_images:
            batch["pixel_values"] = torch.cat([images.pixel_values for images in with_images])
            batch["image_sizes"] = torch.cat([images.image_sizes for images in with_images])
            batch["image_num_crops"] = torch.cat([images.image_num_crops for images in with_images])
            batch["batch_num_images"] = torch.tensor(
                [0 if sample.images is None else len(sample.images.expansions) for sample in samples]
            )
        return BatchFeature(batch)

    def __call__(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        images: Sequence[Sequence[Image.Image]] | None = None,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
    ) -> BatchFeature:
        """Encodes and pads a batch of conversations (defaults suit generation).

        Args:
            conversations: One list of SPEC §5 turns per sample.
            images: One list of images per sample (None: text only).
            add_generation_prompt: End each prompt with the assistant header.
            padding_side: "left" (generation) or "right" (training).

        Returns:
            The batch of :meth:`collate`.
        """
        images = images if images is not None else [()] * len(conversations)
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists.")
        samples = [
            self.encode(turns, sample_images, add_generation_prompt, source=f"sample {index}")
            for index, (turns, sample_images) in enumerate(zip(conversations, images, strict=True))
        ]
        return self.collate(samples, padding_side)

    def decode(self, token_ids: torch.Tensor | Sequence[int]) -> str:
        """Decodes generated ids to text (special tokens dropped, surrounding whitespace stripped)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes transformers' processor files (tokenizer with the added tokens) and these settings."""
        folder = Path(folder)
        self.base.save_pretrained(folder)
        settings = {
            "pool_grid": self.pool_grid,
            "anyres": self.anyres,
            "system_prompt": self.system_prompt,
            "expert_tokens": self.expert_tokens,
            "max_image_side": self.max_image_side,
            "label_rule": self.label_rule,
        }
        (folder / PROCESSOR_CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "AnomalyOVProcessor":
        """Loads a processor written by :meth:`save_pretrained`."""
        folder = Path(folder)
        path = folder / PROCESSOR_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} holds no {PROCESSOR_CONFIG_NAME}; not a saved AnomalyOVProcessor."
            )
        settings = json.loads(path.read_text())
        return cls(LlavaOnevisionProcessor.from_pretrained(folder), **settings)
