"""Inference with Anomaly-OV: load a model, read images, ask questions, get answers, scores and maps.

A pipeline is built either from a composed Hydra config (``configs/chat.yaml`` / ``configs/predict.yaml``,
through the builders) or from a folder written by :func:`anomaly_ov.checkpoints.model_folder.save_anomaly_ov`.
Prompts go through the processor and the one conversation function, exactly as in training.
"""

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from anomaly_ov.checkpoints.model_folder import load_anomaly_ov
from anomaly_ov.config import config_dir as default_config_dir
from anomaly_ov.data.crops import crop_map_to_image
from anomaly_ov.data.tokens import IM_END
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.models.outputs import AnomalyOVGeneration
from anomaly_ov.models.processor import AnomalyOVProcessor


def compose_config(
    name: str, overrides: Sequence[str] = (), config_dir: str | Path | None = None
) -> DictConfig:
    """Composes a Hydra config (e.g. "chat", "predict") with command-line style overrides.

    Args:
        name: Config name in ``config_dir`` (without .yaml).
        overrides: Hydra overrides ("model/llm=llava_ov_05b", "paths.zoo_dir=/zoo", ...).
        config_dir: The configs folder (default: :func:`anomaly_ov.config.config_dir`, the repository's
            ``configs`` or the copy installed with the package).

    Raises:
        ValueError: With Hydra's own message, for an override that names no key, group or option.
    """
    try:
        folder = Path(config_dir) if config_dir is not None else default_config_dir()
        with initialize_config_dir(version_base=None, config_dir=str(folder.resolve())):
            return compose(config_name=name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ValueError(f"config {name!r} with overrides {list(overrides)}: {error}") from error


def add_model_arguments(parser: argparse.ArgumentParser, config_name: str) -> None:
    """Adds the model-selection options shared by the inference commands.

    Args:
        parser: The command's parser.
        config_name: The command's config in ``configs/`` (named in the help text).
    """
    parser.add_argument(
        "--model", type=Path, default=None, help="a saved Anomaly-OV folder (replaces model.*)"
    )
    parser.add_argument(
        "--config-dir", type=Path, default=None, help="configs folder (default: the project's configs)"
    )
    parser.add_argument(
        "--config-overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"Hydra overrides of configs/{config_name}.yaml, e.g. model/llm=llava_ov_05b paths.zoo_dir=/zoo",
    )


@dataclass
class ImageFinding:
    """What the expert says about one image.

    Attributes:
        score: Anomaly probability in [0, 1].
        severity: The adverb given to the LLM ("slightly", "moderately", "highly").
        anomaly_map: Map of the whole image in [0, 1], [h, w] (the expert's grid, or the image's size when
            padding had to be cut away); resize it to the image to overlay it.
        tile_maps: Maps of the image's AnyRes tiles, [n, g, g] in row-major order (None for a single crop:
            a view of a multi-view sample, or AnyRes off).
        image_size: (height, width) of the image as the processor saw it (after the long-side limit).
    """

    score: float
    severity: str
    anomaly_map: np.ndarray
    tile_maps: np.ndarray | None = None
    image_size: tuple[int, int] | None = None


@dataclass
class Answer:
    """The model's answer to one conversation and the expert's findings on its images."""

    text: str
    images: list[ImageFinding]


class AnomalyOVPipeline:
    """Answers conversations about images with Anomaly-OV.

    Args:
        model: The model (eval mode).
        processor: Its processor.
        generation: ``generate`` settings (``max_new_tokens``, ``do_sample``, ...).
    """

    def __init__(
        self,
        model: AnomalyOV,
        processor: AnomalyOVProcessor,
        generation: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.generation = dict(generation or {})

    @classmethod
    def from_config(cls, config: DictConfig) -> "AnomalyOVPipeline":
        """Builds the model from a composed config (``model`` node, ``seed``, ``generation``)."""
        torch.manual_seed(int(config.seed))
        bundle = instantiate(config.model, _convert_="all")
        return cls(bundle.model, bundle.processor, OmegaConf.to_container(config.generation, resolve=True))

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        generation: Mapping[str, Any] | None = None,
        dtype: str | None = None,
        device_map: str | None = None,
    ) -> "AnomalyOVPipeline":
        """Loads a folder written by :func:`~anomaly_ov.checkpoints.model_folder.save_anomaly_ov`."""
        loaded = load_anomaly_ov(folder, dtype=dtype, device_map=device_map)
        return cls(loaded.model, loaded.processor, generation)

    @property
    def device(self) -> torch.device:
        """Device of the LLM's input embeddings (where the inputs go)."""
        return self.model.llava.get_input_embeddings().weight.device

    def _generate(self, batch: Mapping[str, torch.Tensor]) -> AnomalyOVGeneration:
        inputs = {key: value.to(self.device) for key, value in batch.items() if key != "labels"}
        tokenizer = self.processor.tokenizer
        # ChatML answers end with <|im_end|>; stop there whatever the checkpoint's generation config says
        stop = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
        settings = {
            "pad_token_id": self.processor.pad_token_id,
            "eos_token_id": sorted({int(i) for i in stop if i is not None}),
            **self.generation,
        }
        return self.model.generate(**inputs, **settings)

    def answer(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        images: Sequence[Sequence[Image.Image]],
        image_names: Sequence[Sequence[str]] | None = None,
    ) -> list[Answer]:
        """Generates the next assistant turn of each conversation (one batch).

        Args:
            conversations: SPEC §5 turns per sample, ending with a human turn; one ``<image>`` per image.
            images: The images of each sample.
            image_names: Names of the images (file paths) for error messages.

        Returns:
            One answer per sample, with the expert's score, severity word and whole-image map per image.

        Raises:
            ValueError: If a prompt's placeholders do not match its images, or an image is too small (the
                message names the sample or image).
        """
        if len(conversations) != len(images):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists.")
        names = image_names if image_names is not None else [None] * len(images)
        samples = [
            self.processor.encode(
                turns,
                sample_images,
                add_generation_prompt=True,
                source=f"prompt of sample {index}"
                if sample_names is None
                else f"prompt for {', '.join(sample_names)}",
                image_names=sample_names,
            )
            for index, (turns, sample_images, sample_names) in enumerate(
                zip(conversations, images, names, strict=True)
            )
        ]
        output = self._generate(self.processor.collate(samples, padding_side="left"))
        return self._answers(output, samples)

    def _answers(self, output: AnomalyOVGeneration, samples: Sequence[Any]) -> list[Answer]:
        encoding = output.images
        findings: list[ImageFinding] = []
        if encoding is not None and encoding.expert is not None:
            crop_start = 0
            sizes = torch.cat([s.images.image_sizes for s in samples if s.images is not None])
            maps = encoding.expert.maps.detach().float().cpu()
            for index, crops in enumerate(encoding.crops_per_image):
                findings.append(
                    ImageFinding(
                        score=float(encoding.expert.scores[index]),
                        severity=encoding.severity_words[index],
                        anomaly_map=crop_map_to_image(
                            encoding.expert.maps[crop_start],
                            sizes[index].tolist(),
                            padded_to_square=crops == 1,
                        ).numpy(),
                        tile_maps=(maps[crop_start + 1 : crop_start + crops].numpy() if crops > 1 else None),
                        image_size=(int(sizes[index][0]), int(sizes[index][1])),
                    )
                )
                crop_start += crops
        answers = []
        image_index = 0
        for row, sample in enumerate(samples):
            count = 0 if sample.images is None else len(sample.images.expansions)
            text = self.processor.decode(output.sequences[row])
            answers.append(Answer(text=text, images=findings[image_index : image_index + count]))
            image_index += count
        return answers
