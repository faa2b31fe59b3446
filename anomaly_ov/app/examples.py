"""The gallery of example images on the page: the synthetic held-out classes and ELPV cells when present.

Examples are files the server already has (never uploads): images of the synthetic dataset's held-out
classes (``meta.json`` names them; one defect and one good image per class) and, when the
``elpv-dataset`` package is installed, a few solar cells of each label (defect probability 1.0 and 0).
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from anomaly_ov.data.images import is_image_file
from anomaly_ov.data.prepare.elpv import read_elpv


@dataclass(frozen=True)
class Example:
    """One example image and its caption (class and defect)."""

    path: Path
    caption: str


def synthetic_examples(synthetic_dir: Path, per_class: int = 1) -> list[Example]:
    """Defect and good test images of the synthetic dataset's held-out classes (none if it is absent).

    Args:
        synthetic_dir: The folder ``anomaly-ov make-synthetic`` wrote (with ``meta.json``).
        per_class: Images of each kind (defect, good) per class.
    """
    meta_path = synthetic_dir / "meta.json"
    if not meta_path.is_file():
        return []
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    examples = []
    for name in meta.get("heldout_categories", []):
        test = synthetic_dir / "mvtec" / name / "test"
        if not test.is_dir():
            continue
        defects = sorted(d for d in test.iterdir() if d.is_dir() and d.name != "good")
        for folder in [*defects[:1], test / "good"]:
            images = sorted(p for p in folder.glob("*") if is_image_file(p))[:per_class]
            examples += [Example(p, f"{name} / {folder.name} (held out)") for p in images]
    return examples


def installed_elpv_root() -> Path | None:
    """The data folder of the installed ``elpv-dataset`` package, or None."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "data"
    return root if (root / "labels.csv").is_file() else None


def elpv_examples(root: Path | None, per_label: int = 2) -> list[Example]:
    """ELPV cells of each label (anomalous: defect probability 1.0; normal: 0), none without a root."""
    if root is None or not (root / "labels.csv").is_file():
        return []
    samples = read_elpv(root, label_rule="certain_only")
    examples = []
    for label, word in ((1, "defective"), (0, "normal")):
        chosen = [s for s in samples if s.label == label][:per_label]
        examples += [Example(s.images[0], f"ELPV solar cell / {word}") for s in chosen]
    return examples
