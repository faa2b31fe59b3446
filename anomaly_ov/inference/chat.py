r"""``anomaly-ov chat``: a multi-turn conversation about one image.

Examples (tiny offline zoo; build it first with ``anomaly-ov make-tiny-zoo``)::

    anomaly-ov chat --image bottle.png --question "Is there any anomaly in the image?"
    anomaly-ov chat --image bottle.png            # interactive: one question per line, empty line or EOF ends
    anomaly-ov chat --image bottle.png --model outputs/runs/finetune/model   # a saved model folder

Real checkpoints (GPU)::

    anomaly-ov chat --image bottle.png --config-overrides model/llm=llava_ov_05b model/expert=anomaly_ov \\
        model.expert.official_checkpoint=/weights/pretrained_expert_05b.pth

The first question gets the image placeholder in front (``<image>\\n``) unless it already holds it. After
the first answer the expert's score is printed.
"""

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from anomaly_ov.data.images import read_image
from anomaly_ov.data.tokens import IMAGE_PLACEHOLDER
from anomaly_ov.inference.pipeline import (
    AnomalyOVPipeline,
    add_model_arguments,
    compose_config,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-ov chat", description="Talk with Anomaly-OV about one image."
    )
    parser.add_argument("--image", type=Path, required=True, help="the image to talk about")
    parser.add_argument(
        "--question",
        action="append",
        default=None,
        help="a question (repeat for several turns); without it, questions are read from stdin, one per line",
    )
    add_model_arguments(parser, "chat")
    return parser


def _questions(given: Sequence[str] | None) -> Iterator[str]:
    if given is not None:
        yield from given
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return
        yield line.strip()


def cli_main(argv: list[str] | None = None) -> int:
    """Runs the chat; returns 0, or 2 on bad input (unreadable image, wrong placeholders)."""
    args = _parser().parse_args(argv)
    try:
        image = read_image(args.image)
    except ValueError as error:
        print(f"chat: {error}", file=sys.stderr)
        return 2
    try:
        config = compose_config("chat", args.config_overrides, args.config_dir)
    except ValueError as error:
        print(f"chat: {error}", file=sys.stderr)
        return 2
    if args.model is not None:
        pipeline = AnomalyOVPipeline.from_pretrained(args.model, generation=dict(config.generation))
    else:
        pipeline = AnomalyOVPipeline.from_config(config)

    turns: list[dict[str, str]] = []
    for question in _questions(args.question):
        if not turns and IMAGE_PLACEHOLDER not in question:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        try:
            answer = pipeline.answer(
                [[*turns, {"from": "human", "value": question}]], [[image]], [[str(args.image)]]
            )[0]
        except ValueError as error:
            print(f"chat: {error}", file=sys.stderr)
            if args.question is not None:
                return 2
            continue
        if not turns:
            finding = answer.images[0]
            print(f"anomaly score: {finding.score:.4f} ({finding.severity} suspicious)")
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer.text}]
        print(f"assistant> {answer.text}", flush=True)
    return 0
