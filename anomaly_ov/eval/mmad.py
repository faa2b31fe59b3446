r"""MMAD (ICLR 2025; SPEC §5): ``mmad.json``, the questions as MMAD's own scripts ask them, and the letters.

``mmad.json`` is an object keyed by the query image's path (``<dataset>/<class>/...``, relative to the
benchmark root); each value has ``similar_templates`` / ``random_templates`` (normal images of the same class)
and ``conversation``, a list of ``{"Question", "Options": {"A": ..., ...}, "Answer": "A", "type"}``. Every
question is asked on its own, without history (their ``--record_history`` off).

What follows MMAD's evaluation code (``evaluation/examples/LLaVA_Query/llava_query.py``,
``GPT4/gpt4v.py``), each a config key of ``configs/benchmark/mmad.yaml``:

* **shots** -- the k normal templates shown before the query image are ``random_templates[:k]`` (their
  default; ``template: similar`` takes ``similar_templates[:k]``, their "similar template" setting);
* **prompt** -- their inspector instruction, ``Following is k image of normal sample:`` with the templates,
  ``Test image:`` with the query, ``Following is new question list:``, the question and one ``A. text`` line
  per option; the closing letter instruction is their ``--single-pred-prompt`` (off in their commands);
* **option order** -- their LLaVA script shuffles the options of every question (unseeded); their GPT-4o
  script keeps the file's order. :func:`shuffle_options` shuffles with a seed per question, so a rerun, a
  resume or another number of processes shows the same order;
* **letters** -- :func:`parse_mmad`: every ``\b[A-E]\b`` of the reply (their LLaVA script keeps the
  first, their GPT-4o script the last), else the option whose text is closest to the reply (difflib);
  :func:`parse_letter` is the strict alternative (the usual answer shapes only, else no letter);
* **images** -- :func:`mmad_view`: their LLaVA path fits each image into 512x512 with OpenCV's area
  resampling (sizes truncated), re-encodes it as JPEG and feeds LLaVA-OneVision one crop per image (the
  vision processor's resize to its square input, no AnyRes tiles).
"""

import difflib
import io
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import sparse

from anomaly_ov.eval.mmad_summary import ANOMALY_DETECTION, ScoredAnswer, mmad_summary
from anomaly_ov.eval.records import RecordChecker, leaves_root, load_benchmark_json

# MMAD's inspector instruction (their scripts' ``instruction``, leading and trailing newline included)
INSTRUCTION = (
    "\nYou are an industrial inspector who checks products by images. You should judge whether there is a "
    "defect in the query image and answer the questions about it.\n"
    "Answer with the option's letter from the given choices directly.\n"
)
# their --single-pred-prompt, appended after the options
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TEMPLATE_KEYS: dict[str, str] = {"random": "random_templates", "similar": "similar_templates"}
PARSERS: tuple[str, ...] = ("mmad", "strict")
LETTER_PICKS: tuple[str, ...] = ("first", "last")
PREPROCESSING: tuple[str, ...] = ("mmad", "native")
# their LLaVA and GPT scripts' image box, and OpenCV's default JPEG quality of their re-encoding
MMAD_IMAGE_BOX = (512, 512)
MMAD_JPEG_QUALITY = 95


@dataclass(frozen=True)
class MMADQuestion:
    """One question about one query image.

    Attributes:
        key: Unique id ``<image>#<question index>``.
        image: Query image path relative to the root.
        dataset: Source dataset (first path component).
        question: The question text.
        options: Letter -> option text, in the order shown.
        answer: The correct letter (of the options as shown).
        type: The question type.
        templates: The normal templates shown before the query image (paths relative to the root).
    """

    key: str
    image: str
    dataset: str
    question: str
    options: dict[str, str]
    answer: str
    type: str
    templates: tuple[str, ...] = ()


