"""Writes the manifest of MPDD (Metal Parts Defect Detection) from its published layout.

MPDD uses MVTec AD's layout, read by :class:`~anomaly_ov.data.zsad.MVTecSource` (test split)::

    <root>/<class>/test/good/*.png, <root>/<class>/test/<defect>/*.png,
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png

    python scripts/prepare_mpdd.py --root datasets/MPDD    # -> datasets/MPDD/manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("mpdd"))
