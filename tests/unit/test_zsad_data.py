"""Zero-shot AD datasets: published layouts, the manifest, the preparation scripts, bad input, protocol."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
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


def _png(path: Path, size: tuple[int, int] = (16, 12), value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)
    return path


def _truncated(path: Path) -> Path:
    """A noise PNG cut in the middle of its pixel data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# --------------------------------------------------------------------------------- preparation scripts


def _check_prepared(script: str, root: Path, expected: list[tuple[str, int, bool]], capsys) -> list:
    module = _script(script)
    reader = next(getattr(module, name) for name in dir(module) if name.startswith("read_"))
    dataset = script.removeprefix("prepare_")
    assert module.prepare_cli(dataset, reader, ["--root", str(root)]) == 0
    assert "manifest.jsonl" in capsys.readouterr().out
    samples = read_manifest(root / "manifest.jsonl")
    assert sorted((s.image.name, s.label, s.mask is not None) for s in samples) == sorted(expected)
    return samples


def test_prepare_btad(tmp_path, capsys):
    for product, suffix in (("01", ".bmp"), ("02", ".png")):
        _png(tmp_path / product / "train" / "ok" / f"0000{suffix}")
        _png(tmp_path / product / "test" / "ok" / f"0001{suffix}")
        _png(tmp_path / product / "test" / "ko" / f"0002{suffix}")
        _png(tmp_path / product / "ground_truth" / "ko" / f"0002{suffix}", mode="L", value=255)
    samples = _check_prepared(
        "prepare_btad",
        tmp_path,
        [("0001.bmp", 0, False), ("0002.bmp", 1, True), ("0001.png", 0, False), ("0002.png", 1, True)],
        capsys,
    )
    assert {s.class_name for s in samples} == {"01", "02"}


def test_prepare_mpdd(tmp_path, capsys):
    _png(tmp_path / "tubes" / "train" / "good" / "000.png")
    _png(tmp_path / "tubes" / "test" / "good" / "001.png")
    _png(tmp_path / "tubes" / "test" / "anomalous" / "002.png")
    _png(tmp_path / "tubes" / "ground_truth" / "anomalous" / "002_mask.png", mode="L", value=255)
    _check_prepared("prepare_mpdd", tmp_path, [("001.png", 0, False), ("002.png", 1, True)], capsys)


def test_prepare_aitex_merges_multiple_masks(tmp_path, capsys):
    size = (32, 8)
    _png(tmp_path / "NODefect_images" / "2311694-2040n7u" / "0000_000_05.png", size=size)
    _png(tmp_path / "Defect_images" / "0001_002_00.png", size=size)
    _png(tmp_path / "Defect_images" / "0044_019_04.png", size=size)
    _png(tmp_path / "Mask_images" / "0001_002_00_mask.png", size=size, mode="L", value=255)
    for index, column in ((1, 2), (2, 20)):
        mask = np.zeros((8, 32), np.uint8)
        mask[:, column] = 255
        Image.fromarray(mask).save(tmp_path / "Mask_images" / f"0044_019_04_mask{index}.png")
    samples = _check_prepared(
        "prepare_aitex",
        tmp_path,
        [("0000_000_05.png", 0, False), ("0001_002_00.png", 1, True), ("0044_019_04.png", 1, True)],
        capsys,
    )
    merged = next(s.mask for s in samples if s.image.stem == "0044_019_04")
    union = np.asarray(Image.open(merged)) > 0
    assert union[:, 2].all() and union[:, 20].all() and union.sum() == 16


def test_prepare_elpv(tmp_path, capsys):
    for name in ("cell0001", "cell0002", "cell0003"):
        _png(tmp_path / "images" / f"{name}.png", mode="L")
    (tmp_path / "labels.csv").write_text(
        "images/cell0001.png  1.0  mono\n"
        "images/cell0002.png  0.0  poly\n"
        "images/cell0003.png  0.3333333333333333  mono\n"
    )
    _check_prepared(
        "prepare_elpv",
        tmp_path,
        [("cell0001.png", 1, False), ("cell0002.png", 0, False), ("cell0003.png", 1, False)],
        capsys,
    )


@pytest.mark.parametrize(
    ("script", "nested"), [("prepare_brainmri", "brain_tumor_dataset"), ("prepare_br35h", "")]
)
def test_prepare_yes_no_folders(script, nested, tmp_path, capsys):
    base = tmp_path / nested
    _png(base / "yes" / "y0.jpg")
    _png(base / "no" / "no0.jpg")
    _png(base / "no" / "no1.jpg")
    _check_prepared(
        script, tmp_path, [("y0.jpg", 1, False), ("no0.jpg", 0, False), ("no1.jpg", 0, False)], capsys
    )


def test_prepare_headct(tmp_path, capsys):
    for index in range(3):
        _png(tmp_path / "head_ct" / "head_ct" / f"{index:03d}.png", mode="L")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n2,1\n")
    _check_prepared(
        "prepare_headct",
        tmp_path,
        [("000.png", 1, False), ("001.png", 0, False), ("002.png", 1, False)],
        capsys,
    )


def test_prepare_reports_a_truncated_image(tmp_path, capsys):
    _png(tmp_path / "yes" / "y0.jpg")
    _png(tmp_path / "no" / "no0.jpg")
    _truncated(tmp_path / "no" / "no1.jpg")
    module = _script("prepare_br35h")
    assert module.prepare_cli("Br35H", module.read_br35h, ["--root", str(tmp_path)]) == 1
    assert "no1.jpg" in capsys.readouterr().err
    assert module.prepare_cli("Br35H", module.read_br35h, ["--root", str(tmp_path), "--skip-bad"]) == 0
    skipped = json.loads((tmp_path / "manifest.skipped.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == ["no1.jpg"]
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 2


def test_sixteen_bit_images_keep_their_range(tmp_path):
    from PIL import Image

    # A 16-bit grayscale ramp (e.g. CT/MRI): scaled to 8 bits, not clipped white above 255.
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(values).save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (16, 16, 3)
    np.testing.assert_array_equal(loaded[..., 0], np.round(values / 257.0).astype(np.uint8))
    assert loaded.max() == 255 and loaded.min() == 0 and (loaded[..., 0] < 128).mean() > 0.4
