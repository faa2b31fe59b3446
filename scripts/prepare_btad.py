"""Writes the manifest of BTAD (beanTech Anomaly Detection) from its published layout.

Layout (``BTech_Dataset_transformed``)::

    <root>/<01|02|03>/train/ok/*               normal training images (not in the manifest)
    <root>/<01|02|03>/test/ok/*                normal test images
    <root>/<01|02|03>/test/ko/*                anomalous test images
    <root>/<01|02|03>/ground_truth/ko/<stem>.* their masks (same stem, .png or .bmp)

    python scripts/prepare_btad.py --root datasets/BTAD    # -> datasets/BTAD/manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("btad"))
