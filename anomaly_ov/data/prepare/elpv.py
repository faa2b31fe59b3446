"""ELPV (electroluminescence images of solar cells): ``labels.csv`` -> samples, by a named label rule.

Layout (the ``elpv-dataset`` repository)::

    <root>/labels.csv    one line per cell: "images/cell0001.png  <defect probability>  <mono|poly>"
    <root>/images/*.png  300 x 300 grey images

The annotators gave each cell a defect probability of 0, 1/3, 2/3 or 1. The compared zero-shot methods
(InCTRL's conversion, SPEC §5) call a cell anomalous only when the probability is 1.0: the 1/3 and 2/3
cells are ambiguous. All cells form one class, "solar_cell"; no masks.

The dataset also installs from the package registry (``elpv-dataset==1.0.0.post1``, licence CC BY-NC-SA 4.0:
non-commercial; the project installs it and never redistributes it) with the same layout under
``elpv_dataset/data/``: :func:`installed_elpv_root` finds it without importing the package or downloading
anything, and :class:`InstalledElpvSource` reads it as a zero-shot dataset.
"""

import importlib.util
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_ov.data.prepare.layouts import LayoutError
from anomaly_ov.data.zsad import AnomalySample, sample

logger = logging.getLogger(__name__)

CLASS_NAME = "solar_cell"
CELL_TYPES: tuple[str, ...] = ("mono", "poly")
"""The cell types of ``labels.csv``'s third column (monocrystalline, polycrystalline)."""
PACKAGE = "elpv_dataset"
PIP_LINE = "pip install -c constraints.txt elpv-dataset==1.0.0.post1"
"""How to install the dataset package (``bash scripts/setup_env.sh`` does it from the pinned extras)."""
LABEL_RULES: dict[str, str] = {
    "certain": "anomalous when the defect probability is 1.0, every other cell normal (InCTRL; default)",
    "any": "anomalous when the defect probability is above 0 (the annotators' 1/3, 2/3 and 1)",
    "certain_only": "probability 1.0 anomalous, 0 normal, the ambiguous 1/3 and 2/3 cells left out",
}
"""The label rules: name -> what it does."""


def elpv_label(probability: float, rule: str) -> int | None:
    """The label of a cell under ``rule`` (see :data:`LABEL_RULES`); None = left out.

    Raises:
        ValueError: If the rule is unknown or the probability is outside [0, 1].
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"ELPV label rule {rule!r} is not one of {sorted(LABEL_RULES)}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"defect probability {probability} is outside [0, 1]")
    certain = probability >= 1.0 - 1e-6
    if rule == "any":
        return int(probability > 1e-6)
    if rule == "certain_only" and not certain and probability > 1e-6:
        return None
    return int(certain)


def read_elpv(
    root: Path, label_rule: str = "certain", cell_types: Sequence[str] | None = None
) -> list[AnomalySample]:
    """Every cell of ``labels.csv`` labelled by ``label_rule``; logs the cells per probability and label.

    Args:
        root: The ``elpv-dataset`` folder.
        label_rule: A key of :data:`LABEL_RULES`.
        cell_types: Keep only cells of these types (:data:`CELL_TYPES`); None keeps every cell.

    Raises:
        LayoutError: If ``labels.csv`` is missing.
        ValueError: Naming the line of a malformed entry, or an unknown cell type.
    """
    if cell_types is not None and not set(cell_types) <= set(CELL_TYPES):
        raise ValueError(f"ELPV cell types {list(cell_types)} are not among {list(CELL_TYPES)}")
    labels = root / "labels.csv"
    if not labels.is_file():
        raise LayoutError(root, f"{root}/labels.csv and {root}/images/*.png", "no labels.csv")
    samples = []
    counts: Counter[tuple[str, int | None]] = Counter()
    for number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{labels} line {number}: expected 'path probability type', got {line!r}")
        path, probability, cell_type = fields
        if cell_type not in CELL_TYPES:
            raise ValueError(f"{labels} line {number}: cell type {cell_type!r} is not one of {CELL_TYPES}")
        if cell_types is not None and cell_type not in cell_types:
            continue
        try:
            value = float(probability)
            label = elpv_label(value, label_rule)
        except ValueError as error:
            raise ValueError(f"{labels} line {number}: {error}") from None
        counts[(f"{value:.2f}", label)] += 1
        if label is not None:
            samples.append(sample(root / path, label, CLASS_NAME))
    for (probability, label), count in sorted(counts.items()):
        what = "left out" if label is None else ("anomalous" if label else "normal")
        logger.info("ELPV (%s rule): %d cells of probability %s -> %s", label_rule, count, probability, what)
    return samples


def cell_types(root: Path) -> dict[str, str]:
    """The type of every cell of ``labels.csv``: ``{image file name: "mono" | "poly"}``.

    Raises:
        LayoutError: If ``labels.csv`` is missing.
    """
    labels = root / "labels.csv"
    if not labels.is_file():
        raise LayoutError(root, f"{root}/labels.csv and {root}/images/*.png", "no labels.csv")
    rows = (line.split() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip())
    return {Path(fields[0]).name: fields[2] for fields in rows if len(fields) == 3}


class ElpvPackageError(FileNotFoundError):
    """The installed ``elpv-dataset`` package is missing or incomplete; the message names the missing file
    and the pip line that installs it.
    """


def installed_elpv_root() -> Path:
    """The ``data`` folder of the installed ``elpv-dataset`` package, every file of ``labels.csv`` present.

    The package is located with :func:`importlib.util.find_spec` (never imported, nothing downloaded).

    Raises:
        ElpvPackageError: If the package is not installed, or ``labels.csv`` or an image it lists is missing
            (naming the first missing file, how many are missing, and the pip line to run).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ElpvPackageError(f"the ELPV dataset package {PACKAGE!r} is not installed; run: {PIP_LINE}")
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    labels = root / "labels.csv"
    if not labels.is_file():
        raise ElpvPackageError(f"the ELPV package is incomplete: {labels} is missing; reinstall: {PIP_LINE}")
    listed = [line.split()[0] for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [root / name for name in listed if not (root / name).is_file()]
    if missing:
        raise ElpvPackageError(
            f"the ELPV package is incomplete: {missing[0]} is missing ({len(missing)} of the {len(listed)} "
            f"images listed in {labels}); reinstall: {PIP_LINE} --force-reinstall"
        )
    return root


@dataclass(frozen=True)
class InstalledElpvSource:
    """ELPV read from the installed ``elpv-dataset`` package (a zero-shot dataset source, no manifest).

    Attributes:
        label_rule: A key of :data:`LABEL_RULES` ("certain", the field's rule, by default).
        cell_types: Keep only cells of these types (None: every cell).
        every: Keep every ``every``-th kept cell in ``labels.csv`` order (1: all; a fixed subset for the
            reduced demo and for controls that cannot afford all 2,624 cells).
        contains: Benchmark datasets this source holds (the zero-shot protocol): none but itself.
    """

    label_rule: str = "certain"
    cell_types: Sequence[str] | None = None
    every: int = 1
    contains: Sequence[str] = field(default_factory=tuple)

    def read(self) -> list[AnomalySample]:
        """Every kept cell, labelled by the rule (see :func:`read_elpv`).

        Raises:
            ElpvPackageError: If the package is missing or incomplete.
            ValueError: If ``every`` is below 1.
        """
        if self.every < 1:
            raise ValueError(f"InstalledElpvSource.every must be at least 1, got {self.every}")
        return read_elpv(installed_elpv_root(), self.label_rule, self.cell_types)[:: self.every]
