"""One inspection in the web app: a sample's detection answer, its anomaly overlay and follow-up questions.

The conversation is a :class:`anomaly_ov.inference.chat.Chat`, the class ``anomaly-ov chat`` talks
through: the detection prompt is its first question (so the answer and the score are those of
``anomaly-ov predict`` with the same prompt) and every follow-up question has the conversation so far as
history. Nothing here imports Gradio; the page only shows what an :class:`Inspection` holds.

The overlay of an image with AnyRes tiles is stitched from its tiles' maps (each tile's map side by side,
:func:`anomaly_ov.eval.pixel_maps.stitch_tile_maps`, finer than the whole-image crop's grid); a single crop
(each view of a multi-view sample) shows its own map. The map values are the expert's probabilities, drawn
on a fixed 0..1 scale with a colour bar, so colours mean the same for every image.
"""

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly_ov.app.uploads import Upload, UploadError, UploadLimits, read_upload
from anomaly_ov.eval.pixel_maps import stitch_tile_maps
from anomaly_ov.inference.chat import Chat
from anomaly_ov.inference.heatmap import overlay_heatmap, with_colour_bar
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, Answer, ImageFinding

OVERLAY_NAME = "overlay.png"
RESULT_NAME = "result.json"
# the overlays of several views are shown side by side at this height at most (pixels)
VIEW_HEIGHT = 512
# smaller images are drawn at this height (the map upsampled with them), so the page and the colour bar read
MIN_OVERLAY_HEIGHT = 384


@dataclass(frozen=True)
class ViewResult:
    """The expert's finding on one image (view) of the sample.

    Attributes:
        name: The file name as uploaded.
        score: Anomaly probability in [0, 1].
        severity: The severity word given to the LLM.
        map_source: "tiles" (stitched AnyRes tiles) or "whole image" (the whole-image crop's map).
        note: What the reader converted (grey, 16-bit, resized), or "".
    """

    name: str
    score: float
    severity: str
    map_source: str
    note: str


def view_map(finding: ImageFinding, pipeline: AnomalyOVPipeline, use_tiles: bool) -> tuple[np.ndarray, str]:
    """The map drawn for one image: stitched from its tiles when it has them (and ``use_tiles``).

    Returns:
        The map [h, w] in [0, 1] and its source ("tiles" or "whole image").
    """
    if use_tiles and finding.tile_maps is not None and finding.image_size is not None:
        processor = pipeline.processor
        stitched = stitch_tile_maps(
            torch.from_numpy(finding.tile_maps),
            finding.image_size,
            processor.image_processor.image_grid_pinpoints,
            processor.crop_size,
        )
        return stitched.clamp(0.0, 1.0).numpy(), "tiles"
    return np.clip(finding.anomaly_map, 0.0, 1.0), "whole image"


def side_by_side(images: Sequence[Image.Image], height: int) -> Image.Image:
    """Images scaled to one height (aspect kept) and placed left to right with a white gap."""
    scaled = [image.resize((max(1, round(image.width * height / image.height)), height)) for image in images]
    gap = 8
    canvas = Image.new("RGB", (sum(i.width for i in scaled) + gap * (len(scaled) - 1), height), "white")
    left = 0
    for image in scaled:
        canvas.paste(image, (left, 0))
        left += image.width + gap
    return canvas


