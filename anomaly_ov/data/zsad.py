"""Zero-shot anomaly-detection datasets: samples, their published layouts and the zero-shot protocol.

Every dataset becomes a list of :class:`AnomalySample` (image, label, optional mask, class). A *source* is a
small frozen dataclass holding plain values (a root, a split, a class list) whose ``read()`` returns those
samples; Hydra configs under ``configs/data/`` name one source per dataset:

* :class:`MVTecSource` -- MVTec AD's layout ``<class>/{train/good, test/<defect>, ground_truth/<defect>/
  <name>_mask.png}`` (also MPDD and the synthetic data, which use the same layout);
* :class:`VisASource` -- VisA's layout ``<class>/Data/{Images,Masks}/...`` with its split file
  ``split_csv/1cls.csv`` (columns object, split, label, image, mask);
* :class:`InstructionSource` -- the labelled samples of an instruction JSON (the label from the record's
  ``"anomaly": bool`` or a configured rule, :mod:`anomaly_ov.data.instruction_labels`), the stage-1 training
  data (SPEC §4);
* :class:`~anomaly_ov.data.manifest.ManifestSource` -- the generic manifest that ``scripts/prepare_*.py``
  write for every other dataset of the published table (BTAD, MPDD, AITEX, ELPV, BrainMRI, HeadCT, Br35H).

The zero-shot protocol (:func:`check_zero_shot`) refuses to evaluate a dataset that a training source holds.

Bad input (a missing, truncated or unreadable image; a mask whose size differs from its image) raises
:class:`BadInputError` naming the file, or, when the caller asks to skip, is reported as a
:class:`SkippedFile` -- never dropped silently.
"""

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_ov.data.images import (
    IMAGE_SUFFIXES,
    BadInputError,
    SkippedFile,
    image_size,
    read_image,
)
from anomaly_ov.data.instruction_labels import NORMAL_FOLDERS, LabelReport, label_records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnomalySample:
    """One labelled image (or multi-view sample) of an anomaly-detection dataset.

    Attributes:
        images: The image file; several files for a multi-view sample (each view is encoded as one crop).
        label: 1 = anomalous, 0 = normal.
        class_name: The object / texture class (metrics are computed per class).
        mask: Ground-truth mask of an anomalous image (non-zero = anomalous pixel), or None (a normal
            image, or a dataset without masks).
    """

    images: tuple[Path, ...]
    label: int
    class_name: str
    mask: Path | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError(f"sample of class {self.class_name!r} has no image")
        if self.label not in (0, 1):
            raise ValueError(f"{self.images[0]}: label must be 0 or 1, got {self.label!r}")

    @property
    def image(self) -> Path:
        """The (first) image file."""
        return self.images[0]


def sample(
    image: str | Path, label: int | bool, class_name: str, mask: str | Path | None = None
) -> AnomalySample:
    """A single-image :class:`AnomalySample` from plain values."""
    return AnomalySample((Path(image),), int(label), str(class_name), None if mask is None else Path(mask))


# ------------------------------------------------------------------------------------------------ image files


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Reads a ground-truth mask as a boolean array and checks it against its image's size.

    Args:
        path: Mask file; any non-zero pixel is anomalous (MVTec masks are 0/255, VisA's 0/instance id).
        size: (width, height) of the image the mask belongs to.

    Returns:
        [H, W] bool.

    Raises:
        BadInputError: If the mask is missing, unreadable, or its size differs from ``size``.
    """
    try:
        with Image.open(path) as handle:
            if handle.size != tuple(size):
                raise BadInputError(
                    path, f"mask size {handle.size} differs from its image size {tuple(size)}"
                )
            return np.asarray(handle.convert("L")) > 0
    except FileNotFoundError:
        raise BadInputError(path, "mask file not found") from None
    except UnidentifiedImageError:
        raise BadInputError(path, "not a readable mask image") from None
    except BadInputError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError(path, f"unreadable or truncated mask ({error})") from None


def check_sample(item: AnomalySample, decode: bool = False) -> None:
    """Checks that a sample's files can be used.

    Args:
        item: The sample.
        decode: Decode every pixel (finds truncated files) instead of reading the headers only.

    Raises:
        BadInputError: Naming the first unusable file.
    """
    sizes = [read_image(path, max_side=None).size if decode else image_size(path) for path in item.images]
    if item.mask is not None:
        if decode:
            load_mask(item.mask, sizes[0])
        else:
            mask_size = image_size(item.mask)
            if mask_size != sizes[0]:
                raise BadInputError(
                    item.mask, f"mask size {mask_size} differs from its image size {sizes[0]}"
                )


def screen_samples(
    samples: Sequence[AnomalySample], skip_bad: bool, decode: bool = False
) -> tuple[list[AnomalySample], list[SkippedFile]]:
    """Checks every sample; raises on the first bad one or, with ``skip_bad``, leaves it out and reports it.

    Args:
        samples: The samples.
        skip_bad: Leave bad samples out (and report them) instead of raising.
        decode: Decode every pixel (see :func:`check_sample`).

    Returns:
        The usable samples (in order) and the files left out.

    Raises:
        BadInputError: On a bad sample when ``skip_bad`` is False.
    """
    kept: list[AnomalySample] = []
    skipped: list[SkippedFile] = []
    for item in samples:
        try:
            check_sample(item, decode=decode)
        except BadInputError as error:
            if not skip_bad:
                raise
            skipped.append(SkippedFile(error.path, error.reason))
            continue
        kept.append(item)
    if skipped:
        logger.warning("left out %d unusable samples (skip_bad=True): first %s", len(skipped), skipped[0])
    return kept, skipped


def write_skipped(skipped: Sequence[SkippedFile], path: str | Path) -> Path:
    """Writes the skip report ``[{"path", "reason"}, ...]`` as JSON (also when empty) and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([vars(s) for s in skipped], indent=2) + "\n", encoding="utf-8")
    return path


