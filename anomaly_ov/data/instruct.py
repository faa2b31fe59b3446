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

from anomaly_ov.data.conversation import check_turns
from anomaly_ov.data.images import RELEASE_MAX_IMAGE_SIDE, BadInputError, image_size, read_image
from anomaly_ov.data.roots import outside_root
from anomaly_ov.data.tokens import IMAGE_PLACEHOLDER


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
    if not isinstance(raw, Mapping):
        raise RecordError(source, index, f"is not a JSON object but {type(raw).__name__}.")
    turns = raw.get("conversations")
    if not isinstance(turns, list) or len(turns) == 0:
        raise RecordError(source, index, "has no conversations (a non-empty list of turns is required).")
    name = f"{source}: record {index}"
    try:
        check_turns(turns, name)
    except ValueError as error:
        raise RecordError(source, index, str(error).removeprefix(f"{name}: ")) from None
    if turns[-1]["from"] != "gpt":
        raise RecordError(source, index, "does not end with a gpt turn (the last question has no answer).")
    image = raw.get("image")
    if image is None:
        images: tuple[str, ...] = ()
    elif isinstance(image, str) and image:
        images = (image,)
    elif isinstance(image, list) and all(isinstance(path, str) and path for path in image):
        images = tuple(image)
    else:
        raise RecordError(source, index, f"'image' must be a path or a list of paths, not {image!r}.")
    placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if placeholders != len(images):
        raise RecordError(
            source,
            index,
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {len(images)} image(s); "
            f"the conversation needs one {IMAGE_PLACEHOLDER} per image.",
        )
    record_id = raw.get("id")
    return InstructRecord(
        source=str(source),
        index=index,
        id=str(record_id) if record_id is not None else f"{Path(source).name}:{index}",
        images=images,
        conversations=tuple({"from": turn["from"], "value": turn["value"]} for turn in turns),
    )


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
        dropped: Records left out, with the reason: image tokens would be cut, or (``skip_bad_records``) an
            image is missing or unreadable.
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
    skip_bad_records: bool = False,
    allow_outside_root: bool = False,
) -> LengthPlan:
    """The pre-pass: every record's exact token length; drops records whose image tokens would be cut.

    Args:
        records: Validated records.
        image_root: Folder the records' image paths are relative to.
        length_fn: The trainer's token-id function (see :data:`LengthFn`).
        reserved_ids: Token ids of the reserved positions (image, severity and anomaly placeholders).
        model_max_length: Longest sample in tokens (None: no limit).
        max_image_side: The long-side limit applied before the sizes are handed to ``length_fn``.
        skip_bad_records: Drop (and list in ``dropped``) records with a missing or unreadable image instead
            of raising.
        allow_outside_root: Read image paths that leave ``image_root`` (absolute, ``..``, a symlink out of
            it); by default such a record is bad.

    Returns:
        The kept records, their lengths and modality, the dropped and the truncated ones.

    Raises:
        BadInputError: If an image is missing or unreadable (the message names the file and the record),
            unless ``skip_bad_records``.
    """
    reserved = frozenset(reserved_ids)
    root = Path(image_root)
    kept: list[InstructRecord] = []
    lengths: list[int] = []
    multimodal: list[bool] = []
    dropped: list[SkippedRecord] = []
    truncated: list[tuple[str, int, int]] = []
    for record in records:
        try:
            for path in record.images:
                reason = None if allow_outside_root else outside_root(root, path)
                if reason is not None:
                    raise BadInputError(
                        root / path, f"{reason} ({record.name}); set data.allow_outside_root=true to read it"
                    )
            sizes = [_named(record, image_size, root / path, max_image_side) for path in record.images]
        except BadInputError as error:
            if not skip_bad_records:
                raise
            dropped.append(SkippedRecord(record.source, record.index, str(error)))
            continue
        ids = length_fn(record, sizes)
        total = len(ids)
        if model_max_length is not None and total > model_max_length:
            cut = [position for position in range(model_max_length, total) if ids[position] in reserved]
            if cut:
                dropped.append(
                    SkippedRecord(
                        record.source,
                        record.index,
                        f"{total} tokens > model_max_length={model_max_length} would cut {len(cut)} reserved "
                        f"image position(s) (the last at {cut[-1]}).",
                    )
                )
                continue
            truncated.append((record.source, record.index, total - model_max_length))
        kept.append(record)
        lengths.append(total)
        multimodal.append(len(record.images) > 0)
    return LengthPlan(kept, lengths, multimodal, dropped, truncated)


def _named(record: InstructRecord, reader: Callable[..., Any], path: Path, max_side: int | None) -> Any:
    """Calls an image reader; its error names the record as well as the file."""
    try:
        return reader(path, max_side)
    except BadInputError as error:
        raise BadInputError(path, f"{error.reason} (an image of {record.name})") from None


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

    Truncation is reported per sample (``truncated_tokens``) rather than counted here: each DataLoader
    worker holds its own copy of the dataset, so counters kept in it never reach the trainer. The run-level
    count and list come from :func:`plan_lengths`, in the main process.
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
        if model_max_length is not None and model_max_length < 1:
            raise ValueError(f"model_max_length={model_max_length} must be positive or None.")
        self.records = records
        self.image_root = Path(image_root)
        self.encode = encode
        self.reserved_ids = frozenset(reserved_ids)
        self.max_image_side = max_image_side
        self.model_max_length = model_max_length

    def __len__(self) -> int:
        """Number of records."""
        return len(self.records)

    def read_images(self, record: InstructRecord) -> list[Image.Image]:
        """Decodes a record's images through the one image reader.

        Raises:
            BadInputError: If an image is missing or unreadable (names the file and the record).
        """
        return [
            _named(record, read_image, self.image_root / path, self.max_image_side) for path in record.images
        ]

    def __getitem__(self, index: int) -> InstructSample:
        """Reads and encodes record ``index``; truncates to ``model_max_length`` (flagged, never silent).

        Raises:
            BadInputError: An image is missing or unreadable.
            RecordError: The sample's reserved positions would be cut (run :func:`plan_lengths` first).
        """
        record = self.records[index]
        encoded = self.encode(
            record.conversations,
            self.read_images(record),
            source=record.name,
            image_names=[str(self.image_root / path) for path in record.images],
        )
        input_ids, labels = list(encoded.input_ids), list(encoded.labels)
        limit = self.model_max_length
        cut = 0
        if limit is not None and len(input_ids) > limit:
            if any(token in self.reserved_ids for token in input_ids[limit:]):
                raise RecordError(
                    record.source,
                    record.index,
                    f"{len(input_ids)} tokens > model_max_length={limit} would cut image positions; "
                    "plan_lengths drops such records before training.",
                )
            cut = len(input_ids) - limit
            input_ids, labels = input_ids[:limit], labels[:limit]
        return InstructSample(input_ids, labels, encoded.images, record.source, record.index, cut)
