"""Writes the manifest of ELPV (electroluminescence images of solar cells) from its published layout.

Layout (the ``elpv-dataset`` repository)::

    <root>/labels.csv    one line per cell: "images/cell0001.png  <defect probability>  <mono|poly>"
    <root>/images/*.png  300 x 300 grey images

By default a cell is anomalous when its defect probability is 1.0 (InCTRL's conversion, which the compared
numbers use); ``--label-rule any`` calls every probability above 0 anomalous, ``--label-rule certain_only``
leaves the ambiguous 1/3 and 2/3 cells out. One class, "solar_cell"; no masks. The cells per probability
and label are printed. Logic: :mod:`anomaly_ov.data.prepare.elpv`.

    python scripts/prepare_elpv.py --root datasets/elpv-dataset   # -> .../manifest.jsonl
"""

import sys

from anomaly_ov.data.prepare.command import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main("elpv"))
