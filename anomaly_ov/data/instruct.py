"""Instruction records (SPEC §5) and the stage-2 dataset that reads their images lazily.

* :class:`InstructRecord` -- one validated record of an instruction JSON file (which file, which index, its
  images and its conversation); :func:`validate_record` turns a raw JSON object into one or raises a
  :class:`RecordError` naming the file and the index.
* :func:`plan_lengths` -- the pre-pass over a mixture, in the main process before any GPU work: it reads
  every image's size from its header (a missing image is an error naming the record), asks the trainer's
  ``length_fn`` for the record's token ids, drops (and lists) the records whose reserved image positions
  would be cut at ``model_max_length`` and counts those truncated only in text. Its lengths feed
  :class:`~anomaly_ov.data.sampling.LengthGroupedSampler`.
* :class:`InstructDataset` -- a map-style torch dataset; ``__getitem__`` decodes the images (in the
  DataLoader's workers) through the one image reader and calls the trainer's ``encode``.

Nothing here imports the model package: the processor is handed in as callables.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from torch.utils.data import Dataset

from anomaly_ov.data.images import RELEASE_MAX_IMAGE_SIDE


class RecordError(ValueError):
    """A record of an instruction JSON file that cannot be used.

    Attributes:
        source: The JSON file.
        index: The record's index in that file (0-based).
        reason: What is wrong with it.
    """

    def __init__(self, source: str | Path, index: int, reason: str) -> None:
        super().__init__(f"{source}: record {index}: {reason}")
        self.source = str(source)
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out (``skip_bad_records``, or its image tokens would be cut), for the run folder.

    Attributes:
        source: The JSON file.
        index: The record's index in that file.
        reason: Why it was left out.
    """

    source: str
    index: int
    reason: str


@dataclass(frozen=True)
class InstructRecord:
    """One validated instruction record (SPEC §5).

    Attributes:
        source: The JSON file it comes from.
        index: Its index in that file (0-based).
        id: The record's ``id`` (``"<file stem>:<index>"`` when the file gives none).
        images: Image paths relative to the image root, in ``<image>`` order; empty for text-only.
        conversations: The turns, ``{"from": "system" | "human" | "gpt", "value": str}``.
    """

    source: str
    index: int
    id: str
    images: tuple[str, ...]
    conversations: tuple[Mapping[str, str], ...]

    @property
    def name(self) -> str:
        """``"<file>: record <index>"``: how errors and reports name the record."""
        return f"{self.source}: record {self.index}"


def validate_record(raw: object, source: str | Path, index: int) -> InstructRecord:
    """Checks one raw JSON record and normalises it.

    ``image`` may be a string (one image), a list of strings (multi-view: one crop each) or absent/null
    (text-only). The conversation must alternate human, gpt, human, gpt, ... after an optional first system
    turn, end with a gpt turn, and hold exactly one ``<image>`` per image (human turns only).

    Args:
        raw: The parsed JSON object.
        source: The JSON file (for messages).
        index: The record's index in the file.

    Returns:
        The record.

    Raises:
        RecordError: Naming ``source`` and ``index``: not an object, no/empty conversations, a malformed
            turn, roles that do not alternate, a bad ``image`` field, or placeholders != images.
    """
    raise NotImplementedError


class EncodedLike(Protocol):
    """What ``encode`` returns (the processor's ``EncodedSample``)."""

    input_ids: list[int]
    labels: list[int]
    images: Any


EncodeFn = Callable[..., EncodedLike]
"""``encode(turns, images, *, source: str, image_names: list[str]) -> EncodedLike``: the trainer's wrapper
around ``AnomalyOVProcessor.encode(turns, images, add_generation_prompt=False, source=..., image_names=...)``
(with the chosen label rule)."""

LengthFn = Callable[[InstructRecord, Sequence[tuple[int, int]]], Sequence[int]]
"""``length_fn(record, sizes) -> input_ids``: the token ids ``encode`` would give for ``record`` when its
images have ``sizes`` ((width, height) after the long-side limit), computed without decoding pixels (the
processor's placeholder expansion depends only on the sizes)."""


