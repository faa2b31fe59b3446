"""MMAD: the reader, MMAD's prompt and option shuffling, both letter parsers, MMAD's image path, and the
summary as MMAD's ``summary.py`` computes it -- checked on a hand-written answers file and on the published
LLaVA-OneVision-7B and GPT-4o tables (jam-cc/MMAD ``all_result``)."""

import difflib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.eval.mmad import (
    INSTRUCTION,
    MMADQuestion,
    answer_record,
    fitted_size,
    mmad_fit,
    mmad_metrics,
    mmad_prompt,
    mmad_view,
    parse_letter,
    parse_mmad,
    read_mmad,
    shuffle_options,
)
from anomaly_ov.eval.mmad_summary import (
    ANOMALY_DETECTION,
    ScoredAnswer,
    mmad_summary,
    read_mmad_answers,
    read_summary_csv,
)
from anomaly_ov.eval.records import BadRecordError

FIXTURES = Path(__file__).parent / "mmad_fixtures"
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
def test_strict_parser(reply, options, expected):
    assert parse_letter(reply, options) == expected


@pytest.mark.parametrize(
    ("reply", "pick", "expected"),
    [
        ("B", "first", ("B", False)),
        ("A crack, so the answer is B", "first", ("A", False)),  # their regex takes "A crack" as A
        ("A crack, so the answer is B", "last", ("B", False)),  # their GPT-4o script keeps the last
        ("E", "first", ("E", False)),  # an A-E letter that is no option: kept, and wrong
        ("cracked", "first", ("B", True)),  # no capital A-E: the closest option text
        ("a stain on the surface", "first", ("D", True)),
        ("the answer is b", "first", ("C", True)),  # difflib's closest is "hole", whatever was meant
        ("", "first", ("D", True)),  # difflib without a cutoff always names an option
    ],
)
def test_mmad_parser(reply, pick, expected):
    assert parse_mmad(reply, DEFECTS, pick) == expected
    if expected[1]:  # the fallback is difflib's own choice
        closest = difflib.get_close_matches(reply, list(DEFECTS.values()), n=1, cutoff=0.0)[0]
        assert DEFECTS[expected[0]] == closest


def test_mmad_parser_rejects_an_unknown_pick():
    with pytest.raises(ValueError, match="pick='middle'"):
        parse_mmad("A", DEFECTS, "middle")


def _files(tmp_path, *paths):
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")


def _question(answer="A", options=None, kind=ANOMALY_DETECTION):
    return {"Question": "Any defect?", "Options": options or dict(OPTIONS), "Answer": answer, "type": kind}


def _mmad_file(
    tmp_path, conversation, similar=("D/c/good/s.png",), random=("D/c/good/r1.png", "D/c/good/r2.png")
):
    _files(tmp_path, "D/c/test/1.png", *similar, *random)
    path = tmp_path / "mmad.json"
    record = {
        "similar_templates": list(similar),
        "random_templates": list(random),
        "conversation": conversation,
    }
    path.write_text(json.dumps({"D/c/test/1.png": record}))
    return path


def test_templates_are_random_templates_by_default_and_similar_on_request(tmp_path):
    path = _mmad_file(tmp_path, [_question(), _question("B")])
    questions, checker = read_mmad(path, tmp_path)
    assert [q.key for q in questions] == ["D/c/test/1.png#0", "D/c/test/1.png#1"] and not checker.skipped
    assert questions[0].dataset == "D" and questions[0].templates == ("D/c/good/r1.png",)
    assert read_mmad(path, tmp_path, shots=2)[0][0].templates == ("D/c/good/r1.png", "D/c/good/r2.png")
    assert read_mmad(path, tmp_path, template="similar")[0][0].templates == ("D/c/good/s.png",)
    assert read_mmad(path, tmp_path, shots=0)[0][0].templates == ()
    with pytest.raises(BadRecordError, match=r"2-shot needs 2 files in 'similar_templates'"):
        read_mmad(path, tmp_path, shots=2, template="similar")
    with pytest.raises(ValueError, match="template='nearest'"):
        read_mmad(path, tmp_path, template="nearest")


def test_answer_not_among_options_names_the_record(tmp_path):
    path = _mmad_file(tmp_path, [_question(), _question("C")])
    with pytest.raises(BadRecordError, match=r"D/c/test/1.png question 1: the answer 'C' is not among"):
        read_mmad(path, tmp_path)
    questions, checker = read_mmad(path, tmp_path, skip_bad_records=True)
    assert len(questions) == 1 and checker.skipped[0].record == "D/c/test/1.png question 1"


