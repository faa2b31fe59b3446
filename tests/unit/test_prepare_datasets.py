"""Dataset preparation (anomaly_ov.data.prepare): fake published layouts in tmp_path -> manifests.

The field's conversions (SPEC §5): ELPV anomalous at probability 1.0, AITEX as 256x256 patches with their
masks cut alike, both AITEX download layouts, and unexpected layouts named in the error.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_files import png as _png  # same folder (on sys.path)
from image_files import truncated as _truncated
from PIL import Image

from anomaly_ov.data.manifest import read_manifest
from anomaly_ov.data.prepare.aitex import patch_boxes, read_aitex
from anomaly_ov.data.prepare.command import prepare_main
from anomaly_ov.data.prepare.elpv import elpv_label, read_elpv
from anomaly_ov.data.prepare.layouts import LayoutError

PROJECT = Path(__file__).resolve().parents[2]


def _prepared(dataset: str, root: Path, capsys, *options: str) -> list:
    assert prepare_main(dataset, ["--root", str(root), *options]) == 0, capsys.readouterr().err
    assert "manifest.jsonl" in capsys.readouterr().out
    return read_manifest(root / "manifest.jsonl")


def _names(samples: list) -> list[tuple[str, int, bool]]:
    return sorted((s.image.name, s.label, s.mask is not None) for s in samples)


# ------------------------------------------------------------------------------------------------- ELPV

ELPV_LINES = (
    "images/cell0001.png  1.0  mono\n"
    "images/cell0002.png  0.0  poly\n"
    "images/cell0003.png  0.3333333333333333  mono\n"
    "images/cell0004.png  0.6666666666666666  poly\n"
)


def _elpv(root: Path) -> Path:
    for index in range(1, 5):
        _png(root / "images" / f"cell000{index}.png", mode="L")
    (root / "labels.csv").write_text(ELPV_LINES)
    return root


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("certain", {"cell0001.png": 1, "cell0002.png": 0, "cell0003.png": 0, "cell0004.png": 0}),
        ("any", {"cell0001.png": 1, "cell0002.png": 0, "cell0003.png": 1, "cell0004.png": 1}),
        ("certain_only", {"cell0001.png": 1, "cell0002.png": 0}),
    ],
)
def test_elpv_label_rules(rule, expected, tmp_path, capsys):
    _elpv(tmp_path)
    options = () if rule == "certain" else ("--label-rule", rule)
    samples = _prepared("elpv", tmp_path, capsys, *options)
    assert {s.image.name: s.label for s in samples} == expected
    assert {s.class_name for s in samples} == {"solar_cell"}


def test_elpv_default_is_the_field_conversion(tmp_path):
    # the default rule is InCTRL's: only probability 1.0 is anomalous
    samples = read_elpv(_elpv(tmp_path))
    assert sum(s.label for s in samples) == 1 and len(samples) == 4
    assert elpv_label(1.0, "certain") == 1 and elpv_label(2 / 3, "certain") == 0


def test_elpv_bad_lines_and_rules_are_named(tmp_path):
    (tmp_path / "labels.csv").write_text("images/cell0001.png  1.5  mono\n")
    with pytest.raises(ValueError, match=r"labels\.csv line 1: .*outside \[0, 1\]"):
        read_elpv(tmp_path)
    with pytest.raises(ValueError, match="label rule 'maybe'"):
        elpv_label(0.5, "maybe")
    with pytest.raises(LayoutError, match=r"labels\.csv"):
        read_elpv(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ AITEX


def _strip(path: Path, width: int = 4096, height: int = 256) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a horizontal ramp makes every patch different, so placement can be checked
    ramp = np.tile((np.arange(width) % 251).astype(np.uint8), (height, 1))
    Image.fromarray(ramp, mode="L").save(path)
    return path


def _mask(path: Path, boxes: list[tuple[int, int, int, int]], width: int = 4096, height: int = 256) -> Path:
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def _aitex(root: Path, nested: bool) -> Path:
    defects = root / "Defect_images" / ("Defect_images" if nested else "")
    _strip(root / "NODefect_images" / "2311694-2040n7u" / "0000_000_05.png")
    _strip(defects / "0001_002_00.png")
    _strip(defects / "0044_019_04.png")
    # one defect inside patch 3; one strip with two masks: patch 0 and across the border x = 2560 of
    # patches 9 and 10
    _mask(root / "Mask_images" / "0001_002_00_mask.png", [(800, 100, 820, 120)])
    _mask(root / "Mask_images" / "0044_019_04_mask1.png", [(10, 10, 20, 20)])
    _mask(root / "Mask_images" / "0044_019_04_mask2.png", [(2550, 0, 2570, 5)])
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_aitex_patches_with_masks_cut_alike(nested, tmp_path, capsys):
    samples = _prepared("aitex", _aitex(tmp_path, nested), capsys)
    assert len(samples) == 3 * 16
    anomalous = {s.image.stem: s for s in samples if s.label == 1}
    assert sorted(anomalous) == ["0001_002_00_p03", "0044_019_04_p00", "0044_019_04_p09", "0044_019_04_p10"]
    assert all(s.mask is None for s in samples if s.label == 0)
    patch = anomalous["0001_002_00_p03"]
    image = np.asarray(Image.open(patch.image))
    mask = np.asarray(Image.open(patch.mask)) > 0
    assert image.shape == mask.shape == (256, 256)
    # patch 3 starts at x = 768: the ramp's value there, and the defect at x 800..820, y 100..120
    assert image[0, 0] == 768 % 251
    assert mask.sum() == 400 and mask[100:120, 32:52].all()
    # the two masks of one strip are merged, the border defect split between two patches
    assert np.asarray(Image.open(anomalous["0044_019_04_p09"].mask)).astype(bool).sum() == 10 * 5
    assert np.asarray(Image.open(anomalous["0044_019_04_p10"].mask)).astype(bool).sum() == 10 * 5


def test_aitex_whole_strips_option(tmp_path, capsys):
    samples = _prepared("aitex", _aitex(tmp_path, nested=False), capsys, "--whole-strips")
    assert _names(samples) == [
        ("0000_000_05.png", 0, False),
        ("0001_002_00.png", 1, True),
        ("0044_019_04.png", 1, True),
    ]
    merged = next(s.mask for s in samples if s.image.stem == "0044_019_04")
    assert (np.asarray(Image.open(merged)) > 0).sum() == 100 + 100


def test_aitex_without_defect_images_is_an_error(tmp_path, capsys):
    _strip(tmp_path / "NODefect_images" / "fabric" / "0000_000_05.png")
    (tmp_path / "Defect_images").mkdir()
    (tmp_path / "Mask_images").mkdir()
    with pytest.raises(LayoutError, match=r"Defect_images.*no defect image found"):
        read_aitex(tmp_path)
    assert prepare_main("aitex", ["--root", str(tmp_path)]) == 1
    assert "no defect image found" in capsys.readouterr().err
    assert not (tmp_path / "manifest.jsonl").exists()


def test_aitex_unexpected_layout_names_folder_and_layout(tmp_path):
    _strip(tmp_path / "images" / "0001_002_00.png")
    with pytest.raises(LayoutError, match=r"unexpected dataset layout \(no folder Defect_images/.*expected"):
        read_aitex(tmp_path)


def test_patch_boxes_drop_the_remainder():
    strip = patch_boxes((4096, 256), 256)
    assert strip[:2] == [(0, 0), (256, 0)] and len(strip) == 16
    assert patch_boxes((600, 520), 256) == [(0, 0), (256, 0), (0, 256), (256, 256)]


# ------------------------------------------------------------------------------------ the other layouts


def test_prepare_btad(tmp_path, capsys):
    for product, suffix in (("01", ".bmp"), ("02", ".png")):
        _png(tmp_path / product / "train" / "ok" / f"0000{suffix}")
        _png(tmp_path / product / "test" / "ok" / f"0001{suffix}")
        _png(tmp_path / product / "test" / "ko" / f"0002{suffix}")
        _png(tmp_path / product / "ground_truth" / "ko" / f"0002{suffix}", mode="L", value=255)
    samples = _prepared("btad", tmp_path, capsys)
    assert _names(samples) == sorted(
        [("0001.bmp", 0, False), ("0002.bmp", 1, True), ("0001.png", 0, False), ("0002.png", 1, True)]
    )
    assert {s.class_name for s in samples} == {"01", "02"}


def test_prepare_btad_unexpected_layout(tmp_path, capsys):
    _png(tmp_path / "01" / "images" / "0000.bmp")
    assert prepare_main("btad", ["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "expected" in err and "test/{ok,ko}" in err


def test_prepare_mpdd(tmp_path, capsys):
    _png(tmp_path / "tubes" / "train" / "good" / "000.png")
    _png(tmp_path / "tubes" / "test" / "good" / "001.png")
    _png(tmp_path / "tubes" / "test" / "anomalous" / "002.png")
    _png(tmp_path / "tubes" / "ground_truth" / "anomalous" / "002_mask.png", mode="L", value=255)
    assert _names(_prepared("mpdd", tmp_path, capsys)) == [("001.png", 0, False), ("002.png", 1, True)]


@pytest.mark.parametrize(("dataset", "nested"), [("brainmri", "brain_tumor_dataset"), ("br35h", "")])
def test_prepare_yes_no_folders(dataset, nested, tmp_path, capsys):
    base = tmp_path / nested
    _png(base / "yes" / "y0.jpg")
    _png(base / "no" / "no0.jpg")
    _png(base / "no" / "no1.jpg")
    _png(base / "pred" / "p0.jpg")  # Br35H's unlabelled folder is not read
    assert _names(_prepared(dataset, tmp_path, capsys)) == [
        ("no0.jpg", 0, False),
        ("no1.jpg", 0, False),
        ("y0.jpg", 1, False),
    ]


def test_prepare_label_folders_missing(tmp_path, capsys):
    _png(tmp_path / "tumour" / "y0.jpg")
    assert prepare_main("br35h", ["--root", str(tmp_path)]) == 1
    assert "no folder no/" in capsys.readouterr().err


def test_prepare_headct(tmp_path, capsys):
    for index in range(3):
        _png(tmp_path / "head_ct" / "head_ct" / f"{index:03d}.png", mode="L")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n2,1\n")
    assert _names(_prepared("headct", tmp_path, capsys)) == [
        ("000.png", 1, False),
        ("001.png", 0, False),
        ("002.png", 1, False),
    ]


def test_prepare_reports_a_truncated_image(tmp_path, capsys):
    _png(tmp_path / "yes" / "y0.jpg")
    _png(tmp_path / "no" / "no0.jpg")
    _truncated(tmp_path / "no" / "no1.jpg")
    assert prepare_main("br35h", ["--root", str(tmp_path)]) == 1
    assert "no1.jpg" in capsys.readouterr().err
    assert prepare_main("br35h", ["--root", str(tmp_path), "--skip-bad"]) == 0
    skipped = json.loads((tmp_path / "manifest.skipped.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == ["no1.jpg"]
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 2


def test_scripts_are_thin_entrypoints(tmp_path):
    """The script only calls the package (run as a user runs it, in its own process)."""
    _elpv(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "scripts" / "prepare_elpv.py"),
            "--root",
            str(tmp_path),
            "--label-rule",
            "any",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3 anomalous, 1 normal" in done.stdout
