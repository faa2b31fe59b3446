"""VisA-D&R detection scoring: the Yes rule, class from the path, per-class macro averages against sklearn."""

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from anomaly_ov.eval.detection import (
    AnswerTokens,
    class_of,
    decisions_from_logits,
    detection_metrics,
    is_yes,
    read_detection_records,
    reply_start,
    summarize_detection,
)
from anomaly_ov.eval.records import BadRecordError


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Yes", True),
        ("yes, there is a crack", True),
        ("No.", False),
        ("There are no defects", False),
        ("I would say YES", False),  # the release's rule is case-sensitive: only "Yes" and "yes"
        ("Not sure; eyes may deceive", True),  # "eyes" contains "yes": the release counts it, so do we
        ("", False),
    ],
)
def test_yes_rule_is_the_release_substring_rule(reply, expected):
    assert is_yes(reply) is expected


def test_reply_start():
    assert [reply_start(r) for r in ["Yes.", " yes", "No", "no way", "Maybe", ""]] == [
        "yes",
        "yes",
        "no",
        "no",
        "other",
        "other",
    ]


def test_class_is_the_second_path_component():
    assert class_of("VisA/candle/Data/Images/Anomaly/000.JPG") == "candle"
    assert class_of("mvtec/gear/test/hole/000.png") == "gear"
    with pytest.raises(ValueError, match="no <dataset>/<class>"):
        class_of("candle.png")