def group_by_class(samples: Iterable[AnomalySample]) -> dict[str, list[AnomalySample]]:
    """Samples per class, classes in sorted order, samples in their original order."""
    groups: dict[str, list[AnomalySample]] = {}
    for item in samples:
        groups.setdefault(item.class_name, []).append(item)
    return {name: groups[name] for name in sorted(groups)}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


MVTEC_LAYOUT = "MVTec AD's layout <root>/<class>/{train/good, test/{good,<defect>}, ground_truth/<defect>}/"
VISA_LAYOUT = "VisA's layout <root>/<class>/Data/{Images,Masks}/... with <root>/split_csv/1cls.csv"


def _require_dir(path: Path, what: str, expected: str = "") -> Path:
    if not path.is_dir():
        layout = f"; expected {expected}" if expected else ""
        raise FileNotFoundError(f"{what} not found: {path} is not a directory{layout}")
    return path


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class MVTecSource:
    """A dataset in MVTec AD's layout (MVTec AD, MPDD, the synthetic data).

    ``<root>/<class>/train/good/*``, ``<root>/<class>/test/{good,<defect>}/*`` and
    ``<root>/<class>/ground_truth/<defect>/<stem>_mask.png``. Normal images have no mask; every anomalous test
    image must have one.

    Attributes:
        root: Dataset root (the folder holding the class folders).
        split: "test" (evaluation), "train" (normal training images) or "all".
        classes: Classes to read (default: every class folder).
        contains: Names of other benchmark datasets whose images this source holds (zero-shot protocol).
    """

    root: str | Path
    split: str = "test"
    classes: Sequence[str] | None = None
    contains: Sequence[str] = field(default_factory=tuple)

    def read(self) -> list[AnomalySample]:
        """All samples of the chosen split and classes, sorted by class then path."""
        if self.split not in ("test", "train", "all"):
            raise ValueError(f"MVTecSource.split must be 'test', 'train' or 'all', got {self.split!r}")
        root = _require_dir(Path(self.root), "MVTec-layout dataset root", MVTEC_LAYOUT)
        names = sorted(self.classes) if self.classes is not None else [p.name for p in _subdirs(root)]
        splits = ("train", "test") if self.split == "all" else (self.split,)
        samples: list[AnomalySample] = []
        for name in names:
            class_dir = _require_dir(root / name, f"class {name!r} of {root}")
            for split in splits:
                split_dir = class_dir / split
                if split == "train" and not split_dir.is_dir():
                    continue
                split_what = f"{split} split of class {name!r}"
                for defect_dir in _subdirs(_require_dir(split_dir, split_what, MVTEC_LAYOUT)):
                    normal = defect_dir.name == "good"
                    for image in _image_files(defect_dir):
                        mask = None
                        if not normal:
                            mask = class_dir / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
                            if not mask.is_file():
                                raise BadInputError(image, f"anomalous image without its mask {mask}")
                        samples.append(sample(image, not normal, name, mask))
        if not samples:
            raise FileNotFoundError(f"no images found under {root} (split {self.split!r}, classes {names})")
        return samples


VISA_SPLIT_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")


