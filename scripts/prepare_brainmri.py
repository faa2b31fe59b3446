"""Writes the manifest of BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection").

Layout (the archive's ``brain_tumor_dataset`` folder, or its parent)::

    <root>/yes/*.jpg   MRI slices with a tumour (anomalous)
    <root>/no/*.jpg    without (normal)

One class, "brain"; no masks.

    python scripts/prepare_brainmri.py --root datasets/BrainMRI   # -> datasets/BrainMRI/manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("brainmri"))