def _sklearn_macro(classes, truth, predicted):
    per_class = {}
    for name in sorted(set(classes)):
        t = [x for x, c in zip(truth, classes, strict=True) if c == name]
        p = [x for x, c in zip(predicted, classes, strict=True) if c == name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_class[name] = [
                accuracy_score(t, p),
                precision_score(t, p),
                recall_score(t, p),
                f1_score(t, p),
            ]
    return per_class, np.mean(list(per_class.values()), axis=0)


def test_macro_average_over_classes_matches_sklearn_random():
    rng = np.random.default_rng(0)
    classes = rng.choice(["a", "b", "c", "d"], size=200).tolist()
    truth = rng.random(200) < 0.5
    predicted = np.where(rng.random(200) < 0.7, truth, ~truth)
    scores = np.where(truth, 0.3, 0.0) + rng.random(200)
    result = detection_metrics(classes, truth, predicted, scores)
    per_class, mean = _sklearn_macro(classes, truth.tolist(), predicted.tolist())
    for name, values in per_class.items():
        got = result["per_class"][name]
        np.testing.assert_allclose([got[k] for k in ("accuracy", "precision", "recall", "f1")], values)
    np.testing.assert_allclose([result["mean"][k] for k in ("accuracy", "precision", "recall", "f1")], mean)
    auroc = np.mean(
        [roc_auc_score(truth[np.array(classes) == c], scores[np.array(classes) == c]) for c in "abcd"]
    )
    ap = np.mean(
        [
            average_precision_score(truth[np.array(classes) == c], scores[np.array(classes) == c])
            for c in "abcd"
        ]
    )
    assert result["mean"]["auroc"] == pytest.approx(auroc)
    assert result["mean"]["ap"] == pytest.approx(ap)
    assert result["zero_division"] == 0


def test_hand_computed_macro_average_differs_from_pooled():
    # class a: 4 images, tp=2 fp=1 fn=0 tn=1 -> acc .75, P 2/3, R 1, F1 .8
    # class b: 2 images, tp=0 fp=0 fn=1 tn=1 -> acc .5, P 0 (zero division), R 0, F1 0
    classes = ["a"] * 4 + ["b"] * 2
    truth = [True, True, False, False, True, False]
    predicted = [True, True, True, False, False, False]
    with pytest.warns(UserWarning, match="precision is ill-defined for b"):
        result = detection_metrics(classes, truth, predicted)
    assert result["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert result["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert result["mean"]["accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    assert result["mean"]["precision"] == pytest.approx(1 / 3)
    assert result["mean"]["recall"] == pytest.approx(0.5)
    assert result["mean"]["f1"] == pytest.approx(0.4)
    assert result["zero_division"] == 1
    assert result["zero_division_cases"] == [{"class": "b", "metric": "precision"}]
    # pooled over images it would be acc 4/6: the macro average is what the release reports
    assert result["mean"]["accuracy"] != pytest.approx(4 / 6)


def test_zero_division_values_match_sklearn_default():
    truth, predicted = [False, False, False], [False, False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [
            precision_score(truth, predicted),
            recall_score(truth, predicted),
            f1_score(truth, predicted),
        ]
        result = detection_metrics(["x"] * 3, truth, predicted)
    got = result["per_class"]["x"]
    assert [got["precision"], got["recall"], got["f1"]] == expected == [0.0, 0.0, 0.0]
    assert result["zero_division"] == 3


def test_fast_decision_is_best_yes_logit_against_best_no_logit():
    tokens = AnswerTokens(yes=(1, 2), no=(3,))
    logits = torch.tensor(
        [
            [9.0, 0.5, 4.0, 3.0],  # yes 4 beats no 3; arg-max is token 0 (not an answer token)
            [0.0, 1.0, 2.0, 3.0],  # no wins and is the arg-max
            [0.0, 3.0, 0.0, 3.0],  # a tie is "No", score exactly 0.5
        ]
    )
    decisions = decisions_from_logits(logits, tokens, torch.tensor([0.9, 0.1, 0.5]))
    assert [d.predicted for d in decisions] == [True, False, False]
    np.testing.assert_allclose([d.score for d in decisions], [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1)), 0.5])
    assert [d.starts_with_answer for d in decisions] == [False, True, True]
    assert [d.first_token for d in decisions] == [0, 3, 1]
    assert decisions[0].expert_score == pytest.approx(0.9)


def test_summary_has_expert_baseline_at_threshold():
    results = [
        {
            "class": "a",
            "anomaly": True,
            "predicted": True,
            "score": 0.9,
            "expert_score": 0.5,
            "starts_with": "yes",
        },
        {
            "class": "a",
            "anomaly": False,
            "predicted": True,
            "score": 0.6,
            "expert_score": 0.49,
            "starts_with": "yes",
        },
        {
            "class": "a",
            "anomaly": True,
            "predicted": False,
            "score": 0.2,
            "expert_score": 0.7,
            "starts_with": "other",
        },
        {
            "class": "a",
            "anomaly": False,
            "predicted": False,
            "score": 0.1,
            "expert_score": 0.1,
            "starts_with": "no",
        },
    ]
    summary = summarize_detection(results)
    assert summary["expert"]["mean"]["accuracy"] == 1.0  # 0.5 counts as anomalous (score >= threshold)
    assert summary["expert"]["mean"]["auroc"] == 1.0
    assert summary["model"]["mean"]["accuracy"] == 0.5
    assert summary["model"]["mean"]["auroc"] == pytest.approx(0.75)
    assert summary["replies"] == {"yes": 2, "no": 1, "other": 1}
    assert summarize_detection([{**r, "expert_score": None} for r in results])["expert"] is None


def test_bad_detection_records_name_the_record(tmp_path):
    (tmp_path / "V" / "c").mkdir(parents=True)
    (tmp_path / "V" / "c" / "ok.png").write_bytes(b"x")
    records = [
        {"image": "V/c/ok.png", "anomaly": True},
        {"image": "V/c/missing.png", "anomaly": False},
        {"image": "V/c/ok.png", "anomaly": "yes"},
    ]
    path = tmp_path / "test_data.json"
    path.write_text(json.dumps(records))
    with pytest.raises(BadRecordError, match=r"record #1 \(V/c/missing.png\): image file .* not found"):
        read_detection_records(path, tmp_path)
    kept, checker = read_detection_records(path, tmp_path, skip_bad_records=True)
    assert [r.image for r in kept] == ["V/c/ok.png"] and kept[0].class_name == "c"
    assert [s.record for s in checker.skipped] == ["#1 (V/c/missing.png)", "#2 (V/c/ok.png)"]
