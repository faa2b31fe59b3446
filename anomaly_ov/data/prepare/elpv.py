"""ELPV (electroluminescence images of solar cells): ``labels.csv`` -> samples, by a named label rule.

Layout (the ``elpv-dataset`` repository)::

    <root>/labels.csv    one line per cell: "images/cell0001.png  <defect probability>  <mono|poly>"
    <root>/images/*.png  300 x 300 grey images

The annotators gave each cell a defect probability of 0, 1/3, 2/3 or 1. The compared zero-shot methods
(InCTRL's conversion, SPEC §5) call a cell anomalous only when the probability is 1.0: the 1/3 and 2/3
cells are ambiguous. All cells form one class, "solar_cell"; no masks.
"""

import logging
from collections import Counter
from pathlib import Path

from anomaly_ov.data.prepare.layouts import LayoutError
from anomaly_ov.data.zsad import AnomalySample, sample

logger = logging.getLogger(__name__)

CLASS_NAME = "solar_cell"
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


def read_elpv(root: Path, label_rule: str = "certain") -> list[AnomalySample]:
    """Every cell of ``labels.csv`` labelled by ``label_rule``; logs the cells per probability and label.

    Args:
        root: The ``elpv-dataset`` folder.
        label_rule: A key of :data:`LABEL_RULES`.

    Raises:
        LayoutError: If ``labels.csv`` is missing.
        ValueError: Naming the line of a malformed entry.
    """
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
        path, probability, _ = fields
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
