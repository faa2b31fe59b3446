"""Writes the manifest of ELPV (electroluminescence images of solar cells) from its published layout.

Layout (the ``elpv-dataset`` repository)::

    <root>/labels.csv    one line per cell: "images/cell0001.png  <defect probability>  <mono|poly>"
    <root>/images/*.png  300 x 300 grey images

A cell is anomalous when its defect probability is above 0 (the annotators' 1/3, 2/3 and 1); all cells
form one class, "solar_cell". No masks.

    python scripts/prepare_elpv.py --root datasets/elpv-dataset   # -> .../manifest.jsonl
"""

import sys
from pathlib import Path

from anomaly_ov.data.manifest import prepare_cli
from anomaly_ov.data.zsad import AnomalySample, sample

CLASS_NAME = "solar_cell"


def read_elpv(root: Path) -> list[AnomalySample]:
    """Every cell of labels.csv, anomalous when its defect probability is above 0."""
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"ELPV label file not found: {labels}")
    samples = []
    for number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{labels} line {number}: expected 'path probability type', got {line!r}")
        path, probability, _ = fields
        try:
            value = float(probability)
        except ValueError:
            raise ValueError(f"{labels} line {number}: probability {probability!r} is not a number") from None
        samples.append(sample(root / path, value > 0, CLASS_NAME))
    return samples


if __name__ == "__main__":
    sys.exit(prepare_cli("ELPV", read_elpv))
