"""The demo's data split: which training-class images stage 2 tunes on and which it never sees.

The synthetic ``instruct.json`` holds every image of the six training classes (train and test splits). To
measure the tuned model on *unseen images of the classes it was tuned on* (beside the held-out classes of
``visa_dr/test_data.json``), the demo keeps back every second test image of each training class (in file
order, so both normal and anomalous ones): stage 2 tunes on the rest (``tune.json``) plus, for each of those
images, the VisA-D&R detection prompt answered "Yes." or "No." from its label, balanced between the two
(``detect.json``; the synthetic ``instruct.json`` asks that prompt of only a fifth of its images, too few for
the tiny LLM to learn the answer in the demo's budget). The mixture ``mixture.yaml`` names both files, and
``train_classes_test.json`` (VisA-D&R detection format, ``{image, anomaly}``) lists the
kept-back images. ``detection_all.json`` joins them with the held-out classes' detection records, so one
detection run scores both groups. Stage 1 (the expert) was trained on all of ``instruct.json``: for the expert
these images are not unseen, which the report states.

    python -m anomaly_ov.report.demo_data --synthetic outputs/synthetic --out outputs/demo_data
"""

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_ov.data.synthetic.text import DETECTION_PROMPT

TUNE_NAME = "tune.json"
DETECT_NAME = "detect.json"
MIXTURE_NAME = "mixture.yaml"
TURNS_NAME = "detect_turns.json"
TURNS_MIXTURE_NAME = "mixture_turns.yaml"
TRAIN_CLASSES_NAME = "train_classes_test.json"
ALL_NAME = "detection_all.json"
HELDOUT_NAME = "heldout_test.json"
REASONING_NAME = "reasoning.json"
PREDICT_NAME = "predict_images.txt"
IMAGES_DIR = "images"
SPLIT_NAME = "split.json"


@dataclass(frozen=True)
class DemoSplit:
    """The files written by :func:`split_instruct`.

    Attributes:
        tune_json: Instruction records stage 2 tunes on.
        detect_json: The detection prompt with its "Yes."/"No." answer for images of ``tune_json`` (balanced).
        mixture_yaml: The mixture naming ``tune_json`` and ``detect_json`` (``sampling_strategy: all``).
        turns_json: One conversation per image of ``tune_json`` that asks the detection prompt first and
            then the record's own questions, balanced (:func:`_detection_first_records`).
        turns_mixture_yaml: The mixture naming ``turns_json`` alone (the real zoo's recipe).
        train_classes_json: Kept-back test images of the training classes (detection format).
        detection_all_json: The kept-back images followed by the held-out classes' detection records (each
            group subsampled, see :func:`split_instruct`) and the ELPV cells (with ``elpv_images``); its image
            paths are relative to ``image_root``.
        heldout_json: The held-out classes' detection records for the release's protocol (subsampled with
            ``release_per_class``).
        reasoning_json: The held-out classes' reasoning records (the first ``reasoning_records``, the classes
            taking turns).
        predict_txt: Absolute paths of a few images for ``anomaly-ov predict``: those of ``reasoning_json``
            and, with ELPV, two anomalous and two normal cells.
        image_root: The folder every detection file's paths are relative to: the synthetic dataset, or with
            ELPV ``<out>/images`` (links to the synthetic image folders and to the chosen ELPV cells).
        split_json: Counts and class lists (read by the report).
    """

    tune_json: Path
    detect_json: Path
    mixture_yaml: Path
    turns_json: Path
    turns_mixture_yaml: Path
    train_classes_json: Path
    detection_all_json: Path
    heldout_json: Path
    reasoning_json: Path
    predict_txt: Path
    image_root: Path
    split_json: Path


