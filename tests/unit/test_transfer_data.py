"""Issue 17's stage-1 data: the transfer profile of the generator, the installed ELPV package, and the
darkness baseline (against a hand-computed case and sklearn)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from image_files import png as _png  # same folder (on sys.path)
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomaly_ov.data.prepare import elpv
from anomaly_ov.data.synthetic import generate_synthetic
from anomaly_ov.data.synthetic.transfer import (
    HELDOUT_DEFECT_TYPES,
    MIN_VISIBLE_CONTRAST,
    MIN_VISIBLE_PIXELS,
    TRAIN_DEFECT_TYPES,
    TRANSFER_CATEGORIES,
    TRANSFER_DEFECT_TYPES,
    render_transfer_sample,
)
from anomaly_ov.data.zsad import sample
from anomaly_ov.eval.baselines import baseline_aurocs, darkness_of_file, darkness_score

# ---------------------------------------------------------------------------------------- transfer profile


def test_defect_types_split_into_training_and_heldout_types():
    assert set(TRAIN_DEFECT_TYPES) | set(HELDOUT_DEFECT_TYPES) == set(TRANSFER_DEFECT_TYPES)
    assert not set(TRAIN_DEFECT_TYPES) & set(HELDOUT_DEFECT_TYPES)
    assert len(TRANSFER_DEFECT_TYPES) == 10 and len(HELDOUT_DEFECT_TYPES) >= 3
    train = [c for c in TRANSFER_CATEGORIES if not c.heldout]
    heldout = [c for c in TRANSFER_CATEGORIES if c.heldout]
    assert len(train) >= 10 and len(heldout) >= 3
    # no training image shows a held-out defect type; the held-out classes show every type
    assert all(set(c.defects) == set(TRAIN_DEFECT_TYPES) for c in train)
    assert all(set(c.defects) == set(TRANSFER_DEFECT_TYPES) for c in heldout)


@pytest.mark.parametrize("size", [64, 224])
def test_transfer_masks_are_exactly_the_changed_pixels_and_visible(size):
    for category in TRANSFER_CATEGORIES:
        defects = category.defects if size == 64 else category.defects[:2]
        for defect in defects:
            clean, image, mask = render_transfer_sample(5, category.name, "test", defect, 2, size)
            assert clean.shape == image.shape == (size, size, 3) and mask.shape == (size, size)
            changed = (clean != image).any(axis=-1)
            np.testing.assert_array_equal(changed, mask == 255, err_msg=f"{category.name}/{defect}")
            contrast = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1)
            assert (contrast >= MIN_VISIBLE_CONTRAST).sum() >= MIN_VISIBLE_PIXELS, (category.name, defect)


def test_transfer_profile_has_grey_and_colour_images_and_faint_defects():
    greys, contrasts = [], []
    for category in TRANSFER_CATEGORIES:
        for index in range(4):
            clean, image, mask = render_transfer_sample(
                0, category.name, "test", category.defects[index], 0, 64
            )
            greys.append(
                bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
            )
            changed = mask == 255
            contrasts.append(np.abs(image.astype(int) - clean.astype(int)).max(axis=-1)[changed].mean())
    assert 0 < sum(greys) < len(greys)
    assert min(contrasts) < 20 < max(contrasts)  # from faint to strong


def test_transfer_normal_samples_are_untouched_and_the_profile_is_deterministic():
    for category in TRANSFER_CATEGORIES:
        clean, image, mask = render_transfer_sample(0, category.name, "train", None, 0, 64)
        np.testing.assert_array_equal(clean, image)
        assert not mask.any()
        again = render_transfer_sample(0, category.name, "train", None, 0, 64)[1]
        np.testing.assert_array_equal(image, again)
    with pytest.raises(ValueError, match="has defects"):
        render_transfer_sample(0, "brick", "test", "scratch", 0, 64)  # a held-out type on a training class


def test_transfer_scale_writes_the_layout_with_the_defect_type_split(tmp_path):
    dataset = generate_synthetic(tmp_path / "a", seed=0, scale="transfer_small")
    meta = json.loads(dataset.meta_json.read_text())
    assert meta["profile"] == "transfer"
    assert meta["train_defect_types"] == list(TRAIN_DEFECT_TYPES)
    assert meta["heldout_defect_types"] == list(HELDOUT_DEFECT_TYPES)
    assert set(dataset.heldout_categories) == {c.name for c in TRANSFER_CATEGORIES if c.heldout}
    instruct = json.loads(dataset.instruct_json.read_text())
    assert {r["class"] for r in instruct} == set(dataset.train_categories)
    assert {r["defect"] for r in instruct if r["defect"]} <= set(TRAIN_DEFECT_TYPES)
    detection = json.loads(dataset.test_data_json.read_text())
    heldout_defects = {Path(r["image"]).parent.name for r in detection if r["anomaly"]}
    assert set(HELDOUT_DEFECT_TYPES) <= heldout_defects
    for path in sorted(dataset.mvtec_root.glob("*/test/*/*.png"))[:40]:
        if path.parent.name == "good":
            continue
        mask = np.asarray(
            Image.open(path.parents[2] / "ground_truth" / path.parent.name / f"{path.stem}_mask.png")
        )
        _, image, expected = render_transfer_sample(
            0, path.parts[-4], "test", path.parent.name, int(path.stem), 64
        )
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
        np.testing.assert_array_equal(mask, expected)
    again = generate_synthetic(tmp_path / "b", seed=0, scale="transfer_small")
    files = sorted(p.relative_to(dataset.root) for p in dataset.root.rglob("*") if p.is_file())
    assert files and all((dataset.root / f).read_bytes() == (again.root / f).read_bytes() for f in files)


# ----------------------------------------------------------------------------------- ELPV, installed package


def _fake_package(root: Path, lines: str, images: range) -> Path:
    data = root / "elpv_dataset" / "data"
    for index in images:
        _png(data / "images" / f"cell{index:04d}.png", mode="L")
    (data / "labels.csv").write_text(lines)
    (root / "elpv_dataset" / "__init__.py").write_text("")
    return data


LINES = (
    "images/cell0001.png  1.0  mono\n"
    "images/cell0002.png  0.0  poly\n"
    "images/cell0003.png  0.6666666666666666  mono\n"
)


def test_installed_elpv_is_found_without_import_and_read_by_the_field_rule(tmp_path, monkeypatch):
    data = _fake_package(tmp_path, LINES, range(1, 4))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert elpv.installed_elpv_root() == data
    samples = elpv.InstalledElpvSource().read()
    assert {s.image.name: s.label for s in samples} == {
        "cell0001.png": 1,
        "cell0002.png": 0,
        "cell0003.png": 0,
    }
    mono = elpv.InstalledElpvSource(cell_types=["mono"]).read()
    assert [s.image.name for s in mono] == ["cell0001.png", "cell0003.png"]
    assert elpv.cell_types(data) == {"cell0001.png": "mono", "cell0002.png": "poly", "cell0003.png": "mono"}
    with pytest.raises(ValueError, match="cell types"):
        elpv.InstalledElpvSource(cell_types=["amorphous"]).read()


def test_missing_or_incomplete_elpv_package_names_the_file_and_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setattr(elpv, "PACKAGE", "elpv_dataset_not_installed_anywhere")
    with pytest.raises(
        elpv.ElpvPackageError, match=r"not installed; run: pip install .*elpv-dataset==1\.0\.0"
    ):
        elpv.installed_elpv_root()
    monkeypatch.setattr(elpv, "PACKAGE", "elpv_dataset")
    _fake_package(tmp_path, LINES, range(1, 3))  # cell0003.png missing
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(elpv.ElpvPackageError, match=r"cell0003\.png is missing \(1 of the 3 .*pip install"):
        elpv.installed_elpv_root()
    (tmp_path / "elpv_dataset" / "data" / "labels.csv").unlink()
    with pytest.raises(elpv.ElpvPackageError, match=r"labels\.csv is missing"):
        elpv.installed_elpv_root()


# ------------------------------------------------------------------------------------------ darkness baseline


def test_darkness_score_by_hand():
    # mean grey (0 + 51 + 102 + 255) / 4 = 102 -> 1 - 102 / 255 = 0.6
    assert darkness_score(np.array([[0, 51], [102, 255]], np.uint8)) == pytest.approx(0.6)
    assert darkness_score(np.zeros((3, 3), np.uint8)) == 1.0
    assert darkness_score(np.full((2, 5), 255, np.uint8)) == 0.0
    with pytest.raises(ValueError, match="grey image"):
        darkness_score(np.zeros((2, 2, 3)))


def test_darkness_of_a_colour_file_uses_pil_luma(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.full((4, 4, 3), [200, 100, 50], np.uint8)).save(path)
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601-2, as PIL's convert("L") (rounded)
    assert darkness_of_file(path) == pytest.approx(1 - round(luma) / 255)


def test_baseline_aurocs_match_sklearn_per_group(tmp_path):
    rng = np.random.default_rng(0)
    samples, means = [], []
    for index in range(24):
        label = index % 3 == 0
        grey = int(rng.integers(60, 200)) - (40 if label else 0)
        path = tmp_path / f"{index:02d}.png"
        Image.fromarray(np.full((6, 6), grey, np.uint8)).save(path)
        samples.append(sample(path, label, "mono" if index < 12 else "poly"))
        means.append(grey)
    groups = {
        "all": lambda s: True,
        "mono": lambda s: s.class_name == "mono",
        "poly": lambda s: s.class_name == "poly",
    }
    result = baseline_aurocs(samples, groups)
    labels = np.array([s.label for s in samples])
    darkness = -np.array(means, float)
    assert result["all"]["image_auroc"] == pytest.approx(roc_auc_score(labels, darkness))
    assert result["mono"]["image_auroc"] == pytest.approx(roc_auc_score(labels[:12], darkness[:12]))
    assert result["poly"]["num_images"] == 12 and result["poly"]["num_anomalous"] == int(labels[12:].sum())
    with pytest.raises(ValueError, match="group 'none'"):
        baseline_aurocs(samples, {"none": lambda s: s.label == 1})


# ------------------------------------------------------------------------------------------ the random tower


def test_random_dinov2_tower_has_the_architecture_and_seeded_weights_of_no_checkpoint(tmp_path):
    import torch
    from transformers import Dinov2Config

    from anomaly_ov.models.builders import build_random_dinov2_tower

    folder = tmp_path / "dinov2"
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    config.save_pretrained(folder)  # config.json only: the builder must not need a weight file
    state = torch.random.get_rng_state()
    first = build_random_dinov2_tower(str(folder), level_layers=[1, 2, 3])
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is left as it was
    again = build_random_dinov2_tower(str(folder), level_layers=[1, 2, 3])
    other = build_random_dinov2_tower(str(folder), level_layers=[1, 2, 3], seed=1)
    weights = [dict(tower.backbone.named_parameters()) for tower in (first, again, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(
        weights[0]["encoder.layer.0.mlp.fc1.weight"], weights[2]["encoder.layer.0.mlp.fc1.weight"]
    )
    assert first.grid == 2 and first.hidden_size == 32 and not first.backbone.training
    assert not any(p.requires_grad for p in first.backbone.parameters())
    with pytest.raises(FileNotFoundError, match="make-real-zoo"):
        build_random_dinov2_tower(str(tmp_path / "absent"), [1], build_command="anomaly-ov make-real-zoo")


def test_prepare_elpv_installed_writes_the_manifest_or_names_the_pip_line(tmp_path, monkeypatch, capsys):
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.data.prepare.command import prepare_main

    _fake_package(tmp_path, LINES, range(1, 4))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    out = tmp_path / "out" / "manifest.jsonl"
    assert prepare_main("elpv", ["--installed", "--out", str(out)]) == 0
    assert sorted((s.image.name, s.label) for s in read_manifest(out)) == [
        ("cell0001.png", 1),
        ("cell0002.png", 0),
        ("cell0003.png", 0),
    ]
    assert [s.image.name for s in elpv.InstalledElpvSource(every=2).read()] == [
        "cell0001.png",
        "cell0003.png",
    ]
    (tmp_path / "elpv_dataset" / "data" / "images" / "cell0002.png").unlink()
    assert prepare_main("elpv", ["--installed", "--out", str(out)]) == 1
    assert "cell0002.png is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_main("elpv", ["--installed"])  # no --out: never a manifest inside the package


# ---------------------------------------------------------------------------------------- the report section


def _eval_folder(folder: Path, means: dict, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    datasets = {name: {"mean": {"image_auroc": value}} for name, value in means.items()}
    (folder / "metrics.json").write_text(json.dumps({"datasets": datasets}))
    (folder / "scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_report_shows_the_elpv_row_the_darkness_baseline_and_pretrained_vs_random(tmp_path):
    from anomaly_ov.report.real_parts import read_zero_shot_scores, real_zero_shot_section

    data = tmp_path / "elpv_dataset" / "data"
    rng = np.random.default_rng(1)
    lines, rows, greys = [], [], []
    for index in range(16):
        kind, label = ("mono" if index % 2 else "poly"), int(index % 4 == 0 or index == 5)
        grey = int(rng.integers(40, 220))
        path = data / "images" / f"cell{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((5, 5), grey, np.uint8)).save(path)
        lines.append(f"images/{path.name}  {float(label)}  {kind}\n")
        rows.append({"dataset": "elpv", "image": str(path), "class": "solar_cell", "label": label,
                     "score": float(rng.random()), "kind": kind})  # fmt: skip
        greys.append(grey)
    (data / "labels.csv").write_text("".join(lines))
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    mono = np.array([r["kind"] == "mono" for r in rows])
    pretrained = _eval_folder(
        tmp_path / "pre", {"synthetic_heldout": 0.9, "elpv": roc_auc_score(labels, scores)}, rows
    )
    quarter = rows[::4][:2] + rows[1::4][:2]  # a control on a subset of the cells, both labels present
    control = [dict(r, dataset="elpv_quarter", score=float(i)) for i, r in enumerate(quarter)]
    random_tower = _eval_folder(tmp_path / "rnd", {"synthetic_heldout": 0.55, "elpv_quarter": 0.5}, control)
    text = real_zero_shot_section(
        read_zero_shot_scores(pretrained), read_zero_shot_scores(random_tower), "synthetic_heldout", "Ours"
    )
    ours = [roc_auc_score(labels, scores), roc_auc_score(labels[mono], scores[mono])]
    ours.append(roc_auc_score(labels[~mono], scores[~mono]))
    assert f"| **Ours** | **{100 * ours[0]:.1f}** | {100 * ours[1]:.1f} | {100 * ours[2]:.1f} |" in text
    dark = -np.array(greys, float)
    expected = [roc_auc_score(labels, dark), roc_auc_score(labels[mono], dark[mono])]
    expected.append(roc_auc_score(labels[~mono], dark[~mono]))
    assert (
        "| darkness baseline (1 − mean grey / 255, no model) | "
        + " | ".join(f"{100 * v:.1f}" for v in expected)
        in text
    )
    assert (
        "| AnomalyCLIP (published) | 81.5 |" in text and "| Anomaly-OV (paper) (published) | 83.0 |" in text
    )
    same = [r for r in rows if r["image"] in {c["image"] for c in control}]
    pre_same = roc_auc_score([r["label"] for r in same], [r["score"] for r in same])
    assert f"| pretrained DINOv2-S | 90.0 | {100 * pre_same:.1f} |" in text
    assert "| random DINOv2-S (same architecture) | 55.0 | 50.0 |" in text
    assert f"{100 * (0.9 - 0.55):+.1f} points on the held-out classes" in text
