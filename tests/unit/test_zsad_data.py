"""Zero-shot AD datasets: published layouts, manifest, bad input, protocol (preparation: test_prepare_*)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from image_files import png as _png  # same folder (on sys.path)
from image_files import truncated as _truncated
from omegaconf import OmegaConf
from PIL import Image

from anomaly_ov.data.images import read_image as load_image
from anomaly_ov.data.manifest import ManifestSource, read_manifest, write_manifest
from anomaly_ov.data.zsad import (
    BadInputError,
    InstructionSource,
    MVTecSource,
    VisASource,
    ZeroShotError,
    check_sample,
    check_zero_shot,
    group_by_class,
    sample,
    screen_samples,
)

PROJECT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------- published layouts


def test_mvtec_layout_of_the_synthetic_data(synthetic_data):
    meta = json.loads(synthetic_data.meta_json.read_text())
    samples = MVTecSource(synthetic_data.mvtec_root, split="test").read()
    groups = group_by_class(samples)
    assert sorted(groups) == sorted(meta["categories"])
    for name, items in groups.items():
        counts = meta["counts"][name]
        assert sum(item.label for item in items) == counts["test_anomalous"]
        assert sum(1 - item.label for item in items) == counts["test_good"]
        for item in items:
            assert (item.mask is not None) == bool(item.label)
            if item.mask is not None:
                assert item.mask.name == f"{item.image.stem}_mask.png" and item.mask.is_file()
                assert item.mask.parent.name == item.image.parent.name  # same defect type
    train = MVTecSource(synthetic_data.mvtec_root, split="train", classes=["pill"]).read()
    assert len(train) == meta["counts"]["pill"]["train_good"] and not any(item.label for item in train)


def test_unexpected_layouts_name_the_folder_and_the_layout_expected(tmp_path):
    _png(tmp_path / "bottle" / "images" / "000.png")  # no test/ split folder
    with pytest.raises(FileNotFoundError, match=r"bottle/test is not a directory; expected MVTec AD's"):
        MVTecSource(tmp_path).read()
    with pytest.raises(FileNotFoundError, match=r"split_csv/1cls\.csv; expected VisA's layout"):
        VisASource(tmp_path).read()


def test_mvtec_anomalous_image_without_mask_is_an_error(tmp_path):
    _png(tmp_path / "bottle" / "test" / "good" / "000.png")
    _png(tmp_path / "bottle" / "test" / "broken" / "000.png")
    with pytest.raises(BadInputError, match=r"broken/000\.png.*without its mask"):
        MVTecSource(tmp_path).read()


def _visa(root: Path) -> None:
    rows = [
        ("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
        ("candle", "test", "normal", "candle/Data/Images/Normal/0001.JPG", ""),
        (
            "candle",
            "test",
            "anomaly",
            "candle/Data/Images/Anomaly/0000.JPG",
            "candle/Data/Masks/Anomaly/0000.png",
        ),
        ("pcb1", "test", "anomaly", "pcb1/Data/Images/Anomaly/0000.JPG", "pcb1/Data/Masks/Anomaly/0000.png"),
        ("pcb1", "test", "normal", "pcb1/Data/Images/Normal/0003.JPG", ""),
    ]
    for _, _, _, image, mask in rows:
        _png(root / image)
        if mask:
            _png(root / mask, value=1, mode="L")  # VisA masks are 0 / instance ids
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)


def test_visa_layout_through_its_split_file(tmp_path):
    _visa(tmp_path)
    test = VisASource(tmp_path).read()
    assert [(s.class_name, s.label, s.mask is not None) for s in test] == [
        ("candle", 0, False),
        ("candle", 1, True),
        ("pcb1", 1, True),
        ("pcb1", 0, False),
    ]
    assert len(VisASource(tmp_path, split="all").read()) == 5
    assert [s.class_name for s in VisASource(tmp_path, classes=["pcb1"]).read()] == ["pcb1", "pcb1"]
    assert all(check_sample(s, decode=True) is None for s in test)


def test_visa_wrong_split_file_names_the_file(tmp_path):
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,label,image\ncandle,normal,a.JPG\n")
    with pytest.raises(ValueError, match=r"1cls\.csv: expected the columns"):
        VisASource(tmp_path).read()


# ------------------------------------------------------------------------------------ instruction data


def test_instruction_samples_are_the_labelled_records(synthetic_data, tmp_path):
    records = json.loads(synthetic_data.instruct_json.read_text())
    samples = InstructionSource(synthetic_data.instruct_json, synthetic_data.root).read()
    assert len(samples) == len(records)
    assert [s.label for s in samples] == [int(r["anomaly"]) for r in records]
    assert {s.class_name for s in samples} == set(synthetic_data.train_categories)
    assert all(s.image.is_file() for s in samples)

    # Unlabelled records are not stage-1 samples; the class falls back to the second path component;
    # a list of images is one multi-view sample.
    mixed = [
        {"id": "a", "image": "VisA/candle/x.png", "anomaly": True, "conversations": []},
        {"id": "b", "image": "general/y.png", "conversations": []},
        {"id": "c", "image": ["3d/cup/v0.png", "3d/cup/v1.png"], "anomaly": False, "conversations": []},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(mixed))
    read = InstructionSource(path, tmp_path).read()
    assert [(s.class_name, s.label, len(s.images)) for s in read] == [("candle", 1, 1), ("cup", 0, 2)]
    path.write_text(json.dumps([{"id": "d", "image": "VisA/candle/x.png", "anomaly": "yes"}]))
    with pytest.raises(ValueError, match=r"record 0 \(id 'd'\).*true or false"):
        InstructionSource(path, tmp_path).read()


# -------------------------------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_schema(tmp_path):
    root = tmp_path / "data"
    items = [
        sample(_png(root / "a" / "0.png"), 0, "a"),
        sample(_png(root / "a" / "1.png"), 1, "a", _png(root / "a" / "1_mask.png", mode="L", value=255)),
        sample(_png(root / "b" / "0.png"), 1, "b"),
    ]
    path = write_manifest(items, root / "manifest.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1] == {"image": "a/1.png", "label": 1, "mask": "a/1_mask.png", "class": "a"}
    assert read_manifest(path) == items
    assert ManifestSource(path, classes=["b"]).read() == items[2:]

    path.write_text('{"image": "a/0.png", "label": 2, "mask": null, "class": "a"}\n')
    with pytest.raises(ValueError, match=r"manifest\.jsonl line 1: label must be 0 or 1"):
        read_manifest(path)
    path.write_text('{"image": "a/0.png", "label": 0, "mask": null, "klass": "a"}\n')
    with pytest.raises(ValueError, match=r"manifest\.jsonl: does not match the expected columns"):
        read_manifest(path)


# ------------------------------------------------------------------------------------------- bad input


def test_bad_images_and_masks_are_named(tmp_path):
    good = _png(tmp_path / "good.png")
    truncated = _truncated(tmp_path / "truncated.png")
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("hello")
    wrong_mask = _png(tmp_path / "wrong_mask.png", size=(8, 8), mode="L")

    with pytest.raises(BadInputError, match=r"missing\.png: image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(BadInputError, match=r"truncated\.png: unreadable or truncated"):
        load_image(truncated)
    with pytest.raises(BadInputError, match=r"text\.png: not a readable image"):
        load_image(not_an_image)
    with pytest.raises(
        BadInputError, match=r"wrong_mask\.png: mask size \(8, 8\) differs from its image size"
    ):
        check_sample(sample(good, 1, "x", wrong_mask))

    samples = [
        sample(good, 0, "x"),
        sample(truncated, 0, "x"),
        sample(good, 1, "x", wrong_mask),
        sample(tmp_path / "missing.png", 1, "x"),
    ]
    with pytest.raises(BadInputError, match="truncated"):
        screen_samples(samples, skip_bad=False, decode=True)
    kept, skipped = screen_samples(samples, skip_bad=True, decode=True)
    assert kept == samples[:1]
    assert [Path(s.path).name for s in skipped] == ["truncated.png", "wrong_mask.png", "missing.png"]
    # Header-only screening cannot see the truncation; decoding can.
    kept, _ = screen_samples(samples, skip_bad=True, decode=False)
    assert kept == samples[:2]


# -------------------------------------------------------------------------------------------- protocol


def test_zero_shot_protocol_refuses_seen_datasets(synthetic_data):
    train = {
        "synthetic_instruct": InstructionSource(
            synthetic_data.instruct_json, synthetic_data.root, contains=["seen"]
        )
    }
    assert check_zero_shot(train, ["heldout"], allow_seen=False) == []
    with pytest.raises(ZeroShotError, match=r"'seen' \(in training source 'synthetic_instruct'\)"):
        check_zero_shot(train, ["heldout", "seen"], allow_seen=False)
    with pytest.raises(ZeroShotError, match="synthetic_instruct"):
        check_zero_shot(train, ["synthetic_instruct"], allow_seen=False)
    assert check_zero_shot(train, ["heldout", "seen"], allow_seen=True) == ["seen"]


def test_synthetic_data_config_matches_the_generator(synthetic_data):
    config = OmegaConf.load(PROJECT / "configs" / "data" / "synthetic.yaml")
    assert sorted(config.sources.synthetic_heldout.classes) == sorted(synthetic_data.heldout_categories)
    assert sorted(config.sources.synthetic_seen.classes) == sorted(synthetic_data.train_categories)


def test_sixteen_bit_images_keep_their_range(tmp_path):

    # A 16-bit grayscale ramp (e.g. CT/MRI): scaled to 8 bits, not clipped white above 255.
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(values).save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (16, 16, 3)
    np.testing.assert_array_equal(loaded[..., 0], np.round(values / 257.0).astype(np.uint8))
    assert loaded.max() == 255 and loaded.min() == 0 and (loaded[..., 0] < 128).mean() > 0.4
