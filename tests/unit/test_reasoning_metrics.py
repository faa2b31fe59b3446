"""VisA-D&R reasoning: the reader's checks and class skip, ROUGE-L by hand, SBERT, the summary."""

import json

import numpy as np
import pytest

from anomaly_ov.eval.reasoning import read_reasoning_records, summarize_reasoning
from anomaly_ov.eval.records import BadRecordError
from anomaly_ov.eval.text_similarity import RougeL, SentenceSimilarity, bundled_sentence_model


def test_rouge_l_is_the_lcs_f_measure():
    # reference 6 tokens, answer 5, longest common subsequence "the cat on mat" = 4 tokens
    value = RougeL()("The cat sat on the mat.", "the cat on a mat")
    precision, recall = 4 / 5, 4 / 6
    assert value == pytest.approx(2 * precision * recall / (precision + recall))
    assert RougeL()("a b c", "x y z") == 0.0


def test_sentence_similarity_with_the_bundled_model():
    assert (bundled_sentence_model() / "modules.json").is_file()
    similarity = SentenceSimilarity()
    texts = ["There is a crack near the top.", "The surface has a scratch.", "A cat sleeps on the sofa."]
    same = similarity(texts, texts)
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    related, unrelated = similarity(
        ["A crack near the top of the bottle."] * 2,
        ["The bottle is cracked at its top.", "Bananas are yellow."],
    )
    assert related > unrelated + 0.3
    # the score is the cosine of the embeddings
    a, b = similarity.embed(["x is y"]), similarity.embed(["y is x"])
    assert similarity(["x is y"], ["y is x"])[0] == pytest.approx(float(a[0] @ b[0]), abs=1e-6)


def _write(tmp_path, records):
    for cls in ("candle", "pcb2"):
        (tmp_path / "VisA" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "VisA" / cls / "1.png").write_bytes(b"x")
    path = tmp_path / "visa_dr.json"
    path.write_text(json.dumps(records))
    return path


def test_reader_skips_published_classes_and_checks_questions(tmp_path):
    good = {"image": "VisA/candle/1.png", "questions": ["q1", "q2"], "answers": ["a1", "a2"], "extra": 1}
    path = _write(tmp_path, [good, {**good, "image": "VisA/pcb2/1.png"}])
    records, checker, by_class = read_reasoning_records(path, tmp_path, "answers")
    assert [r.image for r in records] == ["VisA/candle/1.png"] and by_class == 1
    assert records[0].fields["extra"] == 1 and records[0].references == ("a1", "a2")
    records, _, by_class = read_reasoning_records(path, tmp_path, "answers", skip_classes=())
    assert len(records) == 2 and by_class == 0

    bad = _write(tmp_path, [good, {**good, "image": "VisA/candle/2.png", "questions": "q1"}])
    with pytest.raises(
        BadRecordError, match=r"record #1 \(VisA/candle/2.png\): 'questions' must be a non-empty list"
    ):
        read_reasoning_records(bad, tmp_path, "answers")
    wrong_key = _write(tmp_path, [good])
    with pytest.raises(BadRecordError, match=r"set benchmark\.answers_key"):
        read_reasoning_records(wrong_key, tmp_path, "reference")
    missing = _write(tmp_path, [{**good, "image": "VisA/candle/9.png"}, good])
    records, checker, _ = read_reasoning_records(missing, tmp_path, "answers", skip_bad_records=True)
    assert len(records) == 1 and "not found" in checker.skipped[0].reason


def test_summary_splits_low_level_and_complex_and_counts_judge_failures():
    results = [
        {
            "responses": ["a", "b", "c"],
            "rouge_l": [0.2, 0.5, 0.7],
            "sbert": [0.6, 0.8, 1.0],
            "judge": [4, None, 6],
        },
        {"responses": ["a", "b"], "rouge_l": [0.4, 0.1], "sbert": [0.7, 0.9], "judge": [None, 8]},
    ]
    summary = summarize_reasoning(results)
    assert summary["low_level"]["rouge_l"] == pytest.approx(0.3)
    assert summary["low_level"]["sbert"] == pytest.approx(0.65)
    assert summary["low_level"]["judge"] == pytest.approx(4.0)  # the failure is not a score
    assert summary["complex"]["sbert"] == pytest.approx((0.8 + 1.0 + 0.9) / 3)
    assert summary["complex"]["judge"] == pytest.approx(7.0)
    assert summary["complex"]["num_answers"] == 3 and summary["low_level"]["num_answers"] == 2
    assert summary["judge_failures"] == 2 and summary["judge_used"]
    no_judge = summarize_reasoning([{k: v for k, v in r.items() if k != "judge"} for r in results])
    assert no_judge["low_level"]["judge"] is None and no_judge["judge_failures"] == 0


def test_the_low_level_split_is_a_parameter():
    results = [{"responses": ["a", "b", "c"], "rouge_l": [0.2, 0.5, 0.8], "sbert": [0.6, 0.8, 1.0]}]
    two = summarize_reasoning(results, low_level_questions=2)
    assert two["low_level"]["rouge_l"] == pytest.approx(0.35) and two["low_level"]["num_answers"] == 2
    assert two["complex"]["rouge_l"] == pytest.approx(0.8) and two["complex"]["num_answers"] == 1
    assert summarize_reasoning(results)["low_level"]["num_answers"] == 1  # the default: the first question
    with pytest.raises(ValueError, match="low_level_questions"):
        summarize_reasoning(results, low_level_questions=-1)
