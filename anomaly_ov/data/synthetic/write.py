"""Writing the synthetic dataset: the MVTec AD folder layout, the instruction and benchmark files, meta.json
(the layout is in the docstring of :mod:`anomaly_ov.data.synthetic`), and the ``make-synthetic`` command.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_ov.data.synthetic.render import CATEGORIES, DEFECT_TYPES, Category, render_sample, role_code
from anomaly_ov.data.synthetic.text import (
    DETECTION_PROMPT,
    Facts,
    describe_location,
    describe_size,
    instruction_conversation,
    reasoning_questions,
)
from anomaly_ov.data.synthetic.transfer import (
    HELDOUT_DEFECT_TYPES,
    TRAIN_DEFECT_TYPES,
    TRANSFER_CATEGORIES,
    TRANSFER_DEFECT_TYPES,
    render_transfer_sample,
)

# meta.json names the generator by its public module (as before the package split: same seed, same bytes).
_GENERATOR = "anomaly_ov.data.synthetic"

OWNED_ENTRIES: tuple[str, ...] = ("mvtec", "visa_dr", "instruct.json", "meta.json")
"""What the generator writes under its root; ``overwrite=True`` deletes exactly these."""


@dataclass(frozen=True)
class Scale:
    """How much to generate per class.

    Attributes:
        image_size: side of the square images in pixels.
        train_good: normal training images per class.
        test_good: normal test images per class.
        anomalous: anomalous test images per class (spread round-robin over the class's defect types).
        profile: "classic" (:mod:`~anomaly_ov.data.synthetic.render`: nine classes, six defect types) or
            "transfer" (:mod:`~anomaly_ov.data.synthetic.transfer`: sixteen classes, grey and colour, ten
            defect types from faint to strong, training and held-out defect types).
        heldout_anomalous: anomalous test images per held-out class (None: ``anomalous``).

    """

    image_size: int
    train_good: int
    test_good: int
    anomalous: int
    profile: str = "classic"
    heldout_anomalous: int | None = None


@dataclass(frozen=True)
class Profile:
    """What a generator profile draws: its classes, defect types and the renderer of one sample.

    Attributes:
        categories: The classes (each with its defect types and train / held-out role).
        defect_types: Every defect type of the profile.
        render: ``render(seed, category, split, defect, index, image_size) -> (clean, image, mask)``.
        train_defect_types: The defect types of the training classes (None: no split of defect types).
        heldout_defect_types: Defect types only the held-out classes receive.
    """

    categories: tuple[Category, ...]
    defect_types: tuple[str, ...]
    render: Callable[[int, str, str, str | None, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    train_defect_types: tuple[str, ...] | None = None
    heldout_defect_types: tuple[str, ...] = ()


PROFILES: dict[str, Profile] = {
    "classic": Profile(CATEGORIES, DEFECT_TYPES, render_sample),
    "transfer": Profile(
        TRANSFER_CATEGORIES,
        TRANSFER_DEFECT_TYPES,
        render_transfer_sample,
        TRAIN_DEFECT_TYPES,
        HELDOUT_DEFECT_TYPES,
    ),
}


SCALES: dict[str, Scale] = {
    "small": Scale(image_size=64, train_good=4, test_good=2, anomalous=5),
    "default": Scale(image_size=128, train_good=20, test_good=8, anomalous=12),
    # the real-zoo demo's stage-1 data (README; the settings chosen on the held-out classes and defect types)
    "transfer": Scale(
        image_size=224, train_good=40, test_good=20, anomalous=40, profile="transfer", heldout_anomalous=40
    ),
    # a few images of the transfer profile, for the tests
    "transfer_small": Scale(
        image_size=64, train_good=3, test_good=2, anomalous=6, profile="transfer", heldout_anomalous=10
    ),
}


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate_synthetic` wrote the dataset.

    Attributes:
        root: the output root.
        mvtec_root: ``root / "mvtec"`` (MVTec AD layout, all classes).
        instruct_json: instruction records over the train classes.
        test_data_json: VisA-D&R-style detection file over the held-out classes.
        visa_dr_json: VisA-D&R-style reasoning file over the held-out classes.
        meta_json: generation settings and counts.
        train_categories: classes present in instruct.json.
        heldout_categories: classes only in the benchmark files.
        image_size: side of every image in pixels.

    """

    root: Path
    mvtec_root: Path
    instruct_json: Path
    test_data_json: Path
    visa_dr_json: Path
    meta_json: Path
    train_categories: tuple[str, ...]
    heldout_categories: tuple[str, ...]
    image_size: int


def _prepare(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"synthetic dataset output {root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        # meta.json is written last (atomically): owned entries without it are an interrupted build, redone
        entries = {entry.name for entry in root.iterdir()}
        interrupted = "meta.json" not in entries and entries <= {*OWNED_ENTRIES, ".meta.json.partial"}
        if not overwrite and not interrupted:
            raise FileExistsError(
                f"synthetic dataset output {root} is not empty; pass overwrite=True (CLI: --overwrite) to "
                f"replace the generated entries {', '.join(OWNED_ENTRIES)} there"
            )
        for name in OWNED_ENTRIES:
            entry = root / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # uint8 [H, W] -> L, [H, W, 3] -> RGB


def _write_json(value: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _samples(category: Category, plan: Scale) -> list[tuple[str, str | None, int]]:
    """(split, defect or None, index) of every image of a class; anomalies go round-robin over its defects."""
    samples: list[tuple[str, str | None, int]] = [("train", None, i) for i in range(plan.train_good)]
    samples += [("test", None, i) for i in range(plan.test_good)]
    per_defect = dict.fromkeys(category.defects, 0)
    anomalous = plan.anomalous
    if category.heldout and plan.heldout_anomalous is not None:
        anomalous = plan.heldout_anomalous
    for k in range(anomalous):
        per_defect[category.defects[k % len(category.defects)]] += 1
    samples += [("test", defect, i) for defect, count in per_defect.items() for i in range(count)]
    return samples


PARALLEL_MIN_IMAGES = 400
"""A dataset of at least this many images is rendered by one process per core
(``ANOMALY_OV_SYNTHETIC_WORKERS`` sets the count); smaller ones in this process, where starting the workers
would cost more than it saves."""


def _render_category(
    job: tuple[int, str, int, Path],
) -> list[tuple[str, str | None, int, str, Facts]]:
    """Render and save every image (and mask) of one class: ``(seed, scale, class index, root)``.

    Returns:
        ``(split, defect, index, relative path, facts)`` of each image, in :func:`_samples` order.
    """
    seed, scale, class_index, root = job
    plan = SCALES[scale]
    profile = PROFILES[plan.profile]
    category = profile.categories[class_index]
    rendered = []
    for split, defect, index in _samples(category, plan):
        _, image, mask = profile.render(seed, category.name, split, defect, index, plan.image_size)
        relative = f"mvtec/{category.name}/{split}/{defect or 'good'}/{index:03d}.png"
        _save_png(image, root / relative)
        facts = Facts(noun=category.noun, defect=defect)
        if defect is not None:
            _save_png(mask, root / f"mvtec/{category.name}/ground_truth/{defect}/{index:03d}_mask.png")
            facts = Facts(category.noun, defect, describe_location(mask), describe_size(mask))
        rendered.append((split, defect, index, relative, facts))
    return rendered


def _render_all(seed: int, scale: str, root: Path) -> list[list[tuple[str, str | None, int, str, Facts]]]:
    """:func:`_render_category` of every class, in class order, over worker processes for a large dataset
    (each sample draws from its own seeded generator, so the files are the same either way).
    """
    plan = SCALES[scale]
    categories = PROFILES[plan.profile].categories
    jobs = [(seed, scale, index, root) for index in range(len(categories))]
    images = sum(len(_samples(category, plan)) for category in categories)
    workers = int(os.environ.get("ANOMALY_OV_SYNTHETIC_WORKERS", len(os.sched_getaffinity(0))))
    if workers < 2 or images < PARALLEL_MIN_IMAGES:
        return [_render_category(job) for job in jobs]
    # spawn: the caller may hold threads (torch's pools) that a forked child would inherit locked
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return list(pool.map(_render_category, jobs))


def generate_synthetic(
    out_dir: str | Path, seed: int = 0, scale: str = "default", overwrite: bool = False
) -> SyntheticDataset:
    """Write the synthetic anomaly dataset (layout in the module docstring).

    Args:
        out_dir: the output root; created if missing.
        seed: the dataset seed; the same seed writes byte-identical files.
        scale: a key of :data:`SCALES` ("small" for tests, "default" for the demo).
        overwrite: allow a non-empty ``out_dir``; the generator then deletes only the entries it owns
            (:data:`OWNED_ENTRIES`) before writing, and leaves any other file there untouched.

    Returns:
        The paths written and the train / held-out class split.

    Raises:
        ValueError: an unknown scale or a negative seed.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False (a folder holding only the
            generator's entries without ``meta.json``, an interrupted build, is rebuilt).
        NotADirectoryError: ``out_dir`` is an existing file.

    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    root = Path(out_dir)
    _prepare(root, overwrite)
    plan = SCALES[scale]
    profile = PROFILES[plan.profile]
    size = plan.image_size
    instruct: list[dict[str, object]] = []
    detection: list[dict[str, object]] = []
    reasoning: list[dict[str, object]] = []
    counts: dict[str, dict[str, int]] = {}

    rendered = _render_all(seed, scale, root)
    for class_index, (category, images) in enumerate(zip(profile.categories, rendered, strict=True)):
        counts[category.name] = {
            "train_good": plan.train_good,
            "test_good": plan.test_good,
            "test_anomalous": sum(defect is not None for _, defect, _, _, _ in images),
        }
        for split, defect, index, relative, facts in images:
            if not category.heldout:
                role = role_code(split, None) if defect is None else 2 + profile.defect_types.index(defect)
                text_rng = np.random.default_rng([seed, 1, class_index, role, index])
                instruct.append(
                    {
                        "id": f"{category.name}_{split}_{defect or 'good'}_{index:03d}",
                        "image": relative,
                        "conversations": instruction_conversation(text_rng, facts),
                        "anomaly": defect is not None,
                        "class": category.name,
                        "defect": defect,
                    }
                )
            elif split == "test":
                detection.append({"image": relative, "anomaly": defect is not None})
                if defect is not None:
                    questions, answers = reasoning_questions(facts)
                    reasoning.append(
                        {
                            "image": relative,
                            "class": category.name,
                            "defect": defect,
                            "questions": questions,
                            "answers": answers,
                        }
                    )

    train = tuple(category.name for category in profile.categories if not category.heldout)
    heldout = tuple(category.name for category in profile.categories if category.heldout)
    dataset = SyntheticDataset(
        root=root,
        mvtec_root=root / "mvtec",
        instruct_json=root / "instruct.json",
        test_data_json=root / "visa_dr" / "test_data.json",
        visa_dr_json=root / "visa_dr" / "visa_dr.json",
        meta_json=root / "meta.json",
        train_categories=train,
        heldout_categories=heldout,
        image_size=size,
    )
    _write_json(instruct, dataset.instruct_json)
    _write_json(detection, dataset.test_data_json)
    _write_json(reasoning, dataset.visa_dr_json)
    meta = {
        "generator": _GENERATOR,
        "seed": seed,
        "scale": scale,
        "image_size": size,
        "train_categories": list(train),
        "heldout_categories": list(heldout),
        "defect_types": list(profile.defect_types),
        "categories": {
            c.name: {"kind": c.kind, "noun": c.noun, "defects": list(c.defects), "heldout": c.heldout}
            for c in profile.categories
        },
        "counts": counts,
        "records": {"instruct": len(instruct), "test_data": len(detection), "visa_dr": len(reasoning)},
        "visa_dr_prompt": DETECTION_PROMPT,
    }
    if plan.profile != "classic":  # the classic profile's meta.json stays as it always was
        meta["profile"] = plan.profile
        meta["train_defect_types"] = list(profile.train_defect_types or profile.defect_types)
        meta["heldout_defect_types"] = list(profile.heldout_defect_types)
    # last, through a rename: its presence marks a complete dataset (an interrupted one is rebuilt)
    _write_json(meta, dataset.meta_json.with_name(".meta.json.partial"))
    dataset.meta_json.with_name(".meta.json.partial").replace(dataset.meta_json)
    return dataset


def cli_main(argv: list[str] | None = None) -> int:
    """``anomaly-ov make-synthetic``: writes the synthetic dataset and prints a one-line summary.

    Args:
        argv: command-line arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success, 1 when the output directory is refused).

    """
    parser = argparse.ArgumentParser(
        prog="anomaly-ov make-synthetic",
        description="Write the synthetic anomaly dataset (the embedded default).",
    )
    parser.add_argument("--out", default="outputs/synthetic", help="output root (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: %(default)s)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="dataset size")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        dataset = generate_synthetic(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError, ValueError) as error:
        print(f"anomaly-ov make-synthetic: {error}", file=sys.stderr)
        return 1
    meta = json.loads(dataset.meta_json.read_text(encoding="utf-8"))
    images = sum(sum(count.values()) for count in meta["counts"].values())
    print(
        f"wrote synthetic dataset to {dataset.root}: {len(meta['categories'])} classes "
        f"({len(dataset.train_categories)} train, {len(dataset.heldout_categories)} held-out), "
        f"{images} images of {dataset.image_size}px, "
        f"{meta['records']['instruct']} instruction records, "
        f"{meta['records']['visa_dr']} reasoning records (seed {args.seed}, scale {args.scale}, "
        f"{time.perf_counter() - start:.1f}s)"
    )
    return 0
