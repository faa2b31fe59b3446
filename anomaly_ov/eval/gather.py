"""``anomaly-ov tables <runs...>``: finished runs -> the paper's Tables 1 and 2 beside the published ones.

    python scripts/train_expert.py -m experiment=table2_anomaly_ov,table2_anomaly_ov_mvtec
    python scripts/eval_zsad.py -m run_dir=<run A>,<run B>
    anomaly-ov tables outputs/runs/*/* --out tables/

A *run* is a training run folder (``config.yaml``, ``expert.safetensors``, ``eval/<name>/metrics.json``;
its newest evaluation is used) or one evaluation folder (``metrics.json``, as
:func:`anomaly_ov.recipes.eval_zsad.eval_zsad` writes it). The run's ``task_name`` (its experiment file)
says which table row and which columns it gives (:data:`EXPERIMENT_ROWS`): one row of Table 2 and of
Table 1 joins two runs -- the main run (every column but MVTec AD) and its MVTec-swap run (``*_mvtec``).

A run that is unfinished, from another experiment, not zero-shot (``allow_seen``), an older run of an
experiment given twice, or whose model differs from its row's other run is listed as skipped with the
reason, never mixed into a row. Writes ``table1.md``, ``table2.md``, ``tables.json`` and a bar chart of ours
vs published per dataset (``table1.png``, ``table2.png``).
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from anomaly_ov.eval.tables import (
    PAPER_ROW,
    PUBLISHED_TABLE1,
    PUBLISHED_TABLE2,
    TABLE1_COLUMNS,
    TABLE2_COLUMNS,
    table1_beside_paper,
    table2_beside_paper,
)

MVTEC = "mvtec"

# task_name -> (table, row); a *_mvtec experiment gives its row's MVTec AD column, the other its other columns
EXPERIMENT_ROWS: dict[str, tuple[str, str]] = {
    "table2_anomaly_ov": ("both", "full"),
    "table2_anomaly_ov_mvtec": ("both", "full"),
    "table1_no_lookback": ("table1", "w/o look-back"),
    "table1_no_lookback_mvtec": ("table1", "w/o look-back"),
    "table1_no_prompts": ("table1", "w/o learned prompts"),
    "table1_no_prompts_mvtec": ("table1", "w/o learned prompts"),
    "table1_no_qformer": ("table1", "w/o Q-Former"),
    "table1_no_qformer_mvtec": ("table1", "w/o Q-Former"),
    "table1_no_webad": ("table1", "w/o WebAD"),
    "table1_no_webad_mvtec": ("table1", "w/o WebAD"),
}
"""The experiment files (``configs/experiment/``) behind each table row."""


@dataclass
class RunResult:
    """One finished, usable evaluation.

    Attributes:
        path: The folder given on the command line.
        metrics_path: Its ``metrics.json``.
        task_name: The training run's experiment.
        model: The training run's resolved model config (to check that a row's two runs agree).
        aurocs: ``{dataset: image AUROC in %}`` of the datasets it evaluated.
        notes: Remarks for the tables (failed classes, datasets without a number).
    """

    path: Path
    metrics_path: Path
    task_name: str
    model: dict | None
    aurocs: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def is_swap(self) -> bool:
        """Whether this is an MVTec-swap run (its row's MVTec AD column)."""
        return self.task_name.endswith("_mvtec")


@dataclass
class Gathered:
    """What the tables are made of.

    Attributes:
        table1: ``{row: {dataset: AUROC %}}``.
        table2: ``{dataset: AUROC %}`` of the Anomaly-OV row.
        sources: ``{row: [metrics.json used]}``.
        skipped: ``[(folder, reason)]``.
        notes: Remarks per row.
    """

    table1: dict[str, dict[str, float]] = field(default_factory=dict)
    table2: dict[str, float] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)


class SkippedRunError(Exception):
    """A run folder that cannot give a table cell, with the reason."""


