"""MMAD: letter parsing in the usual answer shapes, the reader's checks, prompts, hand-computed scores."""

import json

import pytest

from anomaly_ov.eval.mmad import (
    ANOMALY_DETECTION,
    anomaly_detection_metrics,
    mmad_metrics,
    mmad_prompt,
    parse_letter,
    read_mmad,
)
from anomaly_ov.eval.records import BadRecordError

OPTIONS = {"A": "Yes", "B": "No"}
DEFECTS = {"A": "scratch", "B": "crack", "C": "hole", "D": "stain"}


@pytest.mark.parametrize(
    ("reply", "options", "expected"),
    [
        ("B", OPTIONS, "B"),
        ("B.", OPTIONS, "B"),
        ("(B)", OPTIONS, "B"),
        ("B)", OPTIONS, "B"),
        ("The answer is B", OPTIONS, "B"),
        ("The answer is B.", OPTIONS, "B"),
        ("Answer: (B)", OPTIONS, "B"),
        ("answer is option A, because", OPTIONS, "A"),
        ("B. No", OPTIONS, "B"),
        ("(A) Yes, there is a defect.", OPTIONS, "A"),
        ("No", OPTIONS, "B"),
        ("no.", OPTIONS, "B"),
        ("It is a crack on the rim.", DEFECTS, "B"),  # the option's text
        ("Crack", DEFECTS, "B"),
        ("C", DEFECTS, "C"),
        ("E", DEFECTS, None),  # not an option
        ("The answer is a dent", DEFECTS, None),  # "a" is an article, not option A
        ("A crack or a hole", DEFECTS, None),  # two options' texts: ambiguous
        ("I cannot tell.", OPTIONS, None),
        ("", OPTIONS, None),
    ],
)
def test_parse_letter(reply, options, expected):
    assert parse_letter(reply, options) == expected


def _write(tmp_path, data):
    for path in ["D/c/test/1.png", "D/c/good/t.png"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    path = tmp_path / "mmad.json"
    path.write_text(json.dumps(data))
    return path


def _question(answer="A", options=None, kind=ANOMALY_DETECTION):
    return {"Question": "Any defect?", "Options": options or dict(OPTIONS), "Answer": answer, "type": kind}


def test_reader_prompts_and_one_shot_template(tmp_path):
    path = _write(
        tmp_path,
        {
            "D/c/test/1.png": {
                "similar_templates": ["D/c/good/t.png"],
                "conversation": [_question(), _question("B")],
            }
        },
    )
    questions, checker = read_mmad(path, tmp_path, shots=1)
    assert [q.key for q in questions] == ["D/c/test/1.png#0", "D/c/test/1.png#1"] and not checker.skipped
    assert questions[0].dataset == "D" and questions[0].template == "D/c/good/t.png"
    prompt, images = mmad_prompt(questions[0], shots=1)
    assert images == ["D/c/good/t.png", "D/c/test/1.png"]  # the normal reference first
    assert prompt.count("<image>") == 2 and "A. Yes\nB. No" in prompt
    prompt, images = mmad_prompt(questions[0], shots=0)
    assert images == ["D/c/test/1.png"] and prompt.startswith("<image>\nAny defect?")


def test_answer_not_among_options_names_the_record(tmp_path):
    path = _write(
        tmp_path,
        {
            "D/c/test/1.png": {
                "similar_templates": ["D/c/good/t.png"],
                "conversation": [_question(), _question("C")],
            }
        },
    )
    with pytest.raises(BadRecordError, match=r"D/c/test/1.png question 1: the answer 'C' is not among"):
        read_mmad(path, tmp_path)
    questions, checker = read_mmad(path, tmp_path, skip_bad_records=True)
    assert len(questions) == 1 and checker.skipped[0].record == "D/c/test/1.png question 1"


def test_one_shot_needs_a_template(tmp_path):
    path = _write(tmp_path, {"D/c/test/1.png": {"similar_templates": [], "conversation": [_question()]}})
    with pytest.raises(BadRecordError, match="1-shot needs a similar template"):
        read_mmad(path, tmp_path, shots=1)
    assert len(read_mmad(path, tmp_path, shots=0)[0]) == 1


def _result(dataset, kind, answer, letter, options=OPTIONS):
    return {
        "dataset": dataset,
        "type": kind,
        "options": options,
        "answer": answer,
        "letter": letter,
        "correct": letter == answer,
    }


def test_anomaly_detection_rates_hand_computed():
    results = [
        _result("D", ANOMALY_DETECTION, "A", "A"),  # tp
        _result("D", ANOMALY_DETECTION, "A", "A"),  # tp
        _result("D", ANOMALY_DETECTION, "A", "B"),  # fn (miss)
        _result("D", ANOMALY_DETECTION, "B", "A"),  # fp (overkill)
        _result("D", ANOMALY_DETECTION, "B", "B"),  # tn
        _result("D", ANOMALY_DETECTION, "B", "B"),  # tn
        _result("D", ANOMALY_DETECTION, "B", None),  # unparseable: counted, not in the rates
        _result("D", ANOMALY_DETECTION, "B", "B", {"A": "No", "B": "Yes"}),  # options swapped: tp
    ]
    rates = anomaly_detection_metrics(results)
    assert rates["counts"] == {"tp": 3, "fp": 1, "fn": 1, "tn": 2}
    assert rates["precision"] == pytest.approx(3 / 4) and rates["recall"] == pytest.approx(3 / 4)
    assert rates["f1"] == pytest.approx(3 / 4)
    assert rates["overkill"] == pytest.approx(1 / 3) and rates["miss"] == pytest.approx(1 / 4)
    assert rates["unparseable"] == 1


def test_accuracy_per_type_per_dataset_and_averages():
    results = [
        _result("X", ANOMALY_DETECTION, "A", "A"),
        _result("X", ANOMALY_DETECTION, "A", None),  # unparseable = wrong, and counted
        _result("X", "Defect Classification", "B", "B", DEFECTS),
        _result("Y", "Defect Classification", "B", "C", DEFECTS),
        _result("Y", "Defect Classification", "B", "B", DEFECTS),
        _result("Y", "Defect Classification", "B", None, DEFECTS),
    ]
    metrics = mmad_metrics(results)
    assert metrics["per_type"] == {ANOMALY_DETECTION: 0.5, "Defect Classification": 0.5}
    assert metrics["per_dataset"] == {"X": pytest.approx(2 / 3), "Y": pytest.approx(1 / 3)}
    assert metrics["per_dataset_type"]["X"] == {ANOMALY_DETECTION: 0.5, "Defect Classification": 1.0}
    assert metrics["mean_over_types"] == 0.5 and metrics["mean_over_datasets"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["unparseable"] == {ANOMALY_DETECTION: 1, "Defect Classification": 1}
    assert metrics["num_questions"] == {ANOMALY_DETECTION: 2, "Defect Classification": 4}
