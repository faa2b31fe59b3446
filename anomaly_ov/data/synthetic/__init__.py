r"""The embedded default dataset: synthetic industrial-style images with exactly known defects.

Nothing is downloaded: the "good" images come from photographs and textures that ship with scikit-image
(``skimage.data``) and from procedurally drawn objects (a pill, a screw, a gear), each varied by random
crops, small pose changes, brightness/colour jitter and sensor noise. Defects are painted onto a clean
image, and the ground-truth mask is *exactly* the set of pixels the defect changed (every painted pixel
differs from the clean one by at least :data:`MIN_DEFECT_CONTRAST` grey levels in some channel), so pixel
metrics computed on this data are exact. Everything is a pure function of the seed: the same seed writes
byte-identical files.

Layout written by :func:`generate_synthetic` (all paths relative to the output root)::

    mvtec/<class>/train/good/NNN.png                 normal training images (MVTec AD layout)
    mvtec/<class>/test/good/NNN.png                  normal test images (no ground truth, MVTec convention)
    mvtec/<class>/test/<defect>/NNN.png              anomalous test images
    mvtec/<class>/ground_truth/<defect>/NNN_mask.png 0/255 uint8 L-mode masks, same size as the image
    instruct.json          Anomaly-Instruct-style records over the TRAIN classes (train/good and test images):
                           {"id", "image": "mvtec/<class>/...", "conversations": [{"from": "human",
                           "value": "<image>\n..."}, {"from": "gpt", "value": ...}, ...], "anomaly": bool,
                           "class": str, "defect": str | None}
    visa_dr/test_data.json VisA-D&R-style detection file over the HELD-OUT classes' test images:
                           [{"image": "mvtec/<class>/test/...", "anomaly": bool}, ...]
    visa_dr/visa_dr.json   VisA-D&R-style reasoning file, anomalous held-out images only:
                           [{"image", "class", "defect", "questions": [q1, .., q4], "answers": [a1, .., a4]}]
                           q1-q3 are low-level (is there an anomaly / its type / its location), q4 is a
                           complex-reasoning question (consequence and action). The questions carry no
                           ``<image>`` token: the evaluator puts the image before the first question and asks
                           them as one multi-turn conversation. ``answers[i]`` is the reference for
                           ``questions[i]``.
    meta.json              seed, scale, image size, categories (kind, noun, defects, split), defect types,
                           per-class counts.

The class of every record is the second component of its image path, as in VisA-D&R.

Modules: :mod:`~anomaly_ov.data.synthetic.render` (images, defects, masks),
:mod:`~anomaly_ov.data.synthetic.text` (instruction and VisA-D&R texts),
:mod:`~anomaly_ov.data.synthetic.write` (layout and files, :func:`generate_synthetic`, the ``make-synthetic``
command :func:`cli_main`).
"""

from anomaly_ov.data.synthetic.render import (
    CATEGORIES,
    DEFECT_TYPES,
    MIN_DEFECT_CONTRAST,
    Canvas,
    Category,
    render_sample,
)
from anomaly_ov.data.synthetic.text import DETECTION_PROMPT, describe_location
from anomaly_ov.data.synthetic.write import (
    OWNED_ENTRIES,
    SCALES,
    Scale,
    SyntheticDataset,
    cli_main,
    generate_synthetic,
)

__all__ = [
    "CATEGORIES",
    "DEFECT_TYPES",
    "DETECTION_PROMPT",
    "MIN_DEFECT_CONTRAST",
    "OWNED_ENTRIES",
    "SCALES",
    "Canvas",
    "Category",
    "Scale",
    "SyntheticDataset",
    "cli_main",
    "describe_location",
    "generate_synthetic",
    "render_sample",
]
