"""The synthetic dataset: layout, exact masks, determinism, text formats, refusal and CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.data.synthetic import (
    CATEGORIES,
    DEFECT_TYPES,
    DETECTION_PROMPT,
    MIN_DEFECT_CONTRAST,
    OWNED_ENTRIES,
    SCALES,
    cli_main,
    describe_location,
    generate_synthetic,
)
from anomaly_ov.data.synthetic import render_sample as render


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> list | dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_layout_is_mvtec_with_binary_masks_for_anomalies_only(synthetic_data):
    meta = _load(synthetic_data.meta_json)
    plan = SCALES["small"]
    size = synthetic_data.image_size
    assert size == plan.image_size == meta["image_size"]
    assert sorted(p.name for p in synthetic_data.mvtec_root.iterdir()) == sorted(c.name for c in CATEGORIES)
    for category in CATEGORIES:
        root = synthetic_data.mvtec_root / category.name
        assert len(list((root / "train" / "good").glob("*.png"))) == plan.train_good
        assert len(list((root / "test" / "good").glob("*.png"))) == plan.test_good
        anomalous = [p for p in (root / "test").glob("*/*.png") if p.parent.name != "good"]
        assert len(anomalous) == plan.anomalous
        assert {p.parent.name for p in anomalous} <= set(category.defects)
        assert {p.name for p in (root / "ground_truth").iterdir()} == {p.parent.name for p in anomalous}
        masks = sorted((root / "ground_truth").glob("*/*_mask.png"))
        assert [(m.parent.name, m.name) for m in masks] == sorted(
            (p.parent.name, f"{p.stem}_mask.png") for p in anomalous
        )
        for image_path in root.rglob("*.png"):
            with Image.open(image_path) as image:
                assert image.size == (size, size), image_path
                assert image.mode == ("L" if image_path.name.endswith("_mask.png") else "RGB"), image_path
        for mask_path in masks:
            mask = np.asarray(Image.open(mask_path))
            assert set(np.unique(mask).tolist()) == {0, 255}, mask_path


def test_mask_is_exactly_the_set_of_changed_pixels():
    for size in (64, 128):
        for category in CATEGORIES:
            for defect in category.defects:
                clean, image, mask = render(3, category.name, "test", defect, 1, size)
                assert clean.shape == image.shape == (size, size, 3) and mask.shape == (size, size)
                changed = (clean != image).any(axis=-1)
                assert changed.sum() > 0, (category.name, defect)
                np.testing.assert_array_equal(changed, mask == 255, err_msg=f"{category.name}/{defect}")
                assert set(np.unique(mask).tolist()) == {0, 255}
                # every defect pixel is visibly changed, not just off by one grey level
                contrast = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1)
                assert contrast[changed].min() >= MIN_DEFECT_CONTRAST


def test_normal_samples_are_untouched_and_vary():
    for category in CATEGORIES:
        clean, image, mask = render(0, category.name, "train", None, 0, 64)
        np.testing.assert_array_equal(clean, image)
        assert not mask.any()
        other = render(0, category.name, "train", None, 1, 64)[1]
        assert np.abs(image.astype(int) - other.astype(int)).mean() > 1.0, category.name


def test_written_files_are_the_rendered_samples(synthetic_data):
    size = synthetic_data.image_size
    for path in sorted(synthetic_data.mvtec_root.glob("*/*/*/*.png")):
        category, split, folder = path.parts[-4:-1]
        if split == "ground_truth":
            continue
        defect = None if folder == "good" else folder
        _, image, mask = render(0, category, split, defect, int(path.stem), size)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image, err_msg=str(path))
        mask_path = path.parents[2] / "ground_truth" / folder / f"{path.stem}_mask.png"
        if defect is None:
            assert not mask.any() and not mask_path.exists()
        else:
            np.testing.assert_array_equal(np.asarray(Image.open(mask_path)), mask, err_msg=str(mask_path))


def test_same_seed_writes_identical_bytes_and_another_seed_differs(synthetic_data, tmp_path):
    reference = _files(synthetic_data.root)
    again = generate_synthetic(tmp_path / "again", seed=0, scale="small")
    assert _files(again.root) == reference
    other = _files(generate_synthetic(tmp_path / "other", seed=1, scale="small").root)
    assert other.keys() == reference.keys()
    images = [name for name in reference if name.endswith(".png") and "/good/" in name]
    assert all(other[name] != reference[name] for name in images)
    assert _load(tmp_path / "other" / "meta.json")["seed"] == 1


def test_worker_processes_write_the_same_bytes_as_one_process(synthetic_data, tmp_path, monkeypatch):
    # a large dataset (the demo's transfer profile) is rendered by one process per core: the same files
    from anomaly_ov.data.synthetic import write

    monkeypatch.setattr(write, "PARALLEL_MIN_IMAGES", 0)
    monkeypatch.setenv("ANOMALY_OV_SYNTHETIC_WORKERS", "2")
    spawned = []
    real_pool = write.ProcessPoolExecutor
    monkeypatch.setattr(write, "ProcessPoolExecutor", lambda *a, **k: spawned.append(a) or real_pool(*a, **k))
    parallel = generate_synthetic(tmp_path / "parallel", seed=0, scale="small")
    assert spawned == [(2,)]
    assert _files(parallel.root) == _files(synthetic_data.root)


def test_split_and_meta(synthetic_data):
    meta = _load(synthetic_data.meta_json)
    train, heldout = set(synthetic_data.train_categories), set(synthetic_data.heldout_categories)
    assert len(CATEGORIES) >= 8 and train and heldout and not train & heldout
    assert train | heldout == {c.name for c in CATEGORIES}
    assert meta["train_categories"] == list(synthetic_data.train_categories)
    assert meta["heldout_categories"] == list(synthetic_data.heldout_categories)
    assert meta["seed"] == 0 and meta["scale"] == "small"
    assert len(DEFECT_TYPES) >= 5 and meta["defect_types"] == list(DEFECT_TYPES)
    for names in (train, heldout):  # both sides of the split see every defect type
        assert {d for c in CATEGORIES if c.name in names for d in c.defects} == set(DEFECT_TYPES)
    for name, count in meta["counts"].items():
        assert count["test_anomalous"] == len(
            [
                p
                for p in (synthetic_data.mvtec_root / name / "test").glob("*/*.png")
                if p.parent.name != "good"
            ]
        )


def test_instruct_records_follow_the_documented_format(synthetic_data):
    records = _load(synthetic_data.instruct_json)
    assert isinstance(records, list) and records
    assert len({r["id"] for r in records}) == len(records)
    seen_splits, multi_turn = set(), 0
    for record in records:
        assert set(record) == {"id", "image", "conversations", "anomaly", "class", "defect"}, record["id"]
        parts = Path(record["image"]).parts
        assert parts[0] == "mvtec" and parts[1] == record["class"] in synthetic_data.train_categories
        assert (synthetic_data.root / record["image"]).is_file()
        seen_splits.add((parts[2], record["anomaly"]))
        assert record["anomaly"] == (record["defect"] is not None) == (parts[3] != "good")
        assert record["defect"] in (None, parts[3])
        turns = record["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert all(t["value"].strip() for t in turns)
        multi_turn += len(turns) > 2
        answers = " ".join(t["value"] for t in turns[1::2])
        if record["anomaly"]:
            assert record["defect"].replace("_", " ") in answers or answers == "Yes."
        else:
            assert answers.startswith(("No", "There is no defect", "Nowhere", "The image shows"))
    assert seen_splits == {("train", False), ("test", False), ("test", True)}
    assert 0 < multi_turn < len(records)


def test_instruct_locations_come_from_the_masks(synthetic_data):
    records = _load(synthetic_data.instruct_json)
    checked = 0
    for record in records:
        if not record["anomaly"]:
            continue
        image = Path(record["image"])
        mask_path = synthetic_data.root / image.parents[2] / "ground_truth" / image.parent.name
        mask = np.asarray(Image.open(mask_path / f"{image.stem}_mask.png"))
        answers = " ".join(t["value"] for t in record["conversations"][1::2])
        if "of the image" in answers:
            assert f"in the {describe_location(mask)} of the image" in answers, record["id"]
            checked += 1
    assert checked > 0


def test_describe_location_uses_the_mask_centroid():
    mask = np.zeros((90, 90), dtype=np.uint8)
    mask[5:20, 10:25] = 255
    assert describe_location(mask) == "upper-left part"
    mask[:] = 0
    mask[40:50, 40:50] = 255
    assert describe_location(mask) == "center"
    mask[:] = 0
    mask[85:90, 50:55] = 255
    assert describe_location(mask) == "lower-middle part"
    with pytest.raises(ValueError, match="non-empty"):
        describe_location(np.zeros((8, 8)))


def test_visa_dr_files_cover_heldout_classes(synthetic_data):
    root = synthetic_data.root
    heldout = set(synthetic_data.heldout_categories)
    detection = _load(synthetic_data.test_data_json)
    expected = {
        str(p.relative_to(root))
        for name in heldout
        for p in (synthetic_data.mvtec_root / name / "test").rglob("*.png")
    }
    assert {r["image"] for r in detection} == expected and len(detection) == len(expected)
    for record in detection:
        assert set(record) == {"image", "anomaly"}
        parts = Path(record["image"]).parts
        assert parts[1] in heldout and record["anomaly"] == (parts[3] != "good")
    reasoning = _load(synthetic_data.visa_dr_json)
    assert {r["image"] for r in reasoning} == {r["image"] for r in detection if r["anomaly"]}
    for record in reasoning:
        assert set(record) == {"image", "class", "defect", "questions", "answers"}
        assert (root / record["image"]).is_file() and Path(record["image"]).parts[1] == record["class"]
        assert len(record["questions"]) == len(record["answers"]) >= 3
        assert not any("<image>" in q for q in record["questions"])
        assert record["answers"][0].startswith("Yes")
        assert record["defect"].replace("_", " ") in record["answers"][1]
    assert _load(synthetic_data.meta_json)["visa_dr_prompt"] == DETECTION_PROMPT


def test_refuses_non_empty_directory_unless_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not empty.*overwrite=True"):
        generate_synthetic(out, scale="small")
    assert not (out / "mvtec").exists()
    (out / "mvtec" / "stale").mkdir(parents=True)
    dataset = generate_synthetic(out, scale="small", overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"  # only the generator's own entries are replaced
    assert not (out / "mvtec" / "stale").exists()
    assert {p.name for p in out.iterdir()} == {*OWNED_ENTRIES, "notes.txt"}
    assert dataset.instruct_json.is_file()
    with pytest.raises(NotADirectoryError):
        generate_synthetic(out / "notes.txt", scale="small")
    with pytest.raises(ValueError, match="scale"):
        generate_synthetic(tmp_path / "x", scale="huge")
    with pytest.raises(ValueError, match="seed"):
        generate_synthetic(tmp_path / "x", seed=-1, scale="small")


def test_render_sample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown category"):
        render(0, "banana", "test", None, 0, 64)
    with pytest.raises(ValueError, match="has defects"):
        render(0, "pill", "test", "hole", 0, 64)
    with pytest.raises(ValueError, match="split"):
        render(0, "pill", "train", "crack", 0, 64)


def test_cli_writes_and_refuses(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["--out", str(out), "--scale", "small", "--seed", "2"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"wrote synthetic dataset to {out}") and len(summary.splitlines()) == 1
    assert _load(out / "meta.json")["seed"] == 2
    assert cli_main(["--out", str(out), "--scale", "small"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    from anomaly_ov.cli import main

    assert main(["make-synthetic", "--out", str(out), "--scale", "small", "--overwrite"]) == 0
    assert _load(out / "meta.json")["seed"] == 0