def _mmad_question(templates=("D/c/good/r1.png",), options=None, answer="B", key="D/c/test/1.png#0"):
    return MMADQuestion(
        key=key,
        image="D/c/test/1.png",
        dataset="D",
        question="Is there any defect in the object?",
        options=dict(options or OPTIONS),
        answer=answer,
        type=ANOMALY_DETECTION,
        templates=templates,
    )


def test_the_prompt_of_mmads_scripts():
    prompt, images = mmad_prompt(_mmad_question())
    assert images == ["D/c/good/r1.png", "D/c/test/1.png"]  # the normal template first
    assert prompt == (
        "\nYou are an industrial inspector who checks products by images. You should judge whether there "
        "is a defect in the query image and answer the questions about it.\n"
        "Answer with the option's letter from the given choices directly.\n\n"
        "Following is 1 image of normal sample:<image>\n"
        "Test image: \n<image>\n"
        "Following is new question list: \n"
        "Is there any defect in the object? \nA. Yes\nB. No\n"
    )
    zero_shot, images = mmad_prompt(_mmad_question(templates=()))
    assert images == ["D/c/test/1.png"]
    assert zero_shot == INSTRUCTION + "\nTest image: \n<image>\nFollowing is new question list: \n" + (
        "Is there any defect in the object? \nA. Yes\nB. No\n"
    )
    with_letter, _ = mmad_prompt(_mmad_question(), letter_instruction=True)
    assert with_letter == prompt + "\nAnswer with the option's letter from the given choices directly."
    two_shot, images = mmad_prompt(_mmad_question(templates=("t1", "t2")))
    assert (
        "Following is 2 image of normal sample:<image>\n<image>\nTest image" in two_shot and len(images) == 3
    )


def test_option_shuffling_is_seeded_per_question_and_keeps_the_answer():
    questions = [_mmad_question(options=DEFECTS, answer="C", key=f"q{i}") for i in range(40)]
    shuffled = [shuffle_options(q, seed=0) for q in questions]
    for question in shuffled:
        assert sorted(question.options) == ["A", "B", "C", "D"]
        assert question.options[question.answer] == "hole"  # the answer follows its text
        assert sorted(question.options.values()) == sorted(DEFECTS.values())
    # reproducible and independent of the order the questions are asked in
    assert [shuffle_options(q, 0) for q in reversed(questions)] == shuffled[::-1]
    orders = {tuple(q.options.values()) for q in shuffled}
    assert len(orders) > 5  # not one fixed permutation
    assert [shuffle_options(q, 1) for q in questions] != shuffled  # the seed matters


def test_answer_record_keeps_both_parsers():
    question = _mmad_question(options=DEFECTS, answer="D")
    record = answer_record(question, "stained")
    assert (record["letter_mmad"], record["letter_mmad_from_option_text"]) == ("D", True)
    assert record["letter_strict"] is None and record["letter"] == "D" and record["correct"]
    strict = answer_record(question, "stained", parse="strict")
    assert strict["letter"] is None and not strict["correct"]


def test_the_handwritten_answers_file_gives_the_hand_computed_table():
    """A hand-written answers file in MMAD's JSON shape (two datasets, all seven types, Object Structure and
    Object Details, an empty and a non A-E answer) and the table computed from its counts by hand."""
    summary = mmad_summary(read_mmad_answers(FIXTURES / "answers_1_shot_handwritten.json"))
    expected = read_summary_csv(FIXTURES / "answers_1_shot_handwritten_accuracy.csv")
    assert summary["table"] == expected  # every cell exactly, rows and columns in their order
    assert list(summary["table"]) == list(expected) and list(summary["table"]["VisA"]) == list(
        expected["VisA"]
    )
    assert summary["excluded"] == 2 and summary["num_answers"] == 23
    assert summary["counts"]["DS-MVTec"]["Object Analysis"] == {"correct": 1, "total": 2}  # folded
    assert summary["detection"]["DS-MVTec"] == {
        "normal": {"correct": 1, "total": 2},
        "anomalous": {"correct": 2, "total": 3},
    }


def test_anomaly_detection_is_the_balanced_accuracy_of_mmad():
    """The issue's check on the published LLaVA-OV-7B row: 125 of 1,226 anomalous and 2 of 465 normal
    DS-MVTec images flagged."""
    anomalous = [ScoredAnswer("DS-MVTec/x/image/crack/1.png", ANOMALY_DETECTION, "A", "A")] * 125
    anomalous += [ScoredAnswer("DS-MVTec/x/image/crack/1.png", ANOMALY_DETECTION, "A", "B")] * (1226 - 125)
    normal = [ScoredAnswer("DS-MVTec/x/image/good/1.png", ANOMALY_DETECTION, "B", "A")] * 2
    normal += [ScoredAnswer("DS-MVTec/x/image/good/1.png", ANOMALY_DETECTION, "B", "B")] * (465 - 2)
    row = mmad_summary(anomalous + normal)["table"]["DS-MVTec"]
    assert round(row[ANOMALY_DETECTION], 1) == 54.9
    assert round(100 * (125 + 463) / (1226 + 465), 1) == 34.8  # the plain accuracy it replaces
    assert row["Recall"] == pytest.approx(100 * 125 / 1226) and row["Precision"] == pytest.approx(
        100 * 125 / 127
    )
    assert row["F1"] == pytest.approx(100 * 250 / (250 + 2 + 1101))
    assert row["Overkill"] == pytest.approx(100 * 2 / 465) and row["Miss"] == pytest.approx(100 * 1101 / 1226)