def _load_list(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the JSON list ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _is_test(record: dict[str, Any], index: int, source: Path) -> bool:
    image = record.get("image")
    if not isinstance(image, str) or "anomaly" not in record:
        raise ValueError(f"{source}: record {index} has no 'image' path or no 'anomaly' label")
    parts = Path(image).parts
    if len(parts) < 3:
        raise ValueError(f"{source}: record {index}: image {image!r} is not <root>/<class>/<split>/...")
    return parts[2] == "test"


def _detection_records(tune: list[dict[str, Any]], repeats: int = 6) -> list[dict[str, Any]]:
    """The detection prompt for the tuning images, balanced: as many "Yes." as "No." answers, ``repeats``
    times over (up to twice as many normal images as there are anomalous ones, the anomalous ones cycled).

    The training classes hold four normal images per anomalous one; unbalanced, the tiny LLM learns to
    answer "No" to everything before it learns to read the expert's tokens. Six repeats: the demo's random
    tiny LLM starts to read the expert's severity word only after a few hundred detection steps.
    """
    anomalous = [r for r in tune if r["anomaly"]]
    normal = [r for r in tune if not r["anomaly"]]
    wanted = min(len(normal), 2 * len(anomalous))
    # evenly spaced over the file, so every class keeps normal images
    chosen = [normal[(k * len(normal)) // wanted] for k in range(wanted)] if wanted else []
    cycled = [anomalous[k % len(anomalous)] for k in range(wanted)] if wanted else []
    records = []
    for record in (chosen + cycled) * repeats:
        answer = "Yes." if record["anomaly"] else "No."
        records.append(
            {
                "id": f"{record.get('id', record['image'])}_detect_{len(records)}",
                "image": record["image"],
                "conversations": [
                    {"from": "human", "value": f"<image>\n{DETECTION_PROMPT}"},
                    {"from": "gpt", "value": answer},
                ],
                "anomaly": bool(record["anomaly"]),
            }
        )
    return records


def _round_robin(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` one class at a time (classes in order of first appearance, each in file order)."""
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_class[Path(record["image"]).parts[1]].append(record)
    queues = list(by_class.values())
    return [queue[k] for k in range(max(map(len, queues), default=0)) for queue in queues if k < len(queue)]


def _detection_first_records(tune: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every anomalous image of ``tune`` and as many normal ones, each as one conversation: the detection
    prompt answered "Yes." or "No." from its label, then, for every second pair of images, the record's own
    questions and answers (a record that only asks the detection prompt adds nothing).

    On a real LLM a sample costs its image's ~260 image and anomaly positions whatever its text, so the
    detection answer and an English description share one sample: the CPU budget of the real demo allows a
    few dozen samples. Only every second pair carries the follow-up answers: a sample's loss is the mean over
    its labelled tokens, and with 30-60 answer tokens after it the Yes/No token weighs too little (measured
    on the real zoo: with follow-ups on every sample, 24 steps ranked the images well, AUROC 0.88 on the
    kept-back training-class images, but answered "No" to all of them). Anomalous and normal images
    alternate and the classes take turns, so any prefix of the file (the mixture's ``first:N``) is balanced
    and covers every class.
    """
    anomalous = _round_robin([r for r in tune if r["anomaly"]])
    normal = _round_robin([r for r in tune if not r["anomaly"]])
    records = []
    for index, pair in enumerate(zip(anomalous, normal, strict=False)):
        for record in pair:
            turns = record["conversations"] if index % 2 == 0 else []
            if turns and turns[0].get("value", "").replace("<image>", "").strip() == DETECTION_PROMPT:
                turns = turns[2:]
            rest = [dict(turn, value=turn["value"].replace("<image>\n", "", 1)) for turn in turns]
            records.append(
                {
                    "id": f"{record.get('id', record['image'])}_detect_first",
                    "image": record["image"],
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{DETECTION_PROMPT}"},
                        {"from": "gpt", "value": "Yes." if record["anomaly"] else "No."},
                        *rest,
                    ],
                    "anomaly": bool(record["anomaly"]),
                }
            )
    return records


def _evenly(records: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` records evenly spaced over ``records`` (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    return [records[(k * len(records)) // count] for k in range(count)]


def _per_class(records: list[dict[str, Any]], per_class: int | None) -> list[dict[str, Any]]:
    """Up to ``per_class`` records of each class, half anomalous (as far as the class has them), evenly
    spaced over the file, in file order; None keeps every record.
    """
    if per_class is None:
        return list(records)
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_class[Path(record["image"]).parts[1]].append(record)
    kept: set[int] = set()
    for group in by_class.values():
        anomalous = [r for r in group if r["anomaly"]]
        normal = [r for r in group if not r["anomaly"]]
        take = min(len(anomalous), per_class // 2)
        take_normal = min(len(normal), per_class - take)
        take = min(len(anomalous), per_class - take_normal)
        kept.update(id(r) for r in _evenly(anomalous, take) + _evenly(normal, take_normal))
    return [r for r in records if id(r) in kept]


def _elpv_records(images: Path, count: int) -> list[dict[str, Any]]:
    """``count`` ELPV cells of the installed package, half anomalous by the field's rule (probability 1.0),
    evenly spaced over ``labels.csv``; each linked as ``images/elpv/solar_cell/<file>``.

    Raises:
        ElpvPackageError: If the package is missing or incomplete (naming the file and the pip line).
    """
    from anomaly_ov.data.prepare.elpv import CLASS_NAME, installed_elpv_root, read_elpv

    samples = read_elpv(installed_elpv_root(), "certain")
    anomalous = [s for s in samples if s.label]
    normal = [s for s in samples if not s.label]
    chosen = _evenly(anomalous, count // 2) + _evenly(normal, count - count // 2)
    folder = images / "elpv" / CLASS_NAME
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for cell in sorted(chosen, key=lambda s: s.images[0].name):
        link = folder / cell.images[0].name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(cell.images[0])
        records.append({"image": f"elpv/{CLASS_NAME}/{link.name}", "anomaly": bool(cell.label)})
    return records


def _link_synthetic(images: Path, root: Path, records: list[dict[str, Any]]) -> None:
    """Links each top folder of the synthetic dataset that ``records`` use into ``images``."""
    images.mkdir(parents=True, exist_ok=True)
    for top in sorted({Path(r["image"]).parts[0] for r in records}):
        link = images / top
        if link.is_symlink():
            link.unlink()
        link.symlink_to(root / top, target_is_directory=True)


def split_instruct(
    synthetic_root: str | Path,
    out_dir: str | Path,
    turns_samples: int | None = None,
    eval_per_class: int | None = None,
    kept_back_per_class: int | None = None,
    release_per_class: int | None = None,
    elpv_images: int | None = None,
    reasoning_records: int | None = None,
) -> DemoSplit:
    """Writes the demo's tuning file, mixture and detection files (see the module docstring).

    Args:
        synthetic_root: The synthetic dataset (``anomaly-ov make-synthetic``): ``instruct.json`` and
            ``visa_dr/test_data.json``; image paths are relative to it.
        out_dir: Where the files go (created).
        turns_samples: ``mixture_turns.yaml`` takes the first this many conversations of
            ``detect_turns.json`` (``first:N``; balanced, every class); None: all of them.
        eval_per_class: ``detection_all_json`` holds at most this many images of each held-out class (half
            anomalous where the class has them); None: every one.
        kept_back_per_class: The same for the kept-back images of each training class (None: as
            ``eval_per_class``); the kept-back images stay out of stage 2 either way.
        release_per_class: The same for ``heldout_json`` (None: as ``eval_per_class``).
        elpv_images: Also evaluate this many cells of the installed ELPV package (half anomalous); None: no
            ELPV.
        reasoning_records: Reasoning records of the held-out classes to keep; None: all.

    Returns:
        The paths written.

    Raises:
        ValueError: A file that is not a JSON list, a record without ``image``/``anomaly`` (named by file and
            index), or a training class with fewer than two test images (nothing to keep back).
        ElpvPackageError: ``elpv_images`` without a complete ``elpv-dataset`` package.
    """
    root = Path(synthetic_root).resolve()
    out = Path(out_dir).resolve()
    instruct_path = root / "instruct.json"
    heldout_path = root / "visa_dr" / "test_data.json"
    instruct = _load_list(instruct_path)
    heldout = _load_list(heldout_path)
    reasoning_path = root / "visa_dr" / "visa_dr.json"
    reasoning = _round_robin(_load_list(reasoning_path)) if reasoning_path.is_file() else []

    test_seen: dict[str, int] = defaultdict(int)
    tune: list[dict[str, Any]] = []
    kept_back: list[dict[str, Any]] = []
    for index, record in enumerate(instruct):
        if _is_test(record, index, instruct_path):
            name = Path(record["image"]).parts[1]
            test_seen[name] += 1
            if test_seen[name] % 2 == 0:  # every second test image of the class, normal and anomalous alike
                kept_back.append({"image": record["image"], "anomaly": bool(record["anomaly"])})
                continue
        tune.append(record)
    short = sorted(name for name, count in test_seen.items() if count < 2)
    if short or not test_seen:
        raise ValueError(
            f"{instruct_path}: classes with fewer than two test images to split: {short or 'all'}"
        )

    out.mkdir(parents=True, exist_ok=True)
    split = DemoSplit(
        out / TUNE_NAME,
        out / DETECT_NAME,
        out / MIXTURE_NAME,
        out / TURNS_NAME,
        out / TURNS_MIXTURE_NAME,
        out / TRAIN_CLASSES_NAME,
        out / ALL_NAME,
        out / HELDOUT_NAME,
        out / REASONING_NAME,
        out / PREDICT_NAME,
        root if elpv_images is None else out / IMAGES_DIR,
        out / SPLIT_NAME,
    )
    detect = _detection_records(tune)
    split.tune_json.write_text(json.dumps(tune, indent=1) + "\n", encoding="utf-8")
    split.detect_json.write_text(json.dumps(detect, indent=1) + "\n", encoding="utf-8")
    split.mixture_yaml.write_text(
        "# the demo's stage-2 mixture (anomaly_ov.report.demo_data): instruct.json minus the kept-back\n"
        "# images, and the detection prompt for each of its images\n"
        f"datasets:\n  - json_path: {split.tune_json}\n    sampling_strategy: all\n"
        f"  - json_path: {split.detect_json}\n    sampling_strategy: all\n",
        encoding="utf-8",
    )
    turns = _detection_first_records(tune)
    split.turns_json.write_text(json.dumps(turns, indent=1) + "\n", encoding="utf-8")
    split.turns_mixture_yaml.write_text(
        "# the real demo's stage-2 mixture (anomaly_ov.report.demo_data): one conversation per tuning\n"
        "# image, the detection prompt first, then the image's own questions; balanced and alternating, so\n"
        "# first:N is balanced too\n"
        f"datasets:\n  - json_path: {split.turns_json}\n"
        f"    sampling_strategy: {'all' if turns_samples is None else f'first:{turns_samples}'}\n",
        encoding="utf-8",
    )
    split.train_classes_json.write_text(json.dumps(kept_back, indent=1) + "\n", encoding="utf-8")
    evaluated_back = _per_class(
        kept_back, eval_per_class if kept_back_per_class is None else kept_back_per_class
    )
    evaluated_heldout = _per_class(heldout, eval_per_class)
    release = _per_class(heldout, eval_per_class if release_per_class is None else release_per_class)
    elpv = []
    if elpv_images is not None:
        _link_synthetic(split.image_root, root, evaluated_back + evaluated_heldout)
        elpv = _elpv_records(split.image_root, elpv_images)
    everything = evaluated_back + evaluated_heldout + elpv
    split.detection_all_json.write_text(json.dumps(everything, indent=1) + "\n", encoding="utf-8")
    split.heldout_json.write_text(json.dumps(release, indent=1) + "\n", encoding="utf-8")
    kept_reasoning = reasoning if reasoning_records is None else reasoning[:reasoning_records]
    split.reasoning_json.write_text(json.dumps(kept_reasoning, indent=1) + "\n", encoding="utf-8")
    cells = [r for r in elpv if r["anomaly"]][:2] + [r for r in elpv if not r["anomaly"]][:2]
    predict = [root / r["image"] for r in kept_reasoning] + [split.image_root / r["image"] for r in cells]
    split.predict_txt.write_text("".join(f"{path}\n" for path in predict), encoding="utf-8")
    summary = {
        "synthetic_root": str(root),
        "tune_records": len(tune),
        "tune_anomalous": sum(bool(r["anomaly"]) for r in tune),
        "detect_records": len(detect),
        "detect_anomalous": sum(bool(r["anomaly"]) for r in detect),
        "detect_turns_records": len(turns),
        "train_classes": sorted(test_seen),
        "train_classes_test_images": len(kept_back),
        "heldout_classes": sorted({Path(r["image"]).parts[1] for r in heldout}),
        "heldout_test_images": len(heldout),
        "image_root": str(split.image_root),
        "evaluated_train_classes_images": len(evaluated_back),
        "evaluated_heldout_images": len(evaluated_heldout),
        "release_heldout_images": len(release),
        "elpv_classes": sorted({Path(r["image"]).parts[1] for r in elpv}),
        "elpv_test_images": len(elpv),
        "elpv_anomalous": sum(r["anomaly"] for r in elpv),
        "reasoning_records": len(kept_reasoning),
    }
    split.split_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return split


def main(argv: list[str] | None = None) -> int:
    """``python -m anomaly_ov.report.demo_data --synthetic DIR --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", required=True, help="the synthetic dataset folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--turns-samples",
        type=int,
        default=None,
        help="conversations of detect_turns.json that mixture_turns.yaml takes (default: all)",
    )
    parser.add_argument(
        "--eval-per-class", type=int, default=None, help="held-out images per class, fast path (default: all)"
    )
    parser.add_argument(
        "--kept-back-per-class", type=int, default=None, help="kept-back images per class (default: as above)"
    )
    parser.add_argument(
        "--release-per-class", type=int, default=None, help="held-out images per class, release protocol"
    )
    parser.add_argument(
        "--elpv", type=int, default=None, help="also evaluate this many ELPV cells (default: none)"
    )
    parser.add_argument(
        "--reasoning-records", type=int, default=None, help="reasoning records kept (default: all)"
    )
    args = parser.parse_args(argv)
    split = split_instruct(
        args.synthetic,
        args.out,
        args.turns_samples,
        args.eval_per_class,
        args.kept_back_per_class,
        args.release_per_class,
        args.elpv,
        args.reasoning_records,
    )
    summary = json.loads(split.split_json.read_text(encoding="utf-8"))
    print(
        f"demo split -> {args.out}: tune on {summary['tune_records']} records; "
        f"{summary['train_classes_test_images']} kept-back test images of the training classes, "
        f"{summary['heldout_test_images']} of the held-out classes; evaluated: "
        f"{summary['evaluated_train_classes_images']} kept-back, {summary['evaluated_heldout_images']} "
        f"held-out, {summary['elpv_test_images']} ELPV images"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
