"""MMAD (ICLR 2025; SPEC §5): reading ``mmad.json``, the 0-/1-shot prompts, answer letters and the scores.

``mmad.json`` is an object keyed by the query image's path (``<dataset>/<class>/...``, relative to the
benchmark root); each value has ``similar_templates`` / ``random_templates`` (normal images of the same class)
and ``conversation``, a list of ``{"Question", "Options": {"A": ..., ...}, "Answer": "A", "type"}``. Every
question is asked on its own. In the 1-shot protocol (MMAD's default) the first similar template is shown as
a normal reference before the query image.

The model is asked for the option's letter; :func:`parse_letter` reads it from the usual answer shapes
("B", "B.", "(B)", "The answer is B", "Answer: B", or the option's own text). An answer that gives no letter
counts as wrong and is counted per question type, never dropped. Accuracy is reported per question type and
per source dataset (first path component) with their unweighted averages; for Anomaly Detection also
precision, recall, F1, overkill (normal judged defective) and miss (defective judged normal) rates.
"""

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_ov.eval.records import RecordChecker, load_benchmark_json

ANOMALY_DETECTION = "Anomaly Detection"
QUESTION_TYPES: tuple[str, ...] = (
    ANOMALY_DETECTION,
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
)
ZERO_SHOT_TEMPLATE = (
    "<image>\n{question}\n{options}\nAnswer with the option's letter from the given choices directly."
)
ONE_SHOT_TEMPLATE = (
    "The first image is a normal sample of this object, for reference: <image>\n"
    "The second image is the one to inspect: <image>\n"
    "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
)


@dataclass(frozen=True)
class MMADQuestion:
    """One question about one query image.

    Attributes:
        key: Unique id ``<image>#<question index>``.
        image: Query image path relative to the root.
        dataset: Source dataset (first path component).
        question: The question text.
        options: Letter -> option text, in the file's order.
        answer: The correct letter.
        type: The question type.
        template: Path of the first similar normal template (None if the record has none).
    """

    key: str
    image: str
    dataset: str
    question: str
    options: dict[str, str]
    answer: str
    type: str
    template: str | None


def read_mmad(
    path: str | Path, root: str | Path, shots: int = 1, skip_bad_records: bool = False
) -> tuple[list[MMADQuestion], RecordChecker]:
    """Reads and checks ``mmad.json``.

    Args:
        path: The file.
        root: The benchmark root (image paths are relative to it).
        shots: 0 or 1; with 1 a record needs a similar template that exists.
        skip_bad_records: Skip bad records or questions (listed in the returned checker) instead of raising.

    Returns:
        The questions, and the checker holding the skipped records.

    Raises:
        BadRecordError: For a missing image or template, a malformed conversation, or an answer that is not
            among its options.
    """
    if shots not in (0, 1):
        raise ValueError(f"shots={shots}; MMAD is evaluated 0-shot or 1-shot")
    root = Path(root)
    checker = RecordChecker(path, skip_bad_records)
    questions: list[MMADQuestion] = []
    for image, entry in load_benchmark_json(path, dict).items():
        parts = Path(image).parts
        if not isinstance(entry, dict) or not isinstance(entry.get("conversation"), list):
            checker.bad(image, "the record needs a 'conversation' list")
            continue
        if len(parts) < 2:
            checker.bad(image, "the image path has no <dataset>/... component")
            continue
        if not (root / image).is_file():
            checker.bad(image, f"image file {root / image} not found")
            continue
        templates = entry.get("similar_templates") or []
        template = templates[0] if templates and isinstance(templates[0], str) else None
        if shots == 1 and (template is None or not (root / template).is_file()):
            checker.bad(image, f"1-shot needs a similar template; {template!r} is missing or not a file")
            continue
        for index, turn in enumerate(entry["conversation"]):
            name = f"{image} question {index}"
            problem = _question_problem(turn)
            if problem is not None:
                checker.bad(name, problem)
                continue
            questions.append(
                MMADQuestion(
                    key=f"{image}#{index}",
                    image=image,
                    dataset=parts[0],
                    question=turn["Question"],
                    options={str(k): str(v) for k, v in turn["Options"].items()},
                    answer=turn["Answer"],
                    type=turn["type"],
                    template=template,
                )
            )
    return questions, checker


