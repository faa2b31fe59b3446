"""Writes the manifest of HeadCT (Kaggle "Head CT - hemorrhage").

Layout::

    <root>/labels.csv            columns "id, hemorrhage" (1 = hemorrhage, the anomalous class)
    <root>/head_ct/head_ct/*.png images named by id with three digits: 000.png ... 199.png
                                 (or <root>/head_ct/*.png)

One class, "head_ct"; no masks.

    python scripts/prepare_headct.py --root datasets/HeadCT   # -> datasets/HeadCT/manifest.jsonl
"""

import csv
import sys
from pathlib import Path

from anomaly_ov.data.manifest import prepare_cli
from anomaly_ov.data.zsad import AnomalySample, sample

CLASS_NAME = "head_ct"


def read_headct(root: Path) -> list[AnomalySample]:
    """Every image of labels.csv, anomalous when hemorrhage is 1."""
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"HeadCT label file not found: {labels}")
    images = root / "head_ct" / "head_ct"
    images = images if images.is_dir() else root / "head_ct"
    with labels.open(encoding="utf-8", newline="") as handle:
        # The published header is "id, hemorrhage" (with a space).
        rows = [{key.strip(): value.strip() for key, value in row.items()} for row in csv.DictReader(handle)]
    samples = []
    for number, row in enumerate(rows, start=2):
        if row.get("hemorrhage") not in ("0", "1") or not row.get("id", "").isdigit():
            raise ValueError(f"{labels} line {number}: expected an integer id and hemorrhage 0/1, got {row}")
        samples.append(sample(images / f"{int(row['id']):03d}.png", int(row["hemorrhage"]), CLASS_NAME))
    return samples


if __name__ == "__main__":
    sys.exit(prepare_cli("HeadCT", read_headct))
