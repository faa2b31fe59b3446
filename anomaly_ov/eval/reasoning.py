r"""VisA-D&R reasoning (SPEC §5): multi-turn answers with the model's own history, and their scores.

Each record of ``visa_dr.json`` (``{"image", "questions": [q1, q2, ...], <reference answers>}``, anomalous
images only) is one conversation: ``<image>\\n`` + q1, the model's answer, q2 with the full history of
questions and the model's own answers, and so on (the release's ``test_reasoning.py``). The reference answers'
key is not documented by the release, so it is a parameter. Scores (the release has no scoring code):
ROUGE-L and Sentence-BERT cosine similarity against the reference, and optionally an LLM judge's score.
Low-level reasoning is the first question, complex reasoning the others (our reading of the paper's Table 4;
the release does not define the split, so the count is a parameter). The published evaluation skips the
classes pcb2 and pcb4.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomaly_ov.data.tokens import IMAGE_PLACEHOLDER
from anomaly_ov.eval.detection import class_of
from anomaly_ov.eval.judge import LLMJudge
from anomaly_ov.eval.records import RecordChecker, image_entries, leaves_root
from anomaly_ov.eval.text_similarity import RougeL, SentenceSimilarity
from anomaly_ov.inference.pipeline import AnomalyOVPipeline

PUBLISHED_SKIPPED_CLASSES: tuple[str, ...] = ("pcb2", "pcb4")


@dataclass(frozen=True)
class ReasoningRecord:
    """One record of the reasoning file.

    Attributes:
        image: Image path relative to the benchmark root.
        class_name: Second component of ``image``.
        questions: The questions, in order.
        references: The reference answers, one per question.
        fields: The record as read (copied into the output, as the release does).
    """

    image: str
    class_name: str
    questions: tuple[str, ...]
    references: tuple[str, ...]
    fields: dict[str, Any] = field(compare=False)


def read_reasoning_records(
    path: str | Path,
    root: str | Path,
    answers_key: str,
    skip_classes: Sequence[str] = PUBLISHED_SKIPPED_CLASSES,
    skip_bad_records: bool = False,
    allow_outside_root: bool = False,
) -> tuple[list[ReasoningRecord], RecordChecker, int]:
    """Reads and checks ``visa_dr.json``.

    Args:
        path: The reasoning file.
        root: The benchmark root.
        answers_key: The field holding the reference answers (a list, one per question).
        skip_classes: Classes left out (the published evaluation skips pcb2 and pcb4).
        skip_bad_records: Skip bad records (listed in the returned checker) instead of raising.
        allow_outside_root: Read image paths that leave ``root``; refused by default.

    Returns:
        The records, the checker with the skipped bad records, and the number of records left out by class.

    Raises:
        BadRecordError: For a missing image, a malformed question list or references that do not match it.
    """
    checker = RecordChecker(path, skip_bad_records)
    records: list[ReasoningRecord] = []
    by_class = 0
    seen: set[str] = set()
    for name, image, entry in image_entries(path, checker):
        if leaves_root(checker, name, root, image, allow_outside_root):
            continue
        try:
            class_name = class_of(image)
        except ValueError as error:
            checker.bad(name, str(error))
            continue
        if class_name in skip_classes:
            by_class += 1
            continue
        questions, references = entry.get("questions"), entry.get(answers_key)
        if (
            not isinstance(questions, list)
            or not questions
            or not all(isinstance(q, str) and q.strip() for q in questions)
        ):
            checker.bad(name, f"'questions' must be a non-empty list of non-empty strings, got {questions!r}")
            continue
        if any(IMAGE_PLACEHOLDER in q for q in questions):
            checker.bad(
                name, f"a question holds {IMAGE_PLACEHOLDER}; the image is added before the first one"
            )
            continue
        if (
            not isinstance(references, list)
            or len(references) != len(questions)
            or not all(isinstance(r, str) for r in references)
        ):
            checker.bad(
                name,
                f"the reference answers ({answers_key!r}) must be a list of {len(questions)} strings, one "
                f"per "
                f"question; got {references!r} (set benchmark.answers_key to the file's field)",
            )
            continue
        if image in seen:
            checker.bad(name, "the image is listed twice")
            continue
        if not (Path(root) / image).is_file():
            checker.bad(name, f"image file {Path(root) / image} not found")
            continue
        seen.add(image)
        records.append(ReasoningRecord(image, class_name, tuple(questions), tuple(references), dict(entry)))
    return records, checker, by_class


def answer_conversations(
    pipeline: AnomalyOVPipeline,
    records: Sequence[ReasoningRecord],
    images: Sequence[Image.Image],
) -> list[list[str]]:
    """Asks each record's questions as one conversation, with the model's own answers as history.

    The records are answered together, turn by turn (one batched ``generate`` per turn); a record with fewer
    questions drops out of the later turns.

    Args:
        pipeline: The model pipeline (greedy decoding as configured).
        records: The records (one batch).
        images: One image per record.

    Returns:
        The responses of each record, one per question.
    """
    turns: list[list[dict[str, str]]] = [[] for _ in records]
    responses: list[list[str]] = [[] for _ in records]
    for step in range(max(len(r.questions) for r in records)):
        active = [i for i, r in enumerate(records) if step < len(r.questions)]
        for i in active:
            question = records[i].questions[step]
            turns[i].append(
                {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}" if step == 0 else question}
            )
        answers = pipeline.answer(
            [turns[i] for i in active], [[images[i]] for i in active], [[records[i].image] for i in active]
        )
        for i, answer in zip(active, answers, strict=True):
            turns[i].append({"from": "gpt", "value": answer.text})
            responses[i].append(answer.text)
    return responses


@dataclass
class ReasoningScorer:
    """Scores a record's responses against its references.

    Args:
        rouge: ROUGE-L scorer.
        sentence_similarity: Sentence-BERT similarity.
        judge: The LLM judge, or None (off).
    """

    rouge: RougeL
    sentence_similarity: SentenceSimilarity
    judge: LLMJudge | None = None

    def __call__(self, record: ReasoningRecord, responses: Sequence[str]) -> dict[str, Any]:
        """The per-answer metric values of one record (lists, one entry per question)."""
        scored: dict[str, Any] = {
            "rouge_l": [self.rouge(ref, res) for ref, res in zip(record.references, responses, strict=True)],
            "sbert": self.sentence_similarity(record.references, responses),
        }
        if self.judge is not None:
            verdicts = [
                self.judge.score(q, ref, res)
                for q, ref, res in zip(record.questions, record.references, responses, strict=True)
            ]
            scored["judge"] = [v.score for v in verdicts]
            scored["judge_errors"] = [v.error for v in verdicts]
        return scored


def reasoning_output(
    record: ReasoningRecord, responses: Sequence[str], scores: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``reasoning.jsonl`` line of a record: its fields, ``class``, ``responses``, the metric values."""
    return {**record.fields, "class": record.class_name, "responses": list(responses), **scores}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize_reasoning(results: Sequence[Mapping[str, Any]], low_level_questions: int = 1) -> dict[str, Any]:
    """Means over answers of the low-level (first questions) and complex (the others) reasoning scores.

    Judge failures are left out of the judge means and counted.

    Args:
        results: ``reasoning.jsonl`` records.
        low_level_questions: How many of a record's first questions are low-level reasoning (1).

    Returns:
        ``low_level`` and ``complex`` (``rouge_l``, ``sbert``, ``judge`` means and answer counts),
        ``num_records``, ``judge_failures`` and ``judge_used``.
    """
    if low_level_questions < 0:
        raise ValueError(f"low_level_questions={low_level_questions} must be 0 or more")
    judge_used = any("judge" in r for r in results)
    summary: dict[str, Any] = {"num_records": len(results), "judge_used": judge_used}
    failures = 0
    split = low_level_questions
    for part, select in (("low_level", slice(0, split)), ("complex", slice(split, None))):
        values: dict[str, list[float]] = {"rouge_l": [], "sbert": [], "judge": []}
        answers = 0
        for record in results:
            answers += len(record["responses"][select])
            for key in values:
                for value in record.get(key, [])[select]:
                    if value is None:
                        failures += key == "judge"
                    else:
                        values[key].append(float(value))
        summary[part] = {key: _mean(v) for key, v in values.items()}
        summary[part]["num_answers"] = answers
        if not judge_used:
            summary[part]["judge"] = None
    summary["judge_failures"] = failures
    return summary
