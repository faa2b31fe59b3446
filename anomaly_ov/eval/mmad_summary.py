"""MMAD's scores as MMAD's authors compute them (their ``evaluation/examples/helper/summary.py``).

The table is dataset x question type (percent):

* a cell is the accuracy of that dataset's questions of that type; "Object Structure" and "Object Details"
  are folded into "Object Analysis";
* the Anomaly Detection cell is the *balanced* accuracy: (accuracy on normal images + accuracy on anomalous
  images) / 2, an image being normal when ``normal_flag`` ("good") is in its path;
* "Average" (column) is a dataset's mean over its type cells; Recall, Precision, F1 (anomalous = positive,
  from the Anomaly Detection answers), Overkill (100 - normal accuracy) and Miss (100 - anomalous
  accuracy) follow it;
* the "Average" row is the unweighted mean of each column over the datasets, so the overall figure is the
  mean over datasets of each dataset's mean over types.

As in ``summary.py``: every dataset gets a cell for every type seen anywhere (a cell with no question is 0
and counts in the dataset's mean), a zero denominator gives 0 (hence an Overkill of 100 for a dataset without
normal images), and datasets and types keep the order in which they first appear. A record whose correct
letter or parsed letter is not one of A-E is left out of every count (``excluded``; with the ``strict``
parser nothing is left out: an unparseable answer is wrong). ``summary.py`` removes such a record from the
list it is iterating, which silently skips the record after it too; that bug is not reproduced.

:func:`read_mmad_answers` reads their answers file (``answers_<k>_shot_<model>.json``: a list of
``{"image", "question", "question_type", "correct_answer", "gpt_answer"}``), so a published run can be
rescored here.
"""

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANOMALY_DETECTION = "Anomaly Detection"
OBJECT_ANALYSIS = "Object Analysis"
# MMAD's two halves of its object-analysis questions, reported as one type
OBJECT_ANALYSIS_PARTS = frozenset({"Object Structure", "Object Details"})
# the letters summary.py accepts; any other answer is left out of the counts
ANSWER_LETTERS = frozenset("ABCDE")
AVERAGE = "Average"
DETECTION_COLUMNS: tuple[str, ...] = ("Recall", "Precision", "F1", "Overkill", "Miss")
NORMAL_FLAG = "good"


@dataclass(frozen=True)
class ScoredAnswer:
    """One answered question, as the summary needs it.

    Attributes:
        image: Query image path (``<dataset>/<class>/...``).
        type: Question type as in ``mmad.json``.
        answer: The correct letter (of the options as shown).
        letter: The parsed letter of the reply (None: none found).
    """

    image: str
    type: str
    answer: str | None
    letter: str | None


def reported_type(question_type: str) -> str:
    """The column a question type is reported in (Object Structure / Details -> Object Analysis)."""
    return OBJECT_ANALYSIS if question_type in OBJECT_ANALYSIS_PARTS else question_type


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: Sequence[float]) -> float:
    # left-to-right sum, as pandas' mean over a handful of columns or rows computes it
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


@dataclass
class _Tally:
    correct: int = 0
    total: int = 0

    def add(self, correct: bool) -> None:
        self.total += 1
        self.correct += correct

    def as_dict(self) -> dict[str, int]:
        return {"correct": self.correct, "total": self.total}


