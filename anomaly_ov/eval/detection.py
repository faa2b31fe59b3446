r"""VisA-D&R detection (SPEC §5): the release's protocol, the one-forward fast path, the expert alone.

The release asks every image ``<image>\\nAre there any defects for the object in the image? Please reply
with 'Yes' or 'No'.`` (ChatML, default system message, greedy decoding, batch 1, long side 1024) and counts
a reply as anomalous when it contains ``Yes`` or ``yes`` (:func:`is_yes`). Accuracy, precision, recall and F1
are computed per class (the second component of the record's image path) and averaged over classes
(:func:`detection_metrics`); a zero division gives 0, as scikit-learn's default, and is counted.

The fast path (:class:`FastDetector`) runs one forward pass per prompt and compares, at the answer's first
position, the best logit of the "Yes" tokens with the best logit of the "No" tokens (:func:`answer_tokens`).
When greedy decoding's first token is one of them it is the arg-max, so both give the same decision; its
continuous score ``sigmoid(best_yes - best_no)`` (> 0.5 exactly when the decision is "Yes") gives AUROC/AP.
Replies whose first token is neither are counted, never hidden.

Notation: ``B`` prompts in a batch, ``V`` vocabulary.
"""

import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from anomaly_ov.eval.metrics import image_auroc, image_average_precision
from anomaly_ov.eval.records import RecordChecker, image_entries, leaves_root
from anomaly_ov.models.anomaly_ov import AnomalyOV
from anomaly_ov.models.processor import AnomalyOVProcessor

DETECTION_PROMPT = (
    "<image>\nAre there any defects for the object in the image? Please reply with 'Yes' or 'No'."
)
YES_WORDS: tuple[str, ...] = ("Yes", "yes")
NO_WORDS: tuple[str, ...] = ("No", "no")
METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")


@dataclass(frozen=True)
class DetectionRecord:
    """One image of the detection file.

    Attributes:
        image: Image path relative to the benchmark root, as in the file.
        class_name: The class (second component of ``image``).
        anomaly: Ground truth.
    """

    image: str
    class_name: str
    anomaly: bool


def class_of(image: str) -> str:
    """The class of a record: the second component of its image path (``VisA/candle/...`` -> ``candle``).

    Raises:
        ValueError: If the path has fewer than three components.
    """
    parts = Path(image).parts
    if len(parts) < 3:
        raise ValueError(f"image path {image!r} has no <dataset>/<class>/... components")
    return parts[1]


def read_detection_records(
    path: str | Path, root: str | Path, skip_bad_records: bool = False, allow_outside_root: bool = False
) -> tuple[list[DetectionRecord], RecordChecker]:
    """Reads ``test_data.json`` (``[{"image": str, "anomaly": bool}, ...]``) and checks every record.

    Args:
        path: The detection file.
        root: The benchmark root the image paths are relative to.
        skip_bad_records: Skip bad records (listed in the returned checker) instead of raising.
        allow_outside_root: Read image paths that leave ``root`` (absolute, ``..``, symlinks out); refused
            by default.

    Returns:
        The usable records and the checker holding the skipped ones.

    Raises:
        BadRecordError: For a record without a string image, a boolean anomaly, a class, or an image file.
    """
    checker = RecordChecker(path, skip_bad_records)
    records = []
    seen: set[str] = set()
    for name, image, entry in image_entries(path, checker):
        if leaves_root(checker, name, root, image, allow_outside_root):
            continue
        if not isinstance(entry.get("anomaly"), bool):
            checker.bad(name, f"'anomaly' must be true or false, got {entry.get('anomaly')!r}")
            continue
        if image in seen:
            checker.bad(name, "the image is listed twice")
            continue
        try:
            class_name = class_of(image)
        except ValueError as error:
            checker.bad(name, str(error))
            continue
        if not (Path(root) / image).is_file():
            checker.bad(name, f"image file {Path(root) / image} not found")
            continue
        seen.add(image)
        records.append(DetectionRecord(image, class_name, entry["anomaly"]))
    return records, checker