def _newest_evaluation(run: Path) -> Path:
    evaluations = sorted(run.glob("eval/*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not evaluations:
        if not (run / "expert.safetensors").is_file():
            raise SkippedRunError("unfinished: training has not written expert.safetensors")
        raise SkippedRunError(f"unfinished: not evaluated yet (python scripts/eval_zsad.py run_dir={run})")
    return evaluations[-1]


def read_run(path: Path) -> RunResult:
    """Reads one run folder (training run or evaluation folder).

    Raises:
        SkippedRunError: With the reason it cannot be used.
    """
    if not path.is_dir():
        raise SkippedRunError("not a folder")
    metrics_path = path / "metrics.json" if (path / "metrics.json").is_file() else None
    if metrics_path is None:
        if not (path / "config.yaml").is_file():
            raise SkippedRunError("neither a training run (config.yaml) nor an evaluation (metrics.json)")
        metrics_path = _newest_evaluation(path)
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SkippedRunError(f"{metrics_path} is unreadable ({error})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("datasets"), dict):
        raise SkippedRunError(f"{metrics_path} is not an eval_zsad metrics.json (no 'datasets')")
    if metrics.get("run_dir") is None:
        raise SkippedRunError("evaluates a checkpoint, not a training run of a Table 1/2 experiment")
    config_path = Path(metrics["run_dir"]) / "config.yaml"
    if not config_path.is_file():
        raise SkippedRunError(f"its training run's {config_path} is missing")
    config = OmegaConf.to_container(OmegaConf.load(config_path))
    task_name = str(config.get("task_name"))
    if task_name not in EXPERIMENT_ROWS:
        raise SkippedRunError(
            f"from another experiment: task_name {task_name!r} is not a Table 1/2 experiment"
        )
    if metrics.get("seen_datasets_evaluated"):
        raise SkippedRunError(f"not zero-shot: trained on {metrics['seen_datasets_evaluated']} (allow_seen)")
    aurocs, notes = {}, []
    for name, result in metrics["datasets"].items():
        auroc = (result.get("mean") or {}).get("image_auroc")
        if auroc is None:
            notes.append(f"{name}: no class could be evaluated")
            continue
        aurocs[name] = 100.0 * float(auroc)
        failed = result.get("failed_classes") or {}
        if failed:
            notes.append(
                f"{name}: mean over the classes left after {len(failed)} failed ({', '.join(failed)})"
            )
    return RunResult(path, metrics_path, task_name, config.get("model"), aurocs, notes)


def gather(paths: Sequence[Path]) -> Gathered:
    """Merges runs into the tables' cells; every unusable run is listed in ``skipped`` with its reason."""
    out = Gathered()
    taken: dict[str, RunResult] = {}
    for path in paths:
        try:
            run = read_run(Path(path))
        except SkippedRunError as reason:
            out.skipped.append((str(path), str(reason)))
            continue
        earlier = taken.get(run.task_name)
        if earlier is not None:
            # the newest evaluation of an experiment is used; the other is listed, never averaged in
            older, run = sorted((earlier, run), key=lambda r: r.metrics_path.stat().st_mtime)
            out.skipped.append((str(older.path), f"an older run of {run.task_name}; used: {run.path}"))
        taken[run.task_name] = run
    by_row: dict[str, list[RunResult]] = {}
    for run in taken.values():
        by_row.setdefault(EXPERIMENT_ROWS[run.task_name][1], []).append(run)
    for row, runs in by_row.items():
        runs.sort(key=lambda r: r.is_swap)
        if len(runs) == 2 and runs[0].model != runs[1].model:
            out.skipped.append(
                (str(runs[1].path), f"its model differs from the model of {row!r}'s main run {runs[0].path}")
            )
            runs = runs[:1]
        cells: dict[str, float] = {}
        for run in runs:
            # the swap run gives MVTec AD only; the main run every other column
            given = {
                k: v for k, v in run.aurocs.items() if (k == MVTEC) == run.is_swap and k in TABLE2_COLUMNS
            }
            cells.update(given)
            notes = out.notes.setdefault(row, [])
            notes.extend(f"{run.task_name}: {note}" for note in run.notes)
            if not given:
                notes.append(
                    f"{run.task_name}: none of its datasets {sorted(run.aurocs)} is a column of this row"
                )
        out.sources[row] = [str(run.metrics_path) for run in runs]
        out.table1[row] = {k: v for k, v in cells.items() if k in TABLE1_COLUMNS}
        if row == "full":
            out.table2 = {k: v for k, v in cells.items() if k in TABLE2_COLUMNS}
    return out


def _bar_chart(path: Path, title: str, groups: dict[str, tuple[dict[str, float], dict[str, float]]]) -> Path:
    """One panel per group: ours vs published per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(groups), figsize=(max(6, 4.5 * len(groups)), 3.6), squeeze=False)
    for axis, (name, (ours, published)) in zip(axes[0], groups.items(), strict=True):
        keys = list(published)
        positions = range(len(keys))
        axis.bar([p - 0.2 for p in positions], [published[k] for k in keys], 0.4, label="published")
        # a dataset without our number gets no bar (NaN), not a bar at 0
        axis.bar([p + 0.2 for p in positions], [ours.get(k, float("nan")) for k in keys], 0.4, label="ours")
        titles = [TABLE2_COLUMNS.get(k, k) for k in keys]
        axis.set_xticks(list(positions), titles, rotation=45, ha="right")
        axis.set_ylim(50, 100)
        axis.set_title(name)
        axis.set_ylabel("image AUROC (%)")
    axes[0][0].legend(loc="lower left")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _footer(gathered: Gathered, rows: Sequence[str]) -> str:
    lines = ["", "Runs used:"]
    for row in rows:
        for source in gathered.sources.get(row, []):
            lines.append(f"- {row}: `{source}`")
        lines += [f"- {row}: {note}" for note in gathered.notes.get(row, [])]
    if gathered.skipped:
        lines += ["", "Skipped runs:"] + [f"- `{path}`: {reason}" for path, reason in gathered.skipped]
    return "\n".join(lines) + "\n"


def write_tables(gathered: Gathered, out_dir: Path) -> list[Path]:
    """Writes table1.md, table2.md, tables.json and the two bar charts; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table2 = out_dir / "table2.md"
    table2.write_text(
        "## Table 2: zero-shot image AUROC (%)\n\n"
        + table2_beside_paper(gathered.table2)
        + _footer(gathered, ["full"]),
        encoding="utf-8",
    )
    table1 = out_dir / "table1.md"
    table1.write_text(
        "## Table 1: expert ablation, image AUROC (%)\n\n"
        + table1_beside_paper(gathered.table1)
        + _footer(gathered, list(PUBLISHED_TABLE1)),
        encoding="utf-8",
    )
    merged = out_dir / "tables.json"
    merged.write_text(
        json.dumps(
            {
                "table1": gathered.table1,
                "table2": gathered.table2,
                "published_table1": PUBLISHED_TABLE1,
                "published_table2": PUBLISHED_TABLE2[PAPER_ROW],
                "sources": gathered.sources,
                "skipped": [{"path": p, "reason": r} for p, r in gathered.skipped],
                "notes": gathered.notes,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    chart2 = _bar_chart(
        out_dir / "table2.png", "Table 2", {"Anomaly-OV": (gathered.table2, PUBLISHED_TABLE2[PAPER_ROW])}
    )
    chart1 = _bar_chart(
        out_dir / "table1.png",
        "Table 1",
        {row: (gathered.table1.get(row, {}), published) for row, published in PUBLISHED_TABLE1.items()},
    )
    return [table1, table2, merged, chart1, chart2]


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``anomaly-ov tables RUN [RUN ...] [--out DIR]``; returns 0, or 1 when no run was usable."""
    parser = argparse.ArgumentParser(
        prog="anomaly-ov tables",
        description="Merges finished train_expert/eval_zsad runs into the paper's Table 1 and Table 2, "
        "with the published numbers and the difference.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders or evaluation folders")
    parser.add_argument("--out", type=Path, default=Path("tables"), help="output folder (default: tables/)")
    args = parser.parse_args(argv)
    gathered = gather(args.runs)
    for path, reason in gathered.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    files = write_tables(gathered, args.out)
    print((args.out / "table2.md").read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(f) for f in files)}")
    return 0 if gathered.sources else 1