def test_zero_denominators_and_empty_cells_are_zero_as_in_summary_py():
    answers = [
        ScoredAnswer("X/c/test/bad/1.png", ANOMALY_DETECTION, "A", "B"),  # no normal image, nothing flagged
        ScoredAnswer("Y/c/test/bad/1.png", "Defect Analysis", "A", "A"),  # Y has no AD question at all
    ]
    table = mmad_summary(answers)["table"]
    assert table["X"]["Precision"] == 0 and table["X"]["Recall"] == 0 and table["X"]["F1"] == 0
    assert table["X"]["Overkill"] == 100  # 100 - a normal accuracy of 0 (no normal image)
    assert table["X"]["Defect Analysis"] == 0 and table["Y"][ANOMALY_DETECTION] == 0  # empty cells
    assert table["Y"]["Average"] == 50 and table["Average"]["Average"] == 25
    with pytest.raises(ValueError, match="no MMAD answer to score"):
        mmad_summary([ScoredAnswer("X/a.png", ANOMALY_DETECTION, "A", None)])


def _published_rows(counts, columns):
    """Answers in benchmark order (each image's Anomaly Detection question first), the published counts."""
    rows = []
    for dataset, cells in counts.items():
        for kind in columns:
            if kind == ANOMALY_DETECTION:
                parts = [("crack", *cells[kind]["anomalous"]), ("good", *cells[kind]["normal"])]
            else:
                parts = [("crack", *cells[kind])]
            for folder, correct, total in parts:
                image = f"{dataset}/part/test/{folder}/000.png"
                rows += [ScoredAnswer(image, kind, "A", "A")] * correct
                rows += [ScoredAnswer(image, kind, "A", "C")] * (total - correct)
    return rows


@pytest.mark.parametrize(
    ("table", "inexact"),
    [
        ("answers_1_shot_llava-onevision-qwen2-7b-si_accuracy.csv", {}),
        # one published mean is 1 ulp off the mean of its own published cells; the 64 others are exact
        ("answers_1_shot_gpt-4o_accuracy.csv", {("GoodsAD", "Average")}),
    ],
)
def test_the_published_tables_are_reproduced_exactly(table, inexact):
    fixture = json.loads((FIXTURES / "published_counts.json").read_text())["tables"][table]
    published = read_summary_csv(FIXTURES / table)
    columns = [c for c in next(iter(published.values())) if c not in ("Average", "Recall", "Precision")]
    columns = columns[: columns.index("F1")]
    rows = _published_rows(fixture, columns)
    summary = mmad_summary(rows)
    ours = summary["table"]
    assert list(ours) == list(published) and summary["types"] == columns
    # the same table through what benchmark=mmad writes and scores (mmad.jsonl records, parse=mmad)
    records = [_record(r.image, r.type, r.answer, r.letter, r.letter) for r in rows]
    assert mmad_metrics(records)["summary"]["table"] == ours
    for row, values in published.items():
        for column, value in values.items():
            if (row, column) in inexact:
                assert ours[row][column] == pytest.approx(value, abs=2e-14)
            else:
                assert ours[row][column] == value, (row, column)


def _record(image, kind, answer, mmad_letter, strict_letter, from_text=False):
    return {
        "image": image,
        "type": kind,
        "answer": answer,
        "letter_mmad": mmad_letter,
        "letter_mmad_from_option_text": from_text,
        "letter_strict": strict_letter,
    }


def test_metrics_report_both_parsers():
    results = [
        _record("D/c/test/good/1.png", ANOMALY_DETECTION, "B", "B", "B"),
        _record("D/c/test/bad/2.png", ANOMALY_DETECTION, "A", "A", None, from_text=True),
        _record("D/c/test/bad/2.png", "Defect Classification", "F", "F", "F"),  # F: left out by mmad
        _record("D/c/test/bad/2.png", "Defect Classification", "A", "A", "A"),
    ]
    metrics = mmad_metrics(results)
    assert metrics["parse"] == "mmad" and metrics["num_questions"] == 4
    assert metrics["parsers"]["mmad"] == {"average": 100.0, "excluded": 1, "from_option_text": 1}
    # strict: the unparseable anomalous answer is wrong (AD 50) and F counts (DC 1 of 2)
    assert metrics["parsers"]["strict"] == {"average": 75.0, "unparseable": 1}
    assert mmad_metrics(results, parse="strict")["summary"]["table"]["D"]["Defect Classification"] == 100.0