def is_yes(reply: str) -> bool:
    """The release's rule: a reply is "anomalous" when it contains ``Yes`` or ``yes`` anywhere."""
    return "Yes" in reply or "yes" in reply


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids an answer's first token may take for "Yes" and for "No".

    Attributes:
        yes: Ids of the first token of "Yes", "yes", " Yes", " yes" (deduplicated; a first token that is only
            a space is left out).
        no: Ids of the first token of "No", "no", " No", " no".
    """

    yes: tuple[int, ...]
    no: tuple[int, ...]


def answer_tokens(
    tokenizer: PreTrainedTokenizerBase,
    yes_words: Sequence[str] = YES_WORDS,
    no_words: Sequence[str] = NO_WORDS,
) -> AnswerTokens:
    """The first-token ids of the yes and no words, with and without a leading space.

    Raises:
        ValueError: If a word tokenizes to nothing, or a token would count for both answers.
    """

    def first_ids(words: Sequence[str]) -> tuple[int, ...]:
        ids = []
        for word in words:
            for text in (word, f" {word}"):
                encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
                if not encoded:
                    raise ValueError(f"the tokenizer gives no token for {text!r}")
                # a vocabulary without " Yes" splits off a bare space: that token starts any word
                if tokenizer.decode(encoded[:1]).strip():
                    ids.append(int(encoded[0]))
        return tuple(sorted(set(ids)))

    yes, no = first_ids(yes_words), first_ids(no_words)
    if set(yes) & set(no):
        shared = [tokenizer.convert_ids_to_tokens(i) for i in set(yes) & set(no)]
        raise ValueError(f"tokens {shared} start both a yes word and a no word; choose other words")
    return AnswerTokens(yes=yes, no=no)


@dataclass
class FastDecision:
    """The fast path's answer for one image.

    Attributes:
        predicted: Anomalous ("Yes" tokens beat "No" tokens).
        score: ``sigmoid(best yes logit - best no logit)`` in (0, 1); > 0.5 exactly when ``predicted``.
        first_token: The arg-max token of the answer's first position (what greedy decoding writes first).
        starts_with_answer: Whether that token is one of the yes/no tokens.
        expert_score: The expert's anomaly score (None without the expert).
    """

    predicted: bool
    score: float
    first_token: int
    starts_with_answer: bool
    expert_score: float | None


class FastDetector:
    """Yes/no decisions from one forward pass per prompt (batched, left-padded).

    Args:
        model: The model (eval mode).
        processor: Its processor.
        tokens: The yes/no first-token ids (:func:`answer_tokens`).
        prompt: The detection prompt, with one ``<image>``.
    """

    def __init__(
        self,
        model: AnomalyOV,
        processor: AnomalyOVProcessor,
        tokens: AnswerTokens,
        prompt: str = DETECTION_PROMPT,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokens = tokens
        self.prompt = prompt

    @property
    def device(self) -> torch.device:
        """Where the inputs go (the LLM's input embeddings)."""
        return self.model.llava.get_input_embeddings().weight.device

    @torch.no_grad()
    def next_token_logits(
        self, images: Sequence[Image.Image], names: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of the answer's first token for each image's prompt.

        Args:
            images: One image per prompt.
            names: Their file names (for error messages).

        Returns:
            Logits [B, V] (float32, CPU) and the expert's scores [B] (None without the expert).
        """
        samples = [
            self.processor.encode(
                [{"from": "human", "value": self.prompt}],
                [image],
                add_generation_prompt=True,
                source=f"detection prompt for {name}",
                image_names=[name],
            )
            for image, name in zip(images, names, strict=True)
        ]
        batch = self.processor.collate(samples, padding_side="left")
        inputs = {key: value.to(self.device) for key, value in batch.items() if key != "labels"}
        output = self.model(**inputs, logits_to_keep=1)
        scores = output.scores
        return output.logits[:, -1].float().cpu(), None if scores is None else scores.float().cpu()

    def decide(self, images: Sequence[Image.Image], names: Sequence[str]) -> list[FastDecision]:
        """The fast decision, score and first token of each image (one batch).

        Args:
            images: One image per prompt.
            names: Their file names.

        Returns:
            One decision per image.
        """
        logits, expert_scores = self.next_token_logits(images, names)
        return decisions_from_logits(logits, self.tokens, expert_scores)


def decisions_from_logits(
    logits: torch.Tensor, tokens: AnswerTokens, expert_scores: torch.Tensor | None = None
) -> list[FastDecision]:
    """Fast-path decisions from first-position logits.

    Args:
        logits: [B, V].
        tokens: The yes/no token ids.
        expert_scores: [B] or None.

    Returns:
        One decision per row.
    """
    best_yes = logits[:, list(tokens.yes)].max(dim=1).values
    best_no = logits[:, list(tokens.no)].max(dim=1).values
    # computed from the logit difference so that a score of 0.5 is exactly a tie (decided "No")
    scores = torch.sigmoid((best_yes - best_no).double())
    first = logits.argmax(dim=1)
    answer_ids = set(tokens.yes) | set(tokens.no)
    return [
        FastDecision(
            predicted=bool(best_yes[i] > best_no[i]),
            score=float(scores[i]),
            first_token=int(first[i]),
            starts_with_answer=int(first[i]) in answer_ids,
            expert_score=None if expert_scores is None else float(expert_scores[i]),
        )
        for i in range(logits.shape[0])
    ]


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def _ratio(
    numerator: int, denominator: int, what: str, zero_divisions: list[dict[str, str]], where: str
) -> float:
    if denominator == 0:
        # scikit-learn's default zero_division="warn": the value is 0 and a warning says so
        warnings.warn(
            f"{what} is ill-defined for {where} (no {'predicted' if what == 'precision' else 'true'} "
            "positives); set to 0.0",
            stacklevel=3,
        )
        zero_divisions.append({"class": where, "metric": what})
        return 0.0
    return numerator / denominator


def binary_metrics(
    truth: Sequence[bool], predicted: Sequence[bool], where: str, zero_divisions: list[dict[str, str]]
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of one class, anomalous = positive (scikit-learn's definitions).

    Args:
        truth: Ground truth per image.
        predicted: Decisions per image.
        where: Class name (for warnings).
        zero_divisions: Receives one entry per metric that divided by zero (it is then 0.0).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``.
    """
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"{where}: {t.size} labels and {p.size} decisions; need the same non-zero number")
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    precision = _ratio(tp, tp + fp, "precision", zero_divisions, where)
    recall = _ratio(tp, tp + fn, "recall", zero_divisions, where)
    # scikit-learn: F1 = 2tp / (2tp + fp + fn), itself ill-defined only when there is nothing positive
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, "f1", zero_divisions, where)
    return {"accuracy": float((t == p).mean()), "precision": precision, "recall": recall, "f1": f1}


