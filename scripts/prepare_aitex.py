"""Writes the manifest of AITEX (fabric defects) from its published layout; one class, "fabric".

Layout (``Defect_images/`` may be nested as ``Defect_images/Defect_images/``)::

    <root>/Defect_images/<nnnn_ddd_ff>.png        anomalous strips (4096 x 256)
    <root>/Mask_images/<nnnn_ddd_ff>_mask*.png    their masks (several masks of one strip are merged)
    <root>/NODefect_images/<fabric>/*.png         normal strips

By default the strips are cut into 256x256 patches as InCTRL does (a patch is anomalous when it holds defect
pixels), written with their masks to <out folder>/aitex_prepared/; ``--whole-strips`` keeps the strips.
Finding no defect image is an error. Logic: :mod:`anomaly_ov.data.prepare.aitex`.

    python scripts/prepare_aitex.py --root datasets/AITEX  # -> datasets/AITEX/manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("aitex"))