def mmad_summary(
    answers: Iterable[ScoredAnswer], exclude_non_letters: bool = True, normal_flag: str = NORMAL_FLAG
) -> dict[str, Any]:
    """MMAD's dataset x type table and its Anomaly Detection rates.

    Args:
        answers: The answered questions, in benchmark order (orders the rows and columns).
        exclude_non_letters: Leave out records whose correct or parsed letter is not one of A-E (MMAD's
            rule); False counts them (an answer without a letter is wrong).
        normal_flag: A query image is normal when this string is in its path.

    Returns:
        ``table``: ``{dataset | "Average": {type..., "Average", "Recall", "Precision", "F1", "Overkill",
        "Miss": percent}}``; ``datasets`` and ``types`` (column order); ``counts`` (``{dataset: {type:
        {"correct", "total"}}}``, Anomaly Detection as plain accuracy); ``detection`` (``{dataset:
        {"normal", "anomalous": {"correct", "total"}}}``); ``excluded`` (records left out) and
        ``num_answers`` (records counted).

    Raises:
        ValueError: If no record is left to score.
    """
    datasets: list[str] = []
    types: list[str] = []
    counts: dict[tuple[str, str], _Tally] = {}
    detection: dict[tuple[str, bool], _Tally] = {}
    excluded = counted = 0
    for answer in answers:
        dataset, kind = answer.image.split("/")[0], reported_type(answer.type)
        # the rows and columns of summary.py come from every record, scored or not
        if dataset not in datasets:
            datasets.append(dataset)
        if kind not in types:
            types.append(kind)
        if exclude_non_letters and (
            answer.answer not in ANSWER_LETTERS or answer.letter not in ANSWER_LETTERS
        ):
            excluded += 1
            continue
        counted += 1
        correct = answer.letter is not None and answer.letter == answer.answer
        counts.setdefault((dataset, kind), _Tally()).add(correct)
        if kind == ANOMALY_DETECTION:
            detection.setdefault((dataset, normal_flag in answer.image), _Tally()).add(correct)
    if not counted:
        raise ValueError(f"no MMAD answer to score ({excluded} left out: correct or given letter not A-E)")

    table: dict[str, dict[str, float]] = {}
    for dataset in datasets:
        cells = {kind: counts.get((dataset, kind), _Tally()) for kind in types}
        row = {kind: 100 * _ratio(tally.correct, tally.total) for kind, tally in cells.items()}
        normal = detection.get((dataset, True), _Tally())
        anomalous = detection.get((dataset, False), _Tally())
        normal_acc, anomalous_acc = (
            _ratio(normal.correct, normal.total),
            _ratio(anomalous.correct, anomalous.total),
        )
        if ANOMALY_DETECTION in row:
            row[ANOMALY_DETECTION] = (normal_acc + anomalous_acc) / 2 * 100
        row[AVERAGE] = _mean([row[kind] for kind in types])
        true_pos, false_pos = anomalous.correct, normal.total - normal.correct
        false_neg = anomalous.total - anomalous.correct
        precision = _ratio(true_pos, true_pos + false_pos)
        recall = _ratio(true_pos, true_pos + false_neg)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        row.update(
            {
                "Recall": recall * 100,
                "Precision": precision * 100,
                "F1": f1 * 100,
                "Overkill": (1 - normal_acc) * 100,
                "Miss": (1 - anomalous_acc) * 100,
            }
        )
        table[dataset] = row
    columns = [*types, AVERAGE, *DETECTION_COLUMNS]
    table[AVERAGE] = {column: _mean([table[d][column] for d in datasets]) for column in columns}
    return {
        "table": table,
        "datasets": datasets,
        "types": types,
        "counts": {
            d: {kind: counts[(d, kind)].as_dict() for kind in types if (d, kind) in counts} for d in datasets
        },
        "detection": {
            d: {
                "normal": detection.get((d, True), _Tally()).as_dict(),
                "anomalous": detection.get((d, False), _Tally()).as_dict(),
            }
            for d in datasets
        },
        "excluded": excluded,
        "num_answers": counted,
    }


def read_mmad_answers(path: str | Path) -> list[ScoredAnswer]:
    """Reads an answers file of MMAD's own scripts (``answers_<k>_shot_<model>.json``).

    Args:
        path: A JSON list of ``{"image", "question_type", "correct_answer", "gpt_answer", ...}``.

    Raises:
        ValueError: Naming the file and the record, for a file that is not such a list.
    """
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of answer records, got {type(rows).__name__}")
    answers = []
    for index, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("image"), str)
            or not isinstance(row.get("question_type"), str)
        ):
            raise ValueError(f"{path}: record {index} needs string 'image' and 'question_type' fields")
        answers.append(
            ScoredAnswer(
                image=row["image"],
                type=row["question_type"],
                answer=row.get("correct_answer"),
                letter=row.get("gpt_answer"),
            )
        )
    return answers


def read_summary_csv(path: str | Path) -> dict[str, dict[str, float]]:
    """Reads a table written by ``summary.py`` (``*_accuracy.csv``: datasets and "Average" as rows).

    Returns:
        ``{row: {column: value}}``, the shape of :func:`mmad_summary`'s ``table``.
    """
    with Path(path).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0][1:]
    return {
        row[0]: {column: float(value) for column, value in zip(header, row[1:], strict=True)}
        for row in rows[1:]
    }
