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
TRAIN_CLASSES_NAME = "train_classes_test.json"
ALL_NAME = "detection_all.json"
SPLIT_NAME = "split.json"


@dataclass(frozen=True)
class DemoSplit:
    """The files written by :func:`split_instruct`.

    Attributes:
        tune_json: Instruction records stage 2 tunes on.
        detect_json: The detection prompt with its "Yes."/"No." answer for images of ``tune_json`` (balanced).
        mixture_yaml: The mixture naming ``tune_json`` (``sampling_strategy: all``).
        train_classes_json: Kept-back test images of the training classes (detection format).
        detection_all_json: ``train_classes_json`` followed by the held-out classes' detection records.
        split_json: Counts and class lists (read by the report).
    """

    tune_json: Path
    detect_json: Path
    mixture_yaml: Path
    train_classes_json: Path
    detection_all_json: Path
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


def split_instruct(synthetic_root: str | Path, out_dir: str | Path) -> DemoSplit:
    """Writes the demo's tuning file, mixture and detection files (see the module docstring).

    Args:
        synthetic_root: The synthetic dataset (``anomaly-ov make-synthetic``): ``instruct.json`` and
            ``visa_dr/test_data.json``; image paths are relative to it.
        out_dir: Where the files go (created).

    Returns:
        The paths written.

    Raises:
        ValueError: A file that is not a JSON list, a record without ``image``/``anomaly`` (named by file and
            index), or a training class with fewer than two test images (nothing to keep back).
    """
    root = Path(synthetic_root).resolve()
    out = Path(out_dir).resolve()
    instruct_path = root / "instruct.json"
    heldout_path = root / "visa_dr" / "test_data.json"
    instruct = _load_list(instruct_path)
    heldout = _load_list(heldout_path)

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
        out / TRAIN_CLASSES_NAME,
        out / ALL_NAME,
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
    split.train_classes_json.write_text(json.dumps(kept_back, indent=1) + "\n", encoding="utf-8")
    split.detection_all_json.write_text(json.dumps(kept_back + heldout, indent=1) + "\n", encoding="utf-8")
    summary = {
        "synthetic_root": str(root),
        "tune_records": len(tune),
        "tune_anomalous": sum(bool(r["anomaly"]) for r in tune),
        "detect_records": len(detect),
        "detect_anomalous": sum(bool(r["anomaly"]) for r in detect),
        "train_classes": sorted(test_seen),
        "train_classes_test_images": len(kept_back),
        "heldout_classes": sorted({Path(r["image"]).parts[1] for r in heldout}),
        "heldout_test_images": len(heldout),
    }
    split.split_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return split


def main(argv: list[str] | None = None) -> int:
    """``python -m anomaly_ov.report.demo_data --synthetic DIR --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", required=True, help="the synthetic dataset folder")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    split = split_instruct(args.synthetic, args.out)
    summary = json.loads(split.split_json.read_text(encoding="utf-8"))
    print(
        f"demo split -> {args.out}: tune on {summary['tune_records']} records; "
        f"{summary['train_classes_test_images']} kept-back test images of the training classes, "
        f"{summary['heldout_test_images']} of the held-out classes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