def _ranking_metrics(
    truth: np.ndarray, scores: np.ndarray, classes: np.ndarray
) -> tuple[dict[str, float | None], dict[str, dict[str, float]], list[str]]:
    """Per-class AUROC and AP averaged over the classes where both labels occur."""
    per_class: dict[str, dict[str, float]] = {}
    undefined = []
    for name in sorted(set(classes.tolist())):
        selected = classes == name
        labels, values = truth[selected], scores[selected]
        if labels.all() or not labels.any():
            undefined.append(name)
            continue
        per_class[name] = {
            "auroc": image_auroc(labels, values, context=name),
            "ap": image_average_precision(labels, values, context=name),
        }
    mean = {
        key: (float(np.mean([m[key] for m in per_class.values()])) if per_class else None)
        for key in ("auroc", "ap")
    }
    return mean, per_class, undefined


def detection_metrics(
    classes: Sequence[str],
    truth: Sequence[bool],
    predicted: Sequence[bool],
    scores: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Per-class accuracy / precision / recall / F1, averaged over classes without weights (SPEC §5, §6).

    Args:
        classes: Class of each image.
        truth: Ground truth of each image.
        predicted: Decision of each image.
        scores: Optional continuous anomaly score per image (higher = more anomalous) for AUROC and AP,
            per class then averaged over the classes that hold both labels; None entries turn it off.

    Returns:
        ``mean`` (the four metrics, plus ``auroc`` and ``ap`` when scores are given), ``per_class``,
        ``num_images``, ``zero_division`` (count) and ``zero_division_cases`` (class, metric), and
        ``ranking_undefined_classes`` (classes with one label only, left out of AUROC/AP).
    """
    classes_ = np.asarray(classes, dtype=object)
    truth_ = np.asarray(truth, dtype=bool)
    predicted_ = np.asarray(predicted, dtype=bool)
    if not len(classes_) == len(truth_) == len(predicted_):
        raise ValueError(f"{len(classes_)} classes, {len(truth_)} labels, {len(predicted_)} decisions")
    if len(classes_) == 0:
        raise ValueError("no detection results to score")
    zero_divisions: list[dict[str, str]] = []
    per_class: dict[str, dict[str, float]] = {}
    for name in sorted(set(classes_.tolist())):
        selected = classes_ == name
        per_class[name] = binary_metrics(truth_[selected], predicted_[selected], name, zero_divisions)
        per_class[name]["num_images"] = int(selected.sum())
    mean: dict[str, float | None] = {
        key: float(np.mean([m[key] for m in per_class.values()])) for key in METRIC_NAMES
    }
    result: dict[str, Any] = {
        "mean": mean,
        "per_class": per_class,
        "num_images": len(classes_),
        "zero_division": len(zero_divisions),
        "zero_division_cases": zero_divisions,
    }
    if scores is not None and all(s is not None for s in scores):
        ranking, ranking_per_class, undefined = _ranking_metrics(
            truth_, np.asarray(scores, dtype=np.float64), classes_
        )
        mean.update(ranking)
        for name, values in ranking_per_class.items():
            per_class[name].update(values)
        result["ranking_undefined_classes"] = undefined
    return result


def summarize_detection(
    results: Sequence[Mapping[str, Any]], expert_threshold: float = 0.5
) -> dict[str, Any]:
    """Metrics of a finished detection run (``detection.jsonl`` records).

    Args:
        results: Records with ``class``, ``anomaly``, ``predicted``, ``score`` (or None), ``expert_score`` (or
            None), ``starts_with`` ("yes" / "no" / "other") and, in the fast path, ``first_token_is_answer``.
        expert_threshold: The expert alone says "anomalous" when its score is at least this (paper: 0.5).

    Returns:
        ``model`` (the LLM's metrics), ``expert`` (the expert alone: thresholded metrics and AUROC/AP, or None
        without the expert) and ``replies`` (how many replies start with yes, no, or otherwise).
    """
    classes = [r["class"] for r in results]
    truth = [bool(r["anomaly"]) for r in results]
    scores = [r.get("score") for r in results]
    summary: dict[str, Any] = {
        "model": detection_metrics(classes, truth, [bool(r["predicted"]) for r in results], scores),
        "expert": None,
        "replies": {
            start: sum(1 for r in results if r.get("starts_with") == start)
            for start in ("yes", "no", "other")
        },
    }
    expert_scores = [r.get("expert_score") for r in results]
    if all(s is not None for s in expert_scores):
        summary["expert"] = detection_metrics(
            classes, truth, [float(s) >= expert_threshold for s in expert_scores], expert_scores
        )
        summary["expert"]["threshold"] = expert_threshold
    return summary


def reply_start(reply: str) -> str:
    """How a reply starts: "yes" (``Yes``/``yes``), "no" (``No``/``no``) or "other" (after leading spaces)."""
    text = reply.lstrip()
    if text.startswith(YES_WORDS):
        return "yes"
    if text.startswith(NO_WORDS):
        return "no"
    return "other"


def per_class_counts(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Images per class of a result list (for reports)."""
    counts: dict[str, int] = defaultdict(int)
    for record in results:
        counts[record["class"]] += 1
    return dict(sorted(counts.items()))
