"""Writes the manifest of Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020").

Layout::

    <root>/yes/y*.jpg     MRI slices with a tumour (anomalous)
    <root>/no/no*.jpg     without (normal)
    <root>/pred/          unlabelled; not used

One class, "brain"; no masks.

    python scripts/prepare_br35h.py --root datasets/Br35H   # -> datasets/Br35H/manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("br35h"))
