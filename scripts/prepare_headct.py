"""Writes the manifest of HeadCT (Kaggle "Head CT - hemorrhage").

Layout::

    <root>/labels.csv            columns "id, hemorrhage" (1 = hemorrhage, the anomalous class)
    <root>/head_ct/head_ct/*.png images named by id with three digits: 000.png ... 199.png
                                 (or <root>/head_ct/*.png)

One class, "head_ct"; no masks.

    python scripts/prepare_headct.py --root datasets/HeadCT   # -> datasets/HeadCT/manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("headct"))
