"""Writes the manifest of BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection").

Layout (the archive's ``brain_tumor_dataset`` folder, or its parent)::

    <root>/yes/*.jpg   MRI slices with a tumour (anomalous)
    <root>/no/*.jpg    without (normal)

One class, "brain"; no masks.

    python scripts/prepare_brainmri.py --root datasets/BrainMRI   # -> datasets/BrainMRI/manifest.jsonl
"""

import sys
from pathlib import Path

from anomaly_ov.data.manifest import prepare_cli, read_label_folders
from anomaly_ov.data.zsad import AnomalySample


def read_brainmri(root: Path) -> list[AnomalySample]:
    """The yes/ (anomalous) and no/ (normal) images."""
    nested = root / "brain_tumor_dataset"
    return read_label_folders(nested if nested.is_dir() else root, "brain")


if __name__ == "__main__":
    sys.exit(prepare_cli("BrainMRI", read_brainmri))