def read_mmad(
    path: str | Path,
    root: str | Path,
    shots: int = 1,
    template: str = "random",
    skip_bad_records: bool = False,
    allow_outside_root: bool = False,
) -> tuple[list[MMADQuestion], RecordChecker]:
    """Reads and checks ``mmad.json``.

    Args:
        path: The file.
        root: The benchmark root (image paths are relative to it).
        shots: Normal templates shown before the query image (0: the query alone).
        template: "random" (``random_templates[:shots]``, MMAD's default) or "similar"
            (``similar_templates[:shots]``).
        skip_bad_records: Skip bad records or questions (listed in the returned checker) instead of raising.
        allow_outside_root: Read image and template paths that leave ``root``; refused by default.

    Returns:
        The questions (options in the file's order), and the checker holding the skipped records.

    Raises:
        BadRecordError: For a missing image, fewer than ``shots`` templates that exist, a malformed
            conversation, or an answer that is not among its options.
    """
    if shots < 0:
        raise ValueError(f"shots={shots}; expected 0 (the query alone) or the number of normal templates")
    if template not in TEMPLATE_KEYS:
        raise ValueError(f"template={template!r}; expected one of {sorted(TEMPLATE_KEYS)}")
    root = Path(root)
    checker = RecordChecker(path, skip_bad_records)
    questions: list[MMADQuestion] = []
    field = TEMPLATE_KEYS[template]
    for image, entry in load_benchmark_json(path, dict).items():
        parts = Path(image).parts
        if not isinstance(entry, dict) or not isinstance(entry.get("conversation"), list):
            checker.bad(image, "the record needs a 'conversation' list")
            continue
        if len(parts) < 2:
            checker.bad(image, "the image path has no <dataset>/... component")
            continue
        if leaves_root(checker, image, root, image, allow_outside_root):
            continue
        if not (root / image).is_file():
            checker.bad(image, f"image file {root / image} not found")
            continue
        templates = tuple(t for t in (entry.get(field) or [])[:shots] if isinstance(t, str))
        if any(leaves_root(checker, image, root, t, allow_outside_root) for t in templates):
            continue
        if len(templates) < shots or not all((root / t).is_file() for t in templates):
            checker.bad(image, f"{shots}-shot needs {shots} files in '{field}'; got {list(templates)}")
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
                    templates=templates,
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


def shuffle_options(question: MMADQuestion, seed: int) -> MMADQuestion:
    """The question with its options in a seeded random order, relettered A, B, ... (answer follows).

    The order depends only on ``seed`` and the question's key, not on which process asks it or when.
    """
    items = list(question.options.items())
    random.Random(f"{seed}/{question.key}").shuffle(items)
    letters = [chr(ord("A") + i) for i in range(len(items))]
    options = {letter: text for letter, (_, text) in zip(letters, items, strict=True)}
    answer = next(letter for letter, (old, _) in zip(letters, items, strict=True) if old == question.answer)
    return replace(question, options=options, answer=answer)


def format_options(options: Mapping[str, str]) -> str:
    """``A. text`` lines, each ending with a newline, as MMAD's scripts list them."""
    return "".join(f"{letter}. {text}\n" for letter, text in options.items())


def mmad_prompt(question: MMADQuestion, letter_instruction: bool = False) -> tuple[str, list[str]]:
    """The human turn of MMAD's scripts and its image paths (templates first, then the query).

    Args:
        question: The question (options as they are to be shown).
        letter_instruction: Close with their ``--single-pred-prompt`` letter instruction.

    Returns:
        The prompt (one ``<image>`` per image) and the image paths relative to the root.
    """
    shots = len(question.templates)
    prompt = INSTRUCTION + "\n"
    if shots:
        prompt += f"Following is {shots} image of normal sample:" + "<image>\n" * shots
    prompt += "Test image: \n<image>\n"
    prompt += "Following is new question list: \n"
    prompt += f"{question.question} \n{format_options(question.options)}"
    if letter_instruction:
        prompt += "\n" + LETTER_INSTRUCTION
    return prompt, [*question.templates, question.image]


_MMAD_LETTER = re.compile(r"\b([A-E])\b")


def parse_mmad(reply: str, options: Mapping[str, str], pick: str = "first") -> tuple[str | None, bool]:
    """The letter MMAD's scripts read from a reply.

    Every standalone capital A-E counts (so "A crack" reads as A); ``pick`` chooses the first (their LLaVA
    script) or the last (their GPT-4o script). A reply without one gets the option whose text is closest to
    the whole reply (difflib's ratio, no cutoff), as their LLaVA script does.

    Args:
        reply: The model's reply.
        options: Letter -> option text, as shown.
        pick: "first" or "last".

    Returns:
        The letter (None only without options) and whether it came from the option texts.
    """
    if pick not in LETTER_PICKS:
        raise ValueError(f"pick={pick!r}; expected one of {list(LETTER_PICKS)}")
    found = _MMAD_LETTER.findall(reply)
    if found:
        return (found[0] if pick == "first" else found[-1]), False
    closest = difflib.get_close_matches(reply, list(options.values()), n=1, cutoff=0.0)
    if not closest:
        return None, False
    return next(letter for letter, text in options.items() if text == closest[0]), True