def _question_problem(turn: object) -> str | None:
    """What is wrong with one conversation entry, or None."""
    if not isinstance(turn, dict):
        return "not a {Question, Options, Answer, type} object"
    options = turn.get("Options")
    if not isinstance(turn.get("Question"), str) or not isinstance(turn.get("type"), str):
        return "'Question' and 'type' must be strings"
    if not isinstance(options, dict) or not options:
        return "'Options' must be a non-empty {letter: text} object"
    if any(not re.fullmatch(r"[A-Z]", str(k)) or not isinstance(v, str) for k, v in options.items()):
        return f"'Options' keys must be single capital letters with text values, got {options!r}"
    if turn.get("Answer") not in options:
        return f"the answer {turn.get('Answer')!r} is not among the options {sorted(options)}"
    return None


def format_options(options: Mapping[str, str]) -> str:
    """``A. text`` lines, one per option."""
    return "\n".join(f"{letter}. {text}" for letter, text in options.items())


def mmad_prompt(question: MMADQuestion, shots: int) -> tuple[str, list[str]]:
    """The human turn and its image paths (template first in 1-shot).

    Returns:
        The prompt (one ``<image>`` per image) and the image paths relative to the root.
    """
    fields = {"question": question.question, "options": format_options(question.options)}
    if shots == 0:
        return ZERO_SHOT_TEMPLATE.format(**fields), [question.image]
    if question.template is None:
        raise ValueError(f"{question.key}: 1-shot needs a similar template")
    return ONE_SHOT_TEMPLATE.format(**fields), [question.template, question.image]


_BARE = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
# "answer", "is", "option" in any case; the letter itself must be a capital ("the answer is a dent" is no A)
_STATED = re.compile(r"\b(?i:answer)\b(?:\s+(?i:is))?\s*:?\s*(?:(?i:option)\s+)?\(?([A-Z])\)?(?![A-Za-z])")
_LEADING = re.compile(r"^\(?([A-Z])(?:[.:)]|\)\s)")


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def parse_letter(reply: str, options: Mapping[str, str]) -> str | None:
    """The option letter a reply gives, or None.

    Tried in order: a bare letter ("B", "B.", "(B)"); a stated answer ("The answer is B", "Answer: (B)");
    a reply that opens with a letter ("B. No", "(B) No"); the text of exactly one option (whole words,
    case and punctuation ignored; an exact match wins over containment).

    Args:
        reply: The model's reply.
        options: Letter -> option text.

    Returns:
        A letter of ``options``, or None when the reply gives none or is ambiguous.
    """
    text = reply.strip()
    for pattern in (_BARE, _STATED, _LEADING):
        match = pattern.search(text) if pattern is _STATED else pattern.match(text)
        if match and match.group(1).upper() in options:
            return match.group(1).upper()
    said = _normalized(text)
    exact = [letter for letter, option in options.items() if _normalized(option) == said and said]
    if len(exact) == 1:
        return exact[0]
    contained = [
        letter
        for letter, option in options.items()
        if _normalized(option) and re.search(rf"\b{re.escape(_normalized(option))}\b", said)
    ]
    return contained[0] if len(contained) == 1 else None


def _yes_like(text: str) -> bool | None:
    """True for a "Yes" option, False for a "No" option, None otherwise (Anomaly Detection questions)."""
    words = _normalized(text).split()
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