def test_fitted_size_truncates_as_mmads_scripts():
    assert fitted_size(1500, 1000) == (512, 341)  # int(1000 * 512 / 1500)
    assert fitted_size(256, 128) == (512, 256)  # small images are enlarged
    widths = [w for w in range(513, 3000) if int(w * (512 / w)) < 512]
    assert widths and fitted_size(widths[0], widths[0] // 2)[0] == 511  # float truncation, as theirs


def test_mmad_fit_averages_areas_as_opencvs_inter_area():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2048, 1024, 3), dtype=np.uint8)
    fitted = np.asarray(mmad_fit(Image.fromarray(pixels)), dtype=np.float64)
    assert fitted.shape == (512, 256, 3)
    block_means = pixels.reshape(512, 4, 256, 4, 3).mean(axis=(1, 3))  # INTER_AREA at a factor 4
    assert np.abs(fitted - block_means).max() <= 0.5  # the exact mean, rounded
    # a factor 1.5 (768 -> 512): output pixel 2k covers input 3k whole and half of 3k+1, pixel 2k+1 the other
    # half of 3k+1 and 3k+2 whole; partly covered pixels count by the covered fraction (hand-derived weights)
    pixels = rng.integers(0, 256, (768, 768, 3), dtype=np.uint8)
    weights = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]) / 1.5
    blocks = pixels.reshape(256, 3, 256, 3, 3).astype(np.float64)
    expected = np.einsum("ya,xb,iajbc->iyjxc", weights, weights, blocks).reshape(512, 512, 3)
    fitted = np.asarray(mmad_fit(Image.fromarray(pixels)), dtype=np.float64)
    assert np.abs(fitted - expected).max() <= 0.5
    # enlarging by an integer factor: INTER_AREA repeats each pixel (no bilinear blending)
    small = pixels[:128, :256]
    assert np.array_equal(np.asarray(mmad_fit(Image.fromarray(small))), small.repeat(2, 0).repeat(2, 1))
    assert mmad_fit(Image.fromarray(pixels[:100, :50])).size == (256, 512)  # enlarged
    assert mmad_fit(Image.fromarray(pixels[:, :, 0])).mode == "L"  # a grey image stays grey


def test_mmad_view_is_one_stretched_square_crop_of_the_fitted_jpeg():
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (4, 6, 3))
    blocks = np.kron(colours, np.ones((256, 256, 1))).astype(np.uint8)  # 1536x1024, 24 flat blocks
    view = mmad_view(Image.fromarray(blocks), crop_size=96)
    assert view.size == (96, 96) and view.mode == "RGB"
    # stretched, not padded: block (row 0, col 0) covers the view's top-left 16x24 cells, block (3, 5) the
    # bottom-right; the JPEG re-encoding moves a flat colour by a few levels only
    pixels = np.asarray(view, dtype=int)
    assert np.abs(pixels[12, 8] - colours[0, 0]).max() <= 6
    assert np.abs(pixels[84, 88] - colours[3, 5]).max() <= 6


def test_the_table_names_the_parser_both_counts_and_the_published_averages():
    from anomaly_ov.eval.benchmark_tables import MMAD_PUBLISHED_1_SHOT, mmad_table

    for model, name in (("LLaVA-OneVision-7B (si)", "llava-onevision-qwen2-7b-si"), ("GPT-4o", "gpt-4o")):
        published = read_summary_csv(FIXTURES / f"answers_1_shot_{name}_accuracy.csv")
        assert MMAD_PUBLISHED_1_SHOT[model] == round(published["Average"]["Average"], 2)
    results = [
        _record("D/c/test/good/1.png", ANOMALY_DETECTION, "B", "B", "B"),
        _record("D/c/test/bad/2.png", ANOMALY_DETECTION, "A", "B", None, from_text=True),
    ]
    table = mmad_table("ours", mmad_metrics(results))
    assert table.startswith("MMAD: ours (parse=mmad, 2 of 2 questions scored)")
    assert (
        "| D | 50.0 | 50.0 | 0.0 | 0.0 | 0.0 | 0.0 | 100.0 |" in table
    )  # AD, Average, R, P, F1, overkill, miss
    assert "with parse=strict 50.0 (1 without a letter, counted wrong)" in table
    assert "LLaVA-OneVision-7B (si) 63.3, GPT-4o 74.3" in table