class Inspection:
    """One sample under inspection: its uploads, the detection answer, the overlay and the conversation.

    Args:
        chat: The conversation (its first question is asked here: the detection prompt).
        uploads: The sample's images as read.
        question: The detection question (without ``<image>``; the chat puts one per image in front).
        folder: A fresh folder for the downloads (overlay PNG, result JSON).
        model: How the page names the model (its folder).
        use_tiles: Stitch the overlay from the AnyRes tiles when there are tiles.
        alpha: Weight of the heat map in the overlay.
        colormap: matplotlib colormap of the overlay and its colour bar.
    """

    def __init__(
        self,
        chat: Chat,
        uploads: Sequence[Upload],
        question: str,
        folder: Path,
        model: str,
        use_tiles: bool = True,
        alpha: float = 0.5,
        colormap: str = "jet",
    ) -> None:
        self.chat = chat
        self.folder = folder
        self.model = model
        start = time.perf_counter()
        answer = chat.ask(question)
        self.seconds = time.perf_counter() - start
        self.question = chat.turns[0]["value"]
        self.answer = answer.text
        overlays, self.views = [], []
        for upload, finding in zip(uploads, answer.images, strict=True):
            anomaly_map, source = view_map(finding, chat.pipeline, use_tiles)
            image = upload.image
            if image.height < MIN_OVERLAY_HEIGHT:
                width = max(1, round(image.width * MIN_OVERLAY_HEIGHT / image.height))
                image = image.resize((width, MIN_OVERLAY_HEIGHT), Image.Resampling.BICUBIC)
            overlays.append(overlay_heatmap(image, anomaly_map, alpha=alpha, colormap=colormap))
            self.views.append(ViewResult(upload.name, finding.score, finding.severity, source, upload.note))
        if not self.views:
            raise UploadError("this model has no anomaly expert (model/expert=none): there is no map to show")
        picture = (
            overlays[0]
            if len(overlays) == 1
            else side_by_side(overlays, min(VIEW_HEIGHT, max(o.height for o in overlays)))
        )
        self.overlay = with_colour_bar(picture, colormap)
        self.overlay_path = folder / OVERLAY_NAME
        self.result_path = folder / RESULT_NAME
        self.overlay.save(self.overlay_path)
        self._write_result()

    @property
    def most_suspicious(self) -> ViewResult:
        """The view with the highest score (the only view of a one-image sample)."""
        return max(self.views, key=lambda view: view.score)

    def ask(self, question: str) -> Answer:
        """A follow-up question, with the conversation so far as history; the JSON is rewritten.

        Raises:
            ValueError: If the question is empty.
        """
        answer = self.chat.ask(question)
        self._write_result()
        return answer

    def result(self) -> dict[str, object]:
        """What the JSON download holds: model, per-view scores, the answers of the conversation."""
        top = self.most_suspicious
        turns = self.chat.turns
        return {
            "model": self.model,
            "score": top.score,
            "severity": top.severity,
            "views": [asdict(view) for view in self.views],
            "question": self.question,
            "answer": self.answer,
            "conversation": [
                {"question": human["value"], "answer": gpt["value"]}
                for human, gpt in zip(turns[::2], turns[1::2], strict=True)
            ],
            "seconds_to_first_answer": round(self.seconds, 3),
        }

    def _write_result(self) -> None:
        self.result_path.write_text(json.dumps(self.result(), indent=2) + "\n", encoding="utf-8")


class Inspector:
    """What the page calls: checked uploads -> an :class:`Inspection`; the model is the one loaded at start.

    Args:
        pipeline: The model pipeline (loaded once).
        model: How the page names the model (its folder, or the config it was built from).
        question: The detection question, without ``<image>`` (configs/serve.yaml ``question``).
        limits: Upload limits.
        work_dir: The server's temporary folder; each inspection's downloads go into a folder inside it.
        max_side: The one image reader's long-side limit.
        use_tiles: Stitch overlays from AnyRes tiles.
        alpha: Heat-map weight of the overlay.
        colormap: matplotlib colormap.
    """

    def __init__(
        self,
        pipeline: AnomalyOVPipeline,
        model: str,
        question: str,
        limits: UploadLimits,
        work_dir: Path,
        max_side: int | None = 1024,
        use_tiles: bool = True,
        alpha: float = 0.5,
        colormap: str = "jet",
    ) -> None:
        self.pipeline = pipeline
        self.model = model
        self.question = question
        self.limits = limits
        self.work_dir = Path(work_dir)
        self.max_side = max_side
        self.use_tiles = use_tiles
        self.alpha = alpha
        self.colormap = colormap

    def read(self, files: Sequence[tuple[str | Path, str]]) -> list[Upload]:
        """Reads a request's files ((stored path, name as uploaded) each) after checking the limits.

        Raises:
            UploadError: If there is no file, too many, or one is refused (naming it).
        """
        if not files:
            raise UploadError("no image: upload an image, or several views of one object")
        if len(files) > self.limits.max_views:
            raise UploadError(
                f"{len(files)} files, more than the limit of {self.limits.max_views} views of one object "
                "(serve.yaml limits.max_views)"
            )
        return [read_upload(path, name, self.limits, self.max_side) for path, name in files]

    def inspect(self, files: Sequence[tuple[str | Path, str]]) -> Inspection:
        """Checks and reads the files, asks the detection question and draws the overlay.

        Raises:
            UploadError: For a refused upload (the message is for the page).
            ValueError: If the model refuses the images (e.g. smaller than a vision patch), naming them.
        """
        uploads = self.read(files)
        for upload in uploads:
            self.pipeline.processor.check_image(upload.image, upload.name)
        chat = Chat(self.pipeline, [u.image for u in uploads], [u.name for u in uploads])
        folder = Path(tempfile.mkdtemp(prefix="inspection-", dir=self.work_dir))
        return Inspection(
            chat,
            uploads,
            self.question,
            folder,
            self.model,
            use_tiles=self.use_tiles,
            alpha=self.alpha,
            colormap=self.colormap,
        )

    def check_question(self, question: str | None) -> str:
        """The question stripped, or an :class:`UploadError` for an empty or too long one."""
        text = (question or "").strip()
        if not text:
            raise UploadError("the question is empty: type a question")
        if len(text) > self.limits.max_question_chars:
            raise UploadError(
                f"the question has {len(text)} characters, more than the limit of "
                f"{self.limits.max_question_chars} (serve.yaml limits.max_question_chars)"
            )
        return text
