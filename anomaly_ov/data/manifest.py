"""The generic anomaly-detection manifest: one JSON line per image (image, label, optional mask, class).

Datasets whose published layout is not MVTec AD's or VisA's (BTAD, AITEX, ELPV, BrainMRI, HeadCT, Br35H;
MPDD too, for uniformity) are converted once by ``scripts/prepare_<dataset>.py``
(:mod:`anomaly_ov.data.prepare`) into this manifest, which every part of the project then reads the same way.

Format (JSON lines, UTF-8), one object per line::

    {"image": "01/test/ko/0000.bmp", "label": 1, "mask": "01/ground_truth/ko/0000.png", "class": "01"}
    {"image": "01/test/ok/0000.bmp", "label": 0, "mask": null, "class": "01"}

* ``image``: image path, relative to the manifest's folder (or absolute);
* ``label``: 0 = normal, 1 = anomalous;
* ``mask``: ground-truth mask (non-zero = anomalous pixel) of an anomalous image, or null (normal image or a
  dataset without masks; pixel metrics then are not computed for its classes);
* ``class``: class name; metrics are computed per class and averaged over classes.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_ov.data.zsad import (
    AnomalySample,
    load_table,
    sample,
)

MANIFEST_COLUMNS: tuple[str, ...] = ("image", "label", "mask", "class")


def _features() -> object:
    from datasets import Features, Value

    return Features(
        {"image": Value("string"), "label": Value("int64"), "mask": Value("string"), "class": Value("string")}
    )


def write_manifest(samples: Sequence[AnomalySample], path: str | Path) -> Path:
    """Writes samples as a manifest, paths relative to the manifest's folder.

    Args:
        samples: Single-image samples.
        path: The ``.jsonl`` file to write (its folder is created).

    Returns:
        The manifest path.

    Raises:
        ValueError: If a sample is multi-view (the manifest holds one image per line).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()

    def relative(file: Path) -> str:
        return Path(os.path.relpath(Path(file).resolve(), base)).as_posix()

    lines = []
    for item in samples:
        if len(item.images) != 1:
            raise ValueError(
                f"{item.images[0]}: a manifest line holds one image, this sample has {len(item.images)}"
            )
        record = {
            "image": relative(item.image),
            "label": item.label,
            "mask": None if item.mask is None else relative(item.mask),
            "class": item.class_name,
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_manifest(path: str | Path) -> list[AnomalySample]:
    """Reads a manifest (schema-checked with the ``datasets`` library).

    Raises:
        FileNotFoundError: If the manifest is missing.
        ValueError: Naming the manifest and line of a record with a wrong label or missing image / class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = path.parent
    samples = []
    for number, row in enumerate(load_table("json", path, _features()), start=1):
        where = f"{path} line {number}"
        if row["label"] not in (0, 1):
            raise ValueError(f"{where}: label must be 0 or 1, got {row['label']!r}")
        if not row["image"] or not row["class"]:
            raise ValueError(f"{where}: 'image' and 'class' must be non-empty, got {row}")
        mask = None if not row["mask"] else base / row["mask"]
        samples.append(sample(base / row["image"], row["label"], row["class"], mask))
    if not samples:
        raise ValueError(f"{path}: the manifest is empty")
    return samples


@dataclass(frozen=True)
class ManifestSource:
    """A dataset given by a manifest file (see the module docstring).

    Attributes:
        path: The ``.jsonl`` manifest.
        classes: Classes to read (default: all).
        contains: Names of other benchmark datasets whose images this source holds.
    """

    path: str | Path
    classes: Sequence[str] | None = None
    contains: Sequence[str] = field(default_factory=tuple)

    def read(self) -> list[AnomalySample]:
        """The manifest's samples (of the chosen classes), in file order."""
        samples = read_manifest(self.path)
        if self.classes is None:
            return samples
        wanted = set(self.classes)
        chosen = [item for item in samples if item.class_name in wanted]
        if not chosen:
            raise ValueError(f"{self.path}: no sample of the classes {sorted(wanted)}")
        return chosen
