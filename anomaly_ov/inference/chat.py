r"""``anomaly-ov chat``: a multi-turn conversation about one image, or about the views of one object.

Examples (tiny offline zoo; build it first with ``anomaly-ov make-tiny-zoo``)::

    anomaly-ov chat --image bottle.png --question "Is there any anomaly in the image?"
    anomaly-ov chat --image bottle.png            # interactive: one question per line, empty line or EOF ends
    anomaly-ov chat --image bottle.png --model outputs/runs/finetune/model   # a saved model folder
    anomaly-ov chat --image front.png side.png top.png --question "Any defect?"  # one multi-view sample

Real checkpoints (GPU)::

    anomaly-ov chat --image bottle.png --config-overrides model/llm=llava_ov_05b model/expert=anomaly_ov \\
        model.expert.official_checkpoint=/weights/pretrained_expert_05b.pth

The first question gets one image placeholder per image in front (``<image>\\n`` each) unless it already
holds placeholders. Several images are one multi-view sample (SPEC §5: each view is encoded as one crop).
After the first answer the expert's score of every image is printed.

:class:`Chat` is the conversation itself; the web app (``anomaly-ov serve``) talks through the same class,
so the command line and the page give the same answers.
"""

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

from anomaly_ov.data.images import read_image
from anomaly_ov.data.tokens import IMAGE_PLACEHOLDER
from anomaly_ov.inference.pipeline import (
    AnomalyOVPipeline,
    Answer,
    add_model_arguments,
    compose_config,
)


def with_image_placeholders(question: str, num_images: int) -> str:
    """The first question of a conversation with one ``<image>`` line per image in front.

    A question that already holds placeholders is returned as it is (the processor checks their number).

    Args:
        question: The user's question.
        num_images: Images of the sample (views of a multi-view sample).
    """
    if IMAGE_PLACEHOLDER in question:
        return question
    return f"{IMAGE_PLACEHOLDER}\n" * num_images + question


class Chat:
    """A conversation about one sample: one image, or the views of one object (a multi-view sample).

    Every question is answered with the whole conversation so far as history (SPEC §5: the model's own
    answers are the history, as in VisA-D&R reasoning).

    Args:
        pipeline: The model pipeline.
        images: The sample's images, read with :func:`anomaly_ov.data.images.read_image`.
        names: A name per image (file paths) for error messages.

    Attributes:
        turns: The finished turns, SPEC §5 ``{"from", "value"}`` dicts (human, gpt, human, ...).
        first: The answer to the first question (with the expert's findings of every image), or None.
    """

    def __init__(
        self, pipeline: AnomalyOVPipeline, images: Sequence[Image.Image], names: Sequence[str]
    ) -> None:
        if len(images) == 0:
            raise ValueError("a chat needs at least one image")
        if len(names) != len(images):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        self.pipeline = pipeline
        self.images = list(images)
        self.names = [str(name) for name in names]
        self.turns: list[dict[str, str]] = []
        self.first: Answer | None = None

    def ask(self, question: str) -> Answer:
        """Answers the next question; the turn is kept only when it succeeds.

        Raises:
            ValueError: If the question is empty, or its placeholders do not match the images (naming them).
        """
        question = question.strip()
        if not question:
            raise ValueError("the question is empty; type a question")
        if not self.turns:
            question = with_image_placeholders(question, len(self.images))
        human = {"from": "human", "value": question}
        answer = self.pipeline.answer([[*self.turns, human]], [self.images], [self.names])[0]
        self.turns += [human, {"from": "gpt", "value": answer.text}]
        if self.first is None:
            self.first = answer
        return answer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-ov chat", description="Talk with Anomaly-OV about one image."
    )
    parser.add_argument(
        "--image",
        type=Path,
        nargs="+",
        required=True,
        help="the image to talk about; several files are the views of one object (one multi-view sample)",
    )
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
        images = [read_image(path) for path in args.image]
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

    chat = Chat(pipeline, images, [str(path) for path in args.image])
    for question in _questions(args.question):
        try:
            answer = chat.ask(question)
        except ValueError as error:
            print(f"chat: {error}", file=sys.stderr)
            if args.question is not None:
                return 2
            continue
        if len(chat.turns) == 2 and answer.images:  # a model without the expert has no findings
            for path, finding in zip(args.image, answer.images, strict=True):
                view = f" {path}" if len(images) > 1 else ""
                print(f"anomaly score{view}: {finding.score:.4f} ({finding.severity} suspicious)")
        print(f"assistant> {answer.text}", flush=True)
    return 0