@dataclass(frozen=True)
class VisASource:
    """VisA in its published layout, read through its split file.

    The split file (``split_csv/1cls.csv``) has the columns object, split ("train"/"test"), label
    ("normal"/"anomaly"), image and mask (empty for normal images); paths are relative to the root.

    Attributes:
        root: The VisA root (holding the class folders and ``split_csv/``).
        split_csv: The split file, relative to ``root``.
        split: "test", "train" or "all".
        classes: Classes to read (default: all in the split file).
        contains: Names of other benchmark datasets whose images this source holds.
    """

    root: str | Path
    split_csv: str = "split_csv/1cls.csv"
    split: str = "test"
    classes: Sequence[str] | None = None
    contains: Sequence[str] = field(default_factory=tuple)

    def read(self) -> list[AnomalySample]:
        """The samples of the split file's rows in the chosen split and classes, in file order."""
        from datasets import Features, Value

        if self.split not in ("test", "train", "all"):
            raise ValueError(f"VisASource.split must be 'test', 'train' or 'all', got {self.split!r}")
        root = _require_dir(Path(self.root), "VisA root", VISA_LAYOUT)
        csv_path = root / self.split_csv
        if not csv_path.is_file():
            raise FileNotFoundError(f"VisA split file not found: {csv_path}; expected {VISA_LAYOUT}")
        header = csv_path.read_text(encoding="utf-8").splitlines()[0].strip().split(",")
        if tuple(header) != VISA_SPLIT_COLUMNS:
            raise ValueError(f"{csv_path}: expected the columns {list(VISA_SPLIT_COLUMNS)}, found {header}")
        rows = load_table(
            "csv", csv_path, Features({column: Value("string") for column in VISA_SPLIT_COLUMNS})
        )
        wanted = None if self.classes is None else set(self.classes)
        samples = []
        for number, row in enumerate(rows, start=2):
            if self.split != "all" and row["split"] != self.split:
                continue
            if wanted is not None and row["object"] not in wanted:
                continue
            if row["label"] not in ("normal", "anomaly"):
                raise ValueError(
                    f"{csv_path} line {number}: label {row['label']!r} is not 'normal' or 'anomaly'"
                )
            anomalous = row["label"] == "anomaly"
            mask = root / row["mask"] if row["mask"] else None
            if anomalous and mask is None:
                raise BadInputError(root / row["image"], f"anomalous image without a mask in {csv_path}")
            samples.append(sample(root / row["image"], anomalous, row["object"], mask))
        if not samples:
            raise FileNotFoundError(
                f"{csv_path}: no rows for split {self.split!r} and classes {self.classes}"
            )
        return samples


@dataclass(frozen=True)
class InstructionSource:
    """The labelled samples of an instruction JSON (Anomaly-Instruct-125k style, SPEC §5), for stage 1.

    A record's label comes from the first of ``label_rules`` that decides it
    (:mod:`anomaly_ov.data.instruction_labels`): its own ``"anomaly": true|false`` (``key``), its source
    folders (``folder``: ``good``/``ok``/``normal`` vs the defect folders beside them) or the first answer's
    leading Yes/No (``answer``). Records no rule decides (general instructions) are counted and logged, not
    used; the counts per rule are logged too. A source whose labels hold only one class is refused: a
    class-balanced loss over one class trains nothing. A record whose ``"image"`` is a list is a multi-view
    sample. The class is the record's ``"class"`` when present, else the path component ``class_component``
    of its (first) image (VisA-D&R's convention: ``VisA/<class>/...``).

    Attributes:
        json_path: The JSON list of records.
        image_root: Folder the image paths are relative to.
        label_key: The boolean label's key (``key`` rule).
        class_component: Index of the class in the image path when a record has no "class".
        contains: Names of benchmark datasets whose images this source holds (e.g. ["mvtec"]).
        label_rules: Rules tried in order, from ``key``, ``folder``, ``answer``.
        normal_folders: Folder names meaning normal (``folder`` rule, case-insensitive).
        anomalous_folders: Folder names meaning anomalous wherever they are (``folder`` rule).
    """

    json_path: str | Path
    image_root: str | Path
    label_key: str = "anomaly"
    class_component: int = 1
    contains: Sequence[str] = field(default_factory=tuple)
    label_rules: Sequence[str] = ("key",)
    normal_folders: Sequence[str] = NORMAL_FOLDERS
    anomalous_folders: Sequence[str] = ()

    def read(self) -> list[AnomalySample]:
        """The labelled records as samples, in file order (the label report is logged)."""
        return self.read_with_report()[0]

    def read_with_report(self) -> tuple[list[AnomalySample], LabelReport]:
        """The labelled records as samples and how they were labelled.

        Raises:
            FileNotFoundError: If the file is missing.
            ValueError: Naming the file (and record) of malformed JSON, a non-boolean label, a bad image
                entry, or labels that hold only one class (or none).
        """
        json_path = Path(self.json_path)
        try:
            records = json.loads(json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"instruction file not found: {json_path}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{json_path}: not valid JSON ({error})") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"{json_path}: expected a JSON list of records (objects)")
        labels, report = label_records(
            records,
            tuple(self.label_rules),
            str(json_path),
            self.label_key,
            tuple(self.normal_folders),
            tuple(self.anomalous_folders),
        )
        root = Path(self.image_root)
        samples: list[AnomalySample] = []
        for index, (record, label) in enumerate(zip(records, labels, strict=True)):
            if label is None:
                continue
            where = f"{json_path} record {index} (id {record.get('id')!r})"
            images = record.get("image")
            relative = [images] if isinstance(images, str) else images
            if not relative or not all(isinstance(p, str) for p in relative):
                raise ValueError(f"{where}: 'image' must be a path or a list of paths, got {images!r}")
            class_name = record.get("class")
            if class_name is None:
                parts = Path(relative[0]).parts
                if len(parts) <= self.class_component:
                    raise ValueError(
                        f"{where}: no 'class' and the image path {relative[0]!r} has no component "
                        f"{self.class_component} to take the class from"
                    )
                class_name = parts[self.class_component]
            samples.append(AnomalySample(tuple(root / p for p in relative), label, str(class_name)))
        logger.info("stage-1 labels: %s", report.summary())
        classes = ((0, "normal"), (1, "anomalous"))
        missing = [name for label, name in classes if not report.per_label.get(label)]
        if missing:
            raise ValueError(
                f"{json_path}: the label rules {list(self.label_rules)} give no {' and no '.join(missing)} "
                f"record ({report.summary()}); stage 1 needs both classes from each source. Add a rule "
                "(label_rules: [key, folder, answer]) or set label_key / normal_folders for this file."
            )
        return samples, report


