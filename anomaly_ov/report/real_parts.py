"""The report's zero-shot section on real data: ELPV in Table 2's layout beside the published rows and the
darkness baseline (all / mono / poly cells), and the pretrained tower against a randomly initialised one.

Everything comes from files the pipeline wrote: each evaluation's ``metrics.json`` and ``scores.jsonl``
(every image's score), and the ELPV images those scores name (the darkness baseline is computed on exactly
the cells that were evaluated; their mono / poly type from the ``labels.csv`` beside ``images/``).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_ov.data.prepare.elpv import cell_types
from anomaly_ov.data.zsad import sample
from anomaly_ov.eval.baselines import baseline_aurocs
from anomaly_ov.eval.metrics import image_auroc
from anomaly_ov.eval.tables import PUBLISHED_TABLE2
from anomaly_ov.report.inputs import ReportInputError, read_json, read_jsonl

ELPV = "elpv"
"""The dataset name of ELPV in the evaluations (``configs/data/synthetic_transfer.yaml``)."""
ELPV_QUARTER = "elpv_quarter"
"""Every 4th ELPV cell: the dataset the demo's random-tower control is evaluated on."""
GROUPS: tuple[str, ...] = ("all", "mono", "poly")


@dataclass(frozen=True)
class ZeroShotScores:
    """One zero-shot evaluation as the section reads it.

    Attributes:
        folder: The eval_zsad output folder.
        means: Per dataset, its mean image AUROC (over classes).
        rows: The rows of ``scores.jsonl`` (dataset, image, class, label, score).
    """

    folder: Path
    means: dict[str, float]
    rows: list[dict[str, Any]]

    def group_aurocs(self, dataset: str, types: Mapping[str, str]) -> dict[str, float]:
        """Image AUROC of a one-class dataset on all its images and per cell type."""
        rows = [row for row in self.rows if row["dataset"] == dataset]
        labels = np.asarray([row["label"] for row in rows], dtype=bool)
        scores = np.asarray([row["score"] for row in rows], dtype=np.float64)
        kinds = np.asarray([types.get(Path(row["image"]).name, "?") for row in rows])
        result = {}
        for group in GROUPS:
            chosen = np.ones(len(rows), bool) if group == "all" else kinds == group
            result[group] = image_auroc(labels[chosen], scores[chosen], context=f"{dataset} {group}")
        return result


def read_zero_shot_scores(folder: str | Path) -> ZeroShotScores:
    """Reads ``metrics.json`` and ``scores.jsonl`` of an eval_zsad output folder.

    Raises:
        ReportInputError: A file is missing or malformed (named).
    """
    folder = Path(folder)
    metrics = read_json(folder / "metrics.json")
    try:
        means = {name: float(data["mean"]["image_auroc"]) for name, data in metrics["datasets"].items()}
    except (KeyError, TypeError, ValueError) as error:
        raise ReportInputError(
            f"{folder / 'metrics.json'}: no mean image AUROC per dataset ({error})"
        ) from None
    rows = read_jsonl(folder / "scores.jsonl")
    for number, row in enumerate(rows, start=1):
        if not {"dataset", "image", "label", "score"} <= set(row):
            raise ReportInputError(
                f"{folder / 'scores.jsonl'} line {number}: needs dataset, image, label, score"
            )
    return ZeroShotScores(folder, means, rows)