_BARE = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
# "answer", "is", "option" in any case; the letter itself must be a capital ("the answer is a dent" is no A)
_STATED = re.compile(r"\b(?i:answer)\b(?:\s+(?i:is))?\s*:?\s*(?:(?i:option)\s+)?\(?([A-Z])\)?(?![A-Za-z])")
_LEADING = re.compile(r"^\(?([A-Z])(?:[.:)]|\)\s)")


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def parse_letter(reply: str, options: Mapping[str, str]) -> str | None:
    """The option letter a reply gives, or None (the strict parser).

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


def answer_record(
    question: MMADQuestion, reply: str, parse: str = "mmad", pick: str = "first"
) -> dict[str, Any]:
    """The ``mmad.jsonl`` line of one answered question: both parsers' letters, the scored one and why.

    Args:
        question: The question as asked (options as shown).
        reply: The model's reply.
        parse: "mmad" or "strict": which letter is scored (``letter``, ``correct``).
        pick: :func:`parse_mmad`'s choice among several letters.
    """
    if parse not in PARSERS:
        raise ValueError(f"parse={parse!r}; expected one of {list(PARSERS)}")
    mmad_letter, from_text = parse_mmad(reply, question.options, pick)
    strict_letter = parse_letter(reply, question.options)
    letter = mmad_letter if parse == "mmad" else strict_letter
    return {
        "key": question.key,
        "image": question.image,
        "dataset": question.dataset,
        "type": question.type,
        "question": question.question,
        "options": question.options,
        "answer": question.answer,
        "templates": list(question.templates),
        "reply": reply,
        "letter_mmad": mmad_letter,
        "letter_mmad_from_option_text": from_text,
        "letter_strict": strict_letter,
        "letter": letter,
        "correct": letter is not None and letter == question.answer,
    }


def mmad_metrics(
    results: Sequence[Mapping[str, Any]], parse: str = "mmad", normal_flag: str = "good"
) -> dict[str, Any]:
    """MMAD's table (:func:`~anomaly_ov.eval.mmad_summary.mmad_summary`) under the configured parser, and the
    overall average and letter counts under both parsers.

    Args:
        results: ``mmad.jsonl`` records (:func:`answer_record`).
        parse: The parser of the main table: "mmad" (records without an A-E letter left out) or "strict"
            (every record counted, no letter = wrong).
        normal_flag: A query image is normal when this string is in its path.

    Returns:
        ``parse``, ``summary`` (the table and its counts), ``num_questions`` and ``parsers``: per parser its
        ``average`` (the table's overall figure) and counts -- ``mmad``: ``excluded`` (left out of the
        denominators), ``from_option_text`` (no letter in the reply, the closest option taken); ``strict``:
        ``unparseable`` (no letter: counted wrong).
    """
    if parse not in PARSERS:
        raise ValueError(f"parse={parse!r}; expected one of {list(PARSERS)}")
    if not results:
        raise ValueError("no MMAD results to score")

    def scored(key: str) -> list[ScoredAnswer]:
        return [ScoredAnswer(r["image"], r["type"], r["answer"], r[key]) for r in results]

    by_mmad = mmad_summary(scored("letter_mmad"), exclude_non_letters=True, normal_flag=normal_flag)
    by_strict = mmad_summary(scored("letter_strict"), exclude_non_letters=False, normal_flag=normal_flag)
    return {
        "parse": parse,
        "summary": by_mmad if parse == "mmad" else by_strict,
        "num_questions": len(results),
        "parsers": {
            "mmad": {
                "average": by_mmad["table"]["Average"]["Average"],
                "excluded": by_mmad["excluded"],
                "from_option_text": sum(bool(r["letter_mmad_from_option_text"]) for r in results),
            },
            "strict": {
                "average": by_strict["table"]["Average"]["Average"],
                "unparseable": sum(r["letter_strict"] is None for r in results),
            },
        },
    }


def fitted_size(width: int, height: int, box: tuple[int, int] = MMAD_IMAGE_BOX) -> tuple[int, int]:
    """(width, height) of an image fitted into ``box`` as MMAD's scripts compute it.

    The scale is ``min(box_w / w, box_h / h)`` -- small images are enlarged -- and both sides are truncated
    (``int``), in float arithmetic as theirs, so a side can come out one pixel short of the box.
    """
    scale = min(box[0] / width, box[1] / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def area_weights(source: int, target: int) -> sparse.csr_matrix:
    """The ``[target, source]`` weights of OpenCV's ``INTER_AREA`` along one axis.

    Shrinking: an output pixel is the mean of the input span it covers, ``[i * s, (i + 1) * s)`` with
    ``s = source / target``, a partly covered input pixel weighted by the covered fraction (PIL's box filter
    instead takes whole pixels by their centres, up to 25 grey levels away on average at a factor 1.5).
    Enlarging: an output pixel takes the input pixel it starts in, blended with the next one only by the part
    of it past their border (an integer factor repeats every pixel; not bilinear).
    """
    scale = source / target
    index = np.arange(target)
    if scale >= 1:
        low, high = index * scale, np.minimum((index + 1) * scale, source)
        columns = np.floor(low).astype(int)[:, None] + np.arange(int(np.ceil(scale)) + 1)
        covered = np.minimum(high[:, None], columns + 1) - np.maximum(low[:, None], columns)
        values = np.where((columns < source) & (covered > 0), covered, 0.0) / (high - low)[:, None]
    else:
        start = np.floor(index * scale).astype(int)
        past = (index + 1) - (start + 1) / scale
        past = np.where(past <= 0, 0.0, past - np.floor(past))
        columns, values = np.stack([start, start + 1], 1), np.stack([1 - past, past], 1)
    rows = np.repeat(index, columns.shape[1])
    columns = np.clip(columns, 0, source - 1).ravel()
    return sparse.csr_matrix((values.ravel(), (rows, columns)), shape=(target, source))


def mmad_fit(image: Image.Image) -> Image.Image:
    """An image fitted into 512x512 as MMAD's scripts do (:func:`fitted_size`, OpenCV's ``INTER_AREA``).

    Separable :func:`area_weights` in float64, rounded half up to 8 bits; on random images of 13 sizes from
    100x60 to 3000x2000 it is within one grey level of ``cv2.resize(..., INTER_AREA)`` (4.14), nearly every
    pixel equal.
    """
    width, height = fitted_size(*image.size)
    pixels = np.asarray(image, dtype=np.float64)
    flat = pixels.reshape(pixels.shape[0], -1)  # rows first: no copy of the large input
    flat = area_weights(pixels.shape[0], height) @ flat
    columns = flat.reshape(height, pixels.shape[1], -1).transpose(1, 0, 2).reshape(pixels.shape[1], -1)
    fitted = (area_weights(pixels.shape[1], width) @ columns).reshape(width, height, -1).transpose(1, 0, 2)
    fitted = np.clip(np.floor(fitted + 0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(fitted[:, :, 0] if pixels.ndim == 2 else fitted)


def mmad_view(image: Image.Image, crop_size: int) -> Image.Image:
    """An image as MMAD's LLaVA path hands it to LLaVA-OneVision's vision processor.

    Fitted into 512x512 (:func:`mmad_fit`), re-encoded as a JPEG of quality 95 (OpenCV's default) and
    decoded, then resized (bicubic, stretched) to the tower's ``crop_size`` square: the one crop their SigLIP
    processor makes of every image.

    Args:
        image: An RGB image as :func:`~anomaly_ov.data.images.read_image` returns it (no long-side limit).
        crop_size: The vision tower's input side.

    Returns:
        A ``crop_size`` x ``crop_size`` RGB image.
    """
    buffer = io.BytesIO()
    mmad_fit(image).save(buffer, format="JPEG", quality=MMAD_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded = decoded.convert("RGB")
    return decoded.resize((crop_size, crop_size), Image.Resampling.BICUBIC)


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