def load_table(kind: str, path: Path, features: object) -> list[dict[str, object]]:
    """Reads a CSV / JSON-lines table with the ``datasets`` library, schema-checked, no lasting cache."""
    import tempfile

    import datasets
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            reader = datasets.Dataset.from_csv if kind == "csv" else datasets.Dataset.from_json
            try:
                table = reader(str(path), features=features, cache_dir=cache_dir, keep_in_memory=True)
            except (ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as error:
                cause = error.__cause__ or error
                raise ValueError(
                    f"{path}: does not match the expected columns {features} ({cause})"
                ) from None
            return table.to_list()
    finally:
        if was_enabled:
            enable_progress_bars()


# ------------------------------------------------------------------------------------------------ protocol


class ZsadSource(Protocol):
    """What every dataset source offers: its samples and the benchmark datasets it holds."""

    contains: Sequence[str]

    def read(self) -> list[AnomalySample]:
        """The dataset's samples."""
        ...


class ZeroShotError(ValueError):
    """Evaluation on a dataset the model was trained on, without the explicit permission."""


def trained_datasets(train_sources: Mapping[str, ZsadSource]) -> dict[str, str]:
    """Every dataset a set of training sources holds: ``{dataset: source}`` (a source holds itself too).

    Args:
        train_sources: ``{name: source}``; a source's ``contains`` lists the benchmark datasets inside it.
    """
    held: dict[str, str] = {}
    for name, source in train_sources.items():
        for dataset in (name, *source.contains):
            held.setdefault(str(dataset), name)
    return held


def check_zero_shot(
    train_sources: Mapping[str, ZsadSource], eval_names: Sequence[str], allow_seen: bool
) -> list[str]:
    """Enforces the zero-shot protocol: an evaluated dataset is never in training.

    Args:
        train_sources: ``{name: source}`` the model was trained on.
        eval_names: Datasets to evaluate.
        allow_seen: Evaluate seen datasets anyway (explicit opt-in, e.g. for a sanity check).

    Returns:
        The evaluated datasets that were seen in training (empty unless ``allow_seen``).

    Raises:
        ZeroShotError: If a seen dataset is evaluated without ``allow_seen``.
    """
    held = trained_datasets(train_sources)
    seen = [name for name in eval_names if name in held]
    if seen and not allow_seen:
        details = ", ".join(f"{name!r} (in training source {held[name]!r})" for name in seen)
        raise ZeroShotError(
            f"refusing to evaluate {details}: the model was trained on it, so the result is not zero-shot. "
            "Evaluate other datasets, or pass allow_seen=true to evaluate it anyway."
        )
    return seen