@dataclass(frozen=True)
class InstructSample:
    """One encoded training sample; it has ``input_ids``/``labels``/``images`` so the processor's
    ``collate`` takes a list of them as it is.

    Attributes:
        input_ids: Token ids, at most ``model_max_length``.
        labels: Labels (same length).
        images: The processor's encoded images, or None (text-only).
        source: The JSON file of the record.
        index: The record's index in it.
        truncated_tokens: How many text tokens were cut at ``model_max_length`` (0: none).
    """

    input_ids: list[int]
    labels: list[int]
    images: Any
    source: str
    index: int
    truncated_tokens: int


@dataclass(frozen=True)
class LengthPlan:
    """What :func:`plan_lengths` found.

    Attributes:
        records: The records that stay (those whose reserved positions fit), in order.
        lengths: Token length of each kept record, before truncation.
        multimodal: Whether each kept record has images (for modality-grouped sampling).
        dropped: Records left out because image tokens would be cut, with the reason.
        truncated: ``(source, index, tokens cut)`` of kept records truncated in text only.
    """

    records: list[InstructRecord]
    lengths: list[int]
    multimodal: list[bool]
    dropped: list[SkippedRecord]
    truncated: list[tuple[str, int, int]]


def plan_lengths(
    records: Sequence[InstructRecord],
    image_root: str | Path,
    length_fn: LengthFn,
    reserved_ids: Sequence[int],
    model_max_length: int | None = None,
    max_image_side: int | None = RELEASE_MAX_IMAGE_SIDE,
) -> LengthPlan:
    """The pre-pass: every record's exact token length; drops records whose image tokens would be cut.

    Args:
        records: Validated records.
        image_root: Folder the records' image paths are relative to.
        length_fn: The trainer's token-id function (see :data:`LengthFn`).
        reserved_ids: Token ids of the reserved positions (image, severity and anomaly placeholders).
        model_max_length: Longest sample in tokens (None: no limit).
        max_image_side: The long-side limit applied before the sizes are handed to ``length_fn``.

    Returns:
        The kept records, their lengths and modality, the dropped and the truncated ones.

    Raises:
        BadInputError: If an image is missing or unreadable (the message names the file and the record).
    """
    raise NotImplementedError


class InstructDataset(Dataset):
    """Stage-2 samples: images decoded lazily (in the DataLoader's workers), encoded by the trainer.

    Args:
        records: The records (run :func:`plan_lengths` first and pass ``plan.records``).
        image_root: Folder the records' image paths are relative to.
        encode: The trainer's encoder (see :data:`EncodeFn`).
        reserved_ids: Token ids of the reserved positions (image, severity and anomaly placeholders).
        max_image_side: Long-side limit of :func:`~anomaly_ov.data.images.read_image` (None: off).
        model_max_length: Longest sample in tokens (None: no limit). Longer samples are cut in text only
            (``InstructSample.truncated_tokens``); cutting a reserved position raises.
    """

    def __init__(
        self,
        records: Sequence[InstructRecord],
        image_root: str | Path,
        encode: EncodeFn,
        reserved_ids: Sequence[int] = (),
        max_image_side: int | None = RELEASE_MAX_IMAGE_SIDE,
        model_max_length: int | None = None,
    ) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of records."""
        raise NotImplementedError

    def read_images(self, record: InstructRecord) -> list[Image.Image]:
        """Decodes a record's images through the one image reader.

        Raises:
            BadInputError: If an image is missing or unreadable (names the file and the record).
        """
        raise NotImplementedError

    def __getitem__(self, index: int) -> InstructSample:
        """Reads and encodes record ``index``; truncates to ``model_max_length`` (flagged, never silent).

        Raises:
            BadInputError: An image is missing or unreadable.
            RecordError: The sample's reserved positions would be cut (run :func:`plan_lengths` first).
        """
        raise NotImplementedError
