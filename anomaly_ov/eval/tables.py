"""Markdown tables in the layout of the paper's tables (Table 2: zero-shot image AUROC per dataset).

Values are percentages with one decimal, as published; a dataset a row was not evaluated on shows "–" and
is left out of that row's average.
"""

from collections.abc import Mapping, Sequence

from anomaly_ov.eval.metrics import METRIC_NAMES

TABLE2_COLUMNS: dict[str, str] = {
    "mvtec": "MVTec",
    "visa": "VisA",
    "aitex": "AITEX",
    "elpv": "ELPV",
    "btad": "BTAD",
    "mpdd": "MPDD",
    "brainmri": "BrainMRI",
    "headct": "HeadCT",
    "br35h": "Br35H",
}
"""Dataset key -> column title, in the paper's order."""

PUBLISHED_TABLE2: dict[str, dict[str, float]] = {
    "WinCLIP": dict(zip(TABLE2_COLUMNS, (91.8, 78.8, 73.0, 74.0, 68.2, 63.6, 92.6, 90.0, 80.5), strict=True)),
    "AnomalyCLIP": dict(
        zip(TABLE2_COLUMNS, (91.5, 82.1, 62.2, 81.5, 88.3, 77.0, 90.3, 93.4, 94.6), strict=True)
    ),
    "AdaCLIP": dict(zip(TABLE2_COLUMNS, (89.2, 85.8, 64.5, 79.7, 88.6, 76.0, 94.8, 91.4, 97.7), strict=True)),
    "Anomaly-OV (paper)": dict(
        zip(TABLE2_COLUMNS, (94.0, 91.1, 72.0, 83.0, 89.0, 81.7, 93.9, 97.6, 95.5), strict=True)
    ),
}
"""Zero-shot image AUROC (%) of SPEC §7's Table 2."""


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def table2(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    published: bool = False,
) -> str:
    """Renders Table 2: one row per model, one column per dataset, then the average.

    Args:
        rows: ``{model: {dataset key: image AUROC in [0, 1]}}``.
        columns: Dataset keys in column order (default: the paper's nine that any row has, in the paper's
            order, then the others sorted).
        published: Append the published rows (already in %) for comparison, when a column is one of the
            paper's datasets.

    Returns:
        A markdown table.
    """
    present = {key for values in rows.values() for key in values}
    if columns is None:
        columns = [key for key in TABLE2_COLUMNS if key in present] + sorted(present - set(TABLE2_COLUMNS))
    percent = {model: {k: 100.0 * v for k, v in values.items()} for model, values in rows.items()}
    if published and any(key in TABLE2_COLUMNS for key in columns):
        percent.update(PUBLISHED_TABLE2)
    titles = [TABLE2_COLUMNS.get(key, key) for key in columns]
    lines = [
        "| Model | " + " | ".join(titles) + " | Avg |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for model, values in percent.items():
        cells = [values.get(key) for key in columns]
        known = [v for v in cells if v is not None]
        average = sum(known) / len(known) if known else None
        lines.append(f"| {model} | " + " | ".join(_cell(v) for v in cells) + f" | {_cell(average)} |")
    return "\n".join(lines) + "\n"


def class_table(
    name: str, classes: Mapping[str, Mapping[str, float | None]], mean: Mapping[str, float]
) -> str:
    """Renders one dataset's per-class metrics (all of SPEC §6, in %) with the class mean as last row.

    Args:
        name: Dataset name (the heading).
        classes: ``{class: {metric: value in [0, 1] or None}}``.
        mean: ``{metric: mean over classes}``.
    """
    metrics = [m for m in METRIC_NAMES if any(values.get(m) is not None for values in classes.values())]
    lines = [
        f"### {name}",
        "",
        "| Class | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]

    def row(title: str, values: Mapping[str, float | None]) -> str:
        cells = [None if values.get(m) is None else 100.0 * values[m] for m in metrics]
        return f"| {title} | " + " | ".join(_cell(v) for v in cells) + " |"

    lines += [row(class_name, values) for class_name, values in classes.items()]
    lines.append(row("**mean**", mean))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- Tables 1 and 2 beside the paper

TABLE1_COLUMNS: dict[str, str] = {
    "mvtec": "MVTec",
    "visa": "VisA",
    "headct": "HeadCT",
    "brainmri": "BrainMRI",
}
"""Table 1's columns (image AUROC), in the paper's order."""

PUBLISHED_TABLE1: dict[str, dict[str, float]] = {
    row: dict(zip(TABLE1_COLUMNS, values, strict=True))
    for row, values in {
        "full": (94.0, 91.1, 97.6, 93.9),
        "w/o look-back": (92.8, 90.5, 96.6, 93.5),
        "w/o learned prompts": (92.1, 90.1, 94.7, 92.9),
        "w/o Q-Former": (91.7, 89.9, 92.8, 95.1),
        "w/o WebAD": (88.5, 88.9, 91.2, 93.4),
    }.items()
}
"""The expert ablation of SPEC §7 (image AUROC, %), by row."""

PAPER_ROW = "Anomaly-OV (paper)"


def _delta(ours: float | None, published: float | None) -> str:
    if ours is None or published is None:
        return "–"
    return f"{ours - published:+.1f}"


def _average(values: Mapping[str, float | None], columns: Sequence[str]) -> float | None:
    # an average over fewer columns than the paper's would not be comparable with its Avg
    cells = [values.get(key) for key in columns]
    return None if any(v is None for v in cells) else sum(cells) / len(cells)


def table2_beside_paper(ours: Mapping[str, float | None]) -> str:
    """Table 2 in the paper's layout: the compared methods, the paper's Anomaly-OV, ours and the difference.

    Args:
        ours: ``{dataset key: image AUROC in %}`` (None or absent: not measured, shown as "–"; the average
            is shown only when all nine datasets are measured).

    Returns:
        A markdown table.
    """
    columns = list(TABLE2_COLUMNS)
    titles = [TABLE2_COLUMNS[key] for key in columns]
    lines = ["| Model | " + " | ".join(titles) + " | Avg |", "|---|" + "---|" * (len(columns) + 1)]
    for model, values in PUBLISHED_TABLE2.items():
        cells = [_cell(values[key]) for key in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {_cell(_average(values, columns))} |")
    paper = PUBLISHED_TABLE2[PAPER_ROW]
    mine = _average(ours, columns)
    lines.append(
        "| **Anomaly-OV (ours)** | " + " | ".join(_cell(ours.get(k)) for k in columns) + f" | {_cell(mine)} |"
    )
    deltas = [_delta(ours.get(k), paper[k]) for k in columns]
    lines.append(
        "| Δ ours − paper | " + " | ".join(deltas) + f" | {_delta(mine, _average(paper, columns))} |"
    )
    return "\n".join(lines) + "\n"


def table1_beside_paper(ours: Mapping[str, Mapping[str, float | None]]) -> str:
    """Table 1 (expert ablation) in the paper's layout: per row the paper, ours and the difference.

    Args:
        ours: ``{row: {dataset key: image AUROC in %}}`` with the rows of :data:`PUBLISHED_TABLE1`.

    Returns:
        A markdown table.
    """
    columns = list(TABLE1_COLUMNS)
    lines = [
        "| Expert | | " + " | ".join(TABLE1_COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row, paper in PUBLISHED_TABLE1.items():
        mine = ours.get(row, {})
        lines.append(f"| {row} | paper | " + " | ".join(_cell(paper[k]) for k in columns) + " |")
        lines.append("| | **ours** | " + " | ".join(_cell(mine.get(k)) for k in columns) + " |")
        lines.append("| | Δ | " + " | ".join(_delta(mine.get(k), paper[k]) for k in columns) + " |")
    return "\n".join(lines) + "\n"
