r"""``anomaly-ov predict``: images -> ``predictions.jsonl`` (image, score, answer) + heat-map overlays.

Examples (tiny offline zoo; build it first with ``anomaly-ov make-tiny-zoo``)::

    anomaly-ov predict --images outputs/synthetic/mvtec/bottle/test --out outputs/predict
    anomaly-ov predict --images a.png b.png list.txt --out outputs/predict \\
        --prompt "<image>\\nDescribe the defect."

Real checkpoints (GPU)::

    anomaly-ov predict --images /data/visa/candle --out outputs/predict --config-overrides \\
        model/llm=llava_ov_05b model/expert=anomaly_ov \\
        model.expert.official_checkpoint=/weights/pretrained_expert_05b.pth

Inputs are image files, folders (searched recursively for image files, sorted) and ``.txt`` files listing one
image path per line. Output folder::

    predictions.jsonl   one line per finished image: {"image", "score", "severity", "answer", "heatmap"}
    heatmaps/           <index>_<name>.png: the expert's whole-image map over the image
    errors.jsonl        one line per image that failed: {"image", "error"} (the run carries on)
    config.yaml         the resolved config of the run

Lines are written as batches finish, so an interrupted run keeps what it finished. Exit status: 0 when every
image succeeded, 1 when some failed (they are reported), 2 on bad arguments.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from anomaly_ov.data.images import IMAGE_SUFFIXES, read_image
from anomaly_ov.data.tokens import IMAGE_PLACEHOLDER
from anomaly_ov.inference.heatmap import overlay_heatmap
from anomaly_ov.inference.pipeline import (
    AnomalyOVPipeline,
    add_model_arguments,
    compose_config,
)

LIST_SUFFIXES = frozenset({".txt", ".lst"})


@dataclass
class Prediction:
    """One finished image.

    Attributes:
        image: The image path as given.
        score: Expert anomaly probability.
        severity: The severity word given to the LLM.
        answer: The model's answer to the prompt.
        heatmap: Path of the overlay PNG (relative to the output folder).
    """

    image: str
    score: float
    severity: str
    answer: str
    heatmap: str


@dataclass
class Failure:
    """One image that could not be predicted, and why."""

    image: str
    error: str


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expands files, folders (recursive, sorted) and list files into image paths.

    Folders contribute their files with an image suffix; list files (.txt/.lst) one path per non-empty line
    (relative paths are relative to the list file's folder); any other file is taken as an image.

    Raises:
        FileNotFoundError: If an input does not exist (naming it).
    """
    images: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            images += sorted(
                p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif entry.is_file() and entry.suffix.lower() in LIST_SUFFIXES:
            lines = [line.strip() for line in entry.read_text().splitlines() if line.strip()]
            images += [path if path.is_absolute() else entry.parent / path for path in map(Path, lines)]
        elif entry.is_file():
            images.append(entry)
        else:
            raise FileNotFoundError(f"predict input {entry} does not exist")
    return images


def predict(
    pipeline: AnomalyOVPipeline,
    images: Sequence[Path],
    out_dir: Path,
    prompt: str,
    batch_size: int = 4,
    heatmap_alpha: float = 0.5,
    progress: bool = True,
) -> tuple[list[Prediction], list[Failure]]:
    """Predicts every image, writing predictions, overlays and failures as batches finish.

    Args:
        pipeline: The model pipeline.
        images: Image paths.
        out_dir: Output folder (created).
        prompt: The question, with one ``<image>`` placeholder.
        batch_size: Images per ``generate`` call.
        heatmap_alpha: Weight of the heat map in the overlays.
        progress: Show a progress bar.

    Returns:
        The predictions and the failures.
    """
    heatmap_dir = out_dir / "heatmaps"
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    predictions: list[Prediction] = []
    failures: list[Failure] = []
    with (
        (out_dir / "predictions.jsonl").open("w") as prediction_file,
        (out_dir / "errors.jsonl").open("w") as error_file,
        tqdm(total=len(images), desc="predict", unit="image", disable=not progress) as bar,
    ):

        def fail(path: Path, error: Exception) -> None:
            failure = Failure(image=str(path), error=str(error))
            failures.append(failure)
            error_file.write(json.dumps(asdict(failure)) + "\n")
            error_file.flush()
            tqdm.write(f"predict: skipped {path}: {error}", file=sys.stderr)

        for start in range(0, len(images), batch_size):
            batch: list[tuple[int, Path, object]] = []
            for index in range(start, min(start + batch_size, len(images))):
                path = images[index]
                try:
                    image = read_image(path)
                    # checked alone so that a bad image is reported without failing its batch
                    pipeline.processor.check_image(image, str(path))
                except ValueError as error:
                    fail(path, error)
                    continue
                batch.append((index, path, image))
            if batch:
                answers = pipeline.answer(
                    [[{"from": "human", "value": prompt}]] * len(batch),
                    [[image] for _, _, image in batch],
                    [[str(path)] for _, path, _ in batch],
                )
                for (index, path, image), answer in zip(batch, answers, strict=True):
                    finding = answer.images[0]
                    name = f"{index:05d}_{path.stem}.png"
                    overlay_heatmap(image, finding.anomaly_map, alpha=heatmap_alpha).save(heatmap_dir / name)
                    prediction = Prediction(
                        image=str(path),
                        score=finding.score,
                        severity=finding.severity,
                        answer=answer.text,
                        heatmap=f"heatmaps/{name}",
                    )
                    predictions.append(prediction)
                    prediction_file.write(json.dumps(asdict(prediction)) + "\n")
                prediction_file.flush()
            bar.update(min(start + batch_size, len(images)) - start)
    return predictions, failures


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-ov predict",
        description="Anomaly scores, answers and heat maps for images, files or folders.",
    )
    parser.add_argument(
        "--images", nargs="+", required=True, help="image files, folders or .txt lists of paths"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--prompt", default=None, help="question with one <image> (default: configs/predict.yaml)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: from config)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser, "predict")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    """Runs ``predict``; returns 0 (all images done), 1 (some failed, reported) or 2 (bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        config = compose_config("predict", args.config_overrides, args.config_dir)
    except ValueError as error:
        print(f"predict: {error}", file=sys.stderr)
        return 2
    prompt = args.prompt if args.prompt is not None else config.prompt
    batch_size = args.batch_size if args.batch_size is not None else int(config.batch_size)
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        print(
            f"predict: the prompt must hold exactly one {IMAGE_PLACEHOLDER} placeholder (one image "
            f"per prompt); it has {prompt.count(IMAGE_PLACEHOLDER)}: {prompt!r}",
            file=sys.stderr,
        )
        return 2
    if batch_size < 1:
        print(f"predict: --batch-size must be positive, got {batch_size}", file=sys.stderr)
        return 2
    try:
        images = find_images(args.images)
    except FileNotFoundError as error:
        print(f"predict: {error}", file=sys.stderr)
        return 2
    if not images:
        print(f"predict: no images found in {args.images}", file=sys.stderr)
        return 2

    if args.model is not None:
        pipeline = AnomalyOVPipeline.from_pretrained(args.model, generation=dict(config.generation))
    else:
        pipeline = AnomalyOVPipeline.from_config(config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
    predictions, failures = predict(
        pipeline,
        images,
        args.out,
        prompt,
        batch_size=batch_size,
        heatmap_alpha=float(config.heatmap_alpha),
        progress=not args.no_progress,
    )
    print(f"predict: {len(predictions)} image(s) done, {len(failures)} failed; results in {args.out}")
    return 1 if failures else 0
