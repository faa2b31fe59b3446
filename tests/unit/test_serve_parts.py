"""The web app's parts without a server: the colour bar, the upload checks, the example gallery."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from anomaly_ov.app.examples import elpv_examples, synthetic_examples
from anomaly_ov.app.uploads import UploadError, UploadLimits, read_upload
from anomaly_ov.inference.heatmap import with_colour_bar


def test_the_colour_bar_runs_from_the_colormaps_1_at_the_top_to_0_at_the_bottom():
    image = Image.new("RGB", (120, 200), "grey")
    drawn = np.asarray(with_colour_bar(image, "viridis"))
    assert drawn.shape[0] == 200 and drawn.shape[1] > 120
    assert (drawn[:, :120] == 128).all()  # the image itself is untouched
    bar = drawn[:, 120:]
    cmap = matplotlib.colormaps["viridis"]
    top, bottom = (np.round(np.array(cmap(v)[:3]) * 255).astype(int) for v in (1.0, 0.0))
    colours = {tuple(int(c) for c in pixel) for pixel in bar.reshape(-1, 3)}
    assert tuple(top) in colours and tuple(bottom) in colours
    rows = [row for row in range(200) if tuple(bar[row].reshape(-1, 3)[bar.shape[1] // 8]) == tuple(top)]
    rows_bottom = [
        row for row in range(200) if tuple(bar[row].reshape(-1, 3)[bar.shape[1] // 8]) == tuple(bottom)
    ]
    assert rows and rows_bottom and max(rows) < min(rows_bottom)


def test_uploads_are_checked_in_bytes_and_pixels_before_decoding(tmp_path):
    path = tmp_path / "part.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(path)
    upload = read_upload(path, "part.png", UploadLimits(), max_side=1024)
    assert upload.image.size == (300, 200) and upload.note == ""
    with pytest.raises(UploadError, match=r"part.png: the file has .* MB, more than the limit of 0.0 MB"):
        read_upload(path, "part.png", UploadLimits(max_bytes=10), max_side=1024)
    with pytest.raises(UploadError, match=r"300x200 = 0.1 megapixels, more than the limit of 0.0 megapixels"):
        read_upload(path, "part.png", UploadLimits(max_pixels=1000), max_side=1024)
    resized = read_upload(path, "part.png", UploadLimits(), max_side=150)
    assert (
        resized.image.size == (150, 100) and resized.note == "resized from 300x200 to 150x100 (long side 150)"
    )


def test_the_gallery_takes_held_out_classes_and_both_elpv_labels(tmp_path):
    assert synthetic_examples(tmp_path / "absent") == [] and elpv_examples(None) == []
    root = tmp_path / "elpv"
    (root / "images").mkdir(parents=True)
    lines = []
    for index, probability in enumerate([1.0, 0.0, 0.3333333333333333, 1.0, 0.0]):
        Image.new("L", (30, 30), index * 40).save(root / "images" / f"cell{index:04d}.png")
        lines.append(f"images/cell{index:04d}.png  {probability}  mono")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    examples = elpv_examples(root, per_label=2)
    assert [(e.path.name, e.caption) for e in examples] == [
        ("cell0000.png", "ELPV solar cell / defective"),
        ("cell0003.png", "ELPV solar cell / defective"),
        ("cell0001.png", "ELPV solar cell / normal"),
        ("cell0004.png", "ELPV solar cell / normal"),
    ]
