"""Writes the manifest of Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020").

Layout::

    <root>/yes/y*.jpg     MRI slices with a tumour (anomalous)
    <root>/no/no*.jpg     without (normal)
    <root>/pred/          unlabelled; not used

One class, "brain"; no masks.

    python scripts/prepare_br35h.py --root datasets/Br35H   # -> datasets/Br35H/manifest.jsonl
"""

import sys
from pathlib import Path

from anomaly_ov.data.manifest import prepare_cli, read_label_folders
from anomaly_ov.data.zsad import AnomalySample


def read_br35h(root: Path) -> list[AnomalySample]:
    """The yes/ (anomalous) and no/ (normal) images."""
    return read_label_folders(root, "brain")


if __name__ == "__main__":
    sys.exit(prepare_cli("Br35H", read_br35h))