def _elpv_types(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    roots = {Path(row["image"]).parent.parent for row in rows if row["dataset"] == ELPV}
    types: dict[str, str] = {}
    for root in sorted(roots):
        types.update(cell_types(root))
    return types


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def real_zero_shot_section(
    pretrained: ZeroShotScores, random_tower: ZeroShotScores | None, heldout: str, row_name: str
) -> str:
    """The markdown section (see the module docstring).

    Args:
        pretrained: The evaluation of the expert on the pretrained tower (held-out classes and ELPV).
        random_tower: The same stage 1 on a randomly initialised tower of the same architecture, or None.
        heldout: The dataset name of the held-out synthetic classes.
        row_name: The name of our row in the tables.

    Raises:
        ReportInputError: The pretrained evaluation has no ELPV scores.
    """
    if ELPV not in pretrained.means:
        raise ReportInputError(
            f"{pretrained.folder}: no {ELPV!r} dataset evaluated (needed for the ELPV row)"
        )
    elpv_rows = [row for row in pretrained.rows if row["dataset"] == ELPV]
    types = _elpv_types(elpv_rows)
    ours = pretrained.group_aurocs(ELPV, types)
    samples = [sample(row["image"], row["label"], "solar_cell") for row in elpv_rows]
    kinds = {row["image"]: types.get(Path(row["image"]).name, "?") for row in elpv_rows}
    groups = {group: (lambda item, g=group: g == "all" or kinds[str(item.image)] == g) for group in GROUPS}
    darkness = {name: value["image_auroc"] for name, value in baseline_aurocs(samples, groups).items()}
    counts = {g: sum(1 for row in elpv_rows if g == "all" or kinds[row["image"]] == g) for g in GROUPS}
    anomalous = {
        g: sum(row["label"] for row in elpv_rows if g == "all" or kinds[row["image"]] == g) for g in GROUPS
    }
    lines = [
        "## Zero-shot on real data: ELPV (Table 2's column) and what pretraining brings",
        "",
        "ELPV (electroluminescence images of solar cells, from the installed `elpv-dataset` package; "
        "licence CC BY-NC-SA 4.0) is a test set here: every stage-1 setting was chosen on the synthetic "
        "held-out classes and held-out defect types, never on ELPV. A cell is anomalous when its defect "
        "probability is 1.0 (the field's rule). Image AUROC in %; the published rows are the paper's Table 2 "
        "(CLIP / SigLIP towers trained on real instruction data), ours is DINOv2-S trained on synthetic "
        "data, so the rows are not comparable as models, only as numbers on the same test set.",
        "",
        "| Model | ELPV (all) | mono | poly |",
        "|---|---|---|---|",
    ]
    for name, columns in PUBLISHED_TABLE2.items():
        lines.append(f"| {name} (published) | {columns[ELPV]:.1f} | – | – |")  # already in %
    lines.append(
        f"| **{row_name}** | **{_pct(ours['all'])}** | {_pct(ours['mono'])} | {_pct(ours['poly'])} |"
    )
    lines.append(
        f"| darkness baseline (1 − mean grey / 255, no model) | {_pct(darkness['all'])} | "
        f"{_pct(darkness['mono'])} | {_pct(darkness['poly'])} |"
    )
    lines += [
        "",
        f"Cells: {counts['all']} ({anomalous['all']} anomalous); mono {counts['mono']} "
        f"({anomalous['mono']}), poly {counts['poly']} ({anomalous['poly']}). The darkness baseline ranks "
        "cells by how dark they are (defective cells emit less light); it was fixed before any model was "
        "scored on ELPV (`anomaly_ov/eval/baselines.py`).",
        "",
    ]
    if random_tower is not None:
        # the control may see a fixed subset of the cells (elpv_quarter): the pretrained tower on those cells
        control = next((name for name in (ELPV, ELPV_QUARTER) if name in random_tower.means), None)
        control_rows = [row for row in random_tower.rows if row["dataset"] == control]
        cells = {row["image"] for row in control_rows}
        same = [row for row in elpv_rows if row["image"] in cells]
        pretrained_elpv = None
        if same:
            pretrained_elpv = image_auroc(
                np.asarray([row["label"] for row in same], bool),
                np.asarray([row["score"] for row in same], np.float64),
                context="ELPV, the control's cells",
            )
        random_elpv = random_tower.means.get(control) if control else None
        lines += [
            "### Pretrained tower vs a randomly initialised tower of the same architecture",
            "",
            "The same stage 1 (data, recipe, seed) on DINOv2-S's pretrained weights and on the same "
            "architecture initialised at random (no pretrained weight read): the gain from pretraining, "
            f"measured. ELPV here: the {len(same)} cells the control was evaluated on.",
            "",
            "| Tower | held-out synthetic classes | ELPV (same cells) |",
            "|---|---|---|",
            f"| pretrained DINOv2-S | {_pct(pretrained.means.get(heldout))} | {_pct(pretrained_elpv)} |",
            f"| random DINOv2-S (same architecture) | {_pct(random_tower.means.get(heldout))} | "
            f"{_pct(random_elpv)} |",
        ]
        if heldout in pretrained.means and heldout in random_tower.means and pretrained_elpv is not None:
            gain_heldout = pretrained.means[heldout] - random_tower.means[heldout]
            gain_elpv = pretrained_elpv - (random_elpv or 0.0)
            lines += [
                "",
                f"Gain from pretraining: {100 * gain_heldout:+.1f} points on the held-out classes, "
                f"{100 * gain_elpv:+.1f} on ELPV (evaluations: `{pretrained.folder}`, "
                f"`{random_tower.folder}`).",
                "",
            ]
    return "\n".join(lines) + "\n"