def _safe(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def anomaly_detection_metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Precision, recall, F1, overkill and miss rates of the Anomaly Detection questions.

    "Anomalous" is the option whose text starts with "Yes". A question whose options are not a yes and a no,
    or whose reply gave no letter, is counted (``unclassifiable``, ``unparseable``) and left out of the rates.
    A rate with a zero denominator is None.

    Args:
        results: ``mmad.jsonl`` records of Anomaly Detection questions (``options``, ``answer``, ``letter``).
    """
    tp = fp = fn = tn = unparseable = unclassifiable = 0
    for record in results:
        options = record["options"]
        truth = _yes_like(options[record["answer"]])
        if truth is None or not any(_yes_like(v) is (not truth) for v in options.values()):
            unclassifiable += 1
            continue
        if record["letter"] is None:
            unparseable += 1
            continue
        said = _yes_like(options[record["letter"]])
        if said is None:
            unclassifiable += 1
            continue
        tp += truth and said
        fp += (not truth) and said
        fn += truth and not said
        tn += (not truth) and not said
    precision, recall = _safe(tp, tp + fp), _safe(tp, tp + fn)
    f1 = _safe(2 * tp, 2 * tp + fp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "overkill": _safe(fp, fp + tn),
        "miss": _safe(fn, fn + tp),
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "unparseable": unparseable,
        "unclassifiable": unclassifiable,
    }


def mmad_metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy per question type and per source dataset, their unweighted averages, and the AD rates.

    Args:
        results: ``mmad.jsonl`` records (``dataset``, ``type``, ``correct``, ``letter``, ``options``,
            ``answer``).

    Returns:
        ``per_type`` / ``per_dataset`` accuracy, ``per_dataset_type`` (dataset -> type -> accuracy),
        ``mean_over_types``, ``mean_over_datasets``, ``accuracy`` (over all questions), ``unparseable`` per
        type,
        ``num_questions`` per type, and ``anomaly_detection`` (see :func:`anomaly_detection_metrics`).
    """
    if not results:
        raise ValueError("no MMAD results to score")
    by_type: dict[str, list[bool]] = defaultdict(list)
    by_dataset: dict[str, list[bool]] = defaultdict(list)
    by_both: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    unparseable: dict[str, int] = defaultdict(int)
    for record in results:
        correct = bool(record["correct"])
        by_type[record["type"]].append(correct)
        by_dataset[record["dataset"]].append(correct)
        by_both[record["dataset"]][record["type"]].append(correct)
        unparseable[record["type"]] += record["letter"] is None
    per_type = {name: float(np.mean(v)) for name, v in sorted(by_type.items())}
    per_dataset = {name: float(np.mean(v)) for name, v in sorted(by_dataset.items())}
    return {
        "per_type": per_type,
        "per_dataset": per_dataset,
        "per_dataset_type": {
            d: {t: float(np.mean(v)) for t, v in sorted(types.items())}
            for d, types in sorted(by_both.items())
        },
        "mean_over_types": float(np.mean(list(per_type.values()))),
        "mean_over_datasets": float(np.mean(list(per_dataset.values()))),
        "accuracy": float(np.mean([bool(r["correct"]) for r in results])),
        "num_questions": {name: len(v) for name, v in sorted(by_type.items())},
        "unparseable": {name: unparseable[name] for name in sorted(by_type)},
        "anomaly_detection": anomaly_detection_metrics(
            [r for r in results if r["type"] == ANOMALY_DETECTION]
        ),
    }


def write_synthetic_mmad(root: str | Path, seed: int = 0) -> Path:
    """Writes ``<root>/mmad.json``: MMAD-format questions over the synthetic dataset's held-out test images.

    Uses the files ``anomaly-ov make-synthetic`` writes (``visa_dr/test_data.json``, ``visa_dr/visa_dr.json``,
    ``meta.json``) and the classes' ``train/good`` images as templates. Each image gets an Anomaly Detection
    and an Object Classification question; each anomalous image also a Defect Classification question.

    Args:
        root: The synthetic dataset root.
        seed: Seed of the option order.

    Returns:
        The written file.
    """
    root = Path(root)
    meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    detection = json.loads((root / "visa_dr" / "test_data.json").read_text(encoding="utf-8"))
    defects = {r["image"]: r["defect"] for r in json.loads((root / "visa_dr" / "visa_dr.json").read_text())}
    nouns = {name: c["noun"] for name, c in meta["categories"].items()}
    defect_types = list(meta["defect_types"])
    rng = np.random.default_rng(seed)

    def question(text: str, correct: str, wrong: Sequence[str], kind: str) -> dict[str, Any]:
        choices = [correct, *wrong]
        order = rng.permutation(len(choices))
        letters = "ABCDEFG"[: len(choices)]
        options = {letters[i]: choices[j] for i, j in enumerate(order)}
        answer = next(letter for letter, value in options.items() if value == correct)
        return {"Question": text, "Options": options, "Answer": answer, "type": kind}

    mmad: dict[str, Any] = {}
    for record in detection:
        image = record["image"]
        class_name = Path(image).parts[1]
        templates = sorted(
            str(p.relative_to(root)) for p in (root / "mvtec" / class_name / "train" / "good").glob("*.png")
        )
        others = [nouns[c] for c in sorted(nouns) if c != class_name]
        wrong_objects = [str(x) for x in rng.choice(others, size=3, replace=False)]
        conversation = [
            question(
                "Is there any defect in the object?",
                "Yes" if record["anomaly"] else "No",
                ["No" if record["anomaly"] else "Yes"],
                ANOMALY_DETECTION,
            ),
            question(
                "What kind of object is shown in the image?",
                nouns[class_name],
                wrong_objects,
                "Object Classification",
            ),
        ]
        if record["anomaly"] and image in defects:
            wrong = [d for d in defect_types if d != defects[image]][:3]
            conversation.append(
                question(
                    "What type of defect does the object have?",
                    defects[image].replace("_", " "),
                    [d.replace("_", " ") for d in wrong],
                    "Defect Classification",
                )
            )
        mmad[image] = {
            "mask_path": None,
            "similar_templates": templates[:3],
            "random_templates": templates[3:6],
            "conversation": conversation,
        }
    path = root / "mmad.json"
    path.write_text(json.dumps(mmad, indent=2) + "\n", encoding="utf-8")
    return path
