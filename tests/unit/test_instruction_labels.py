"""Stage-1 labels of records shaped like Anomaly-Instruct-125k's (anomaly_ov.data.instruction_labels)."""

import json
import logging

import pytest

from anomaly_ov.data.instruction_labels import FolderRule, answer_label, label_records
from anomaly_ov.data.zsad import InstructionSource

QUESTION = "<image>\nAre there any defects in the image? Please reply with 'Yes' or 'No'."


def _record(rid: str, image: str | list[str], answer: str, **extra: object) -> dict:
    return {
        "id": rid,
        "image": image,
        "conversations": [
            {"from": "human", "value": QUESTION},
            {"from": "gpt", "value": answer},
            {"from": "human", "value": "Describe it."},
            {"from": "gpt", "value": "No further comment."},
        ],
        **extra,
    }


# Records in the release's shape: MVTec AD (train/good, test/<defect>), BMAD (test/{good,Ungood}/img),
# WebAD (no telling folders; only the answer decides), a general instruction (nothing decides).
RELEASE_LIKE = [
    _record("m0", "mvtec/bottle/train/good/000.png", "No, the bottle looks fine."),
    _record("m1", "mvtec/bottle/test/broken_large/000.png", "Yes. There is a crack on the rim."),
    _record("m2", "mvtec/bottle/test/good/001.png", "No."),
    _record("b0", "bmad/brats/test/Ungood/img/00001.png", "Yes, a tumour is visible."),
    _record("b1", "bmad/brats/test/good/img/00002.png", "no anomaly"),
    _record("w0", "webad/apple/img_0001.jpg", "Yes, the apple has a bruise."),
    _record("w1", "webad/apple/img_0002.jpg", " No, it looks normal."),
    _record("g0", "llava/coco/000000001.jpg", "A cat sits on a mat."),
    _record("v0", ["3d/cup/good/v0.png", "3d/cup/good/v1.png"], "Yes?"),  # folder says normal first
]


def test_folder_rule_normal_names_and_their_defect_siblings():
    rule = FolderRule(RELEASE_LIKE)
    assert [rule(r) for r in RELEASE_LIKE] == [0, 1, 0, 1, 0, None, None, None, 0]
    # a folder named as anomalous anywhere, when configured
    assert FolderRule(RELEASE_LIKE, anomalous_folders=["apple"])(RELEASE_LIKE[5]) == 1


def test_answer_rule_reads_the_first_answer_only():
    assert [answer_label(r) for r in RELEASE_LIKE] == [0, 1, 0, 1, 0, 1, 0, None, 1]
    assert answer_label({"conversations": [{"from": "human", "value": "Yes"}]}) is None
    assert answer_label(_record("x", "a/b.png", "Nothing here, yes.")) is None  # not leading


def test_rules_apply_in_order_and_are_counted():
    records = [dict(r) for r in RELEASE_LIKE]
    records[0]["anomaly"] = True  # the record's own key wins over its folder
    labels, report = label_records(records, ["key", "folder", "answer"], "release.json")
    assert labels == [1, 1, 0, 1, 0, 1, 0, None, 0]
    assert report.to_dict() == {
        "source": "release.json",
        "records": 9,
        "by_rule": {"key": 1, "folder": 5, "answer": 2},
        "unlabelled": 1,
        "normal": 4,
        "anomalous": 4,
    }
    answer_first, _ = label_records(records, ["answer", "folder"], "release.json")
    assert answer_first[-1] == 1
    with pytest.raises(ValueError, match="label rules"):
        label_records(records, ["guess"], "release.json")


def _write(tmp_path, records: list[dict]):
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(records))
    return path


def test_instruction_source_labels_release_records(tmp_path, caplog):
    path = _write(tmp_path, RELEASE_LIKE)
    source = InstructionSource(path, tmp_path, label_rules=["key", "folder", "answer"])
    with caplog.at_level(logging.INFO, logger="anomaly_ov.data.zsad"):
        samples, report = source.read_with_report()
    assert [(s.class_name, s.label) for s in samples] == [
        ("bottle", 0),
        ("bottle", 1),
        ("bottle", 0),
        ("brats", 1),
        ("brats", 0),
        ("apple", 1),
        ("apple", 0),
        ("cup", 0),
    ]
    assert len(samples[-1].images) == 2
    assert report.unlabelled == 1 and report.by_rule == {"folder": 6, "answer": 2}
    assert "labelled by key 0, folder 6, answer 2; 1 unlabelled" in caplog.text


def test_a_source_without_one_class_is_refused(tmp_path):
    # only the key rule (the default): no record of this file carries "anomaly", so nothing is labelled
    path = _write(tmp_path, RELEASE_LIKE)
    refused = r"instruct\.json: the label rules \['key'\] give no normal and no anomalous"
    with pytest.raises(ValueError, match=refused):
        InstructionSource(path, tmp_path).read()
    # WebAD-like file whose answers are all Yes: normal class missing
    only_yes = [r for r in RELEASE_LIKE if r["id"] in ("w0", "m1")]
    path = _write(tmp_path, only_yes)
    with pytest.raises(ValueError, match="give no normal record"):
        InstructionSource(path, tmp_path, label_rules=["answer"]).read()
