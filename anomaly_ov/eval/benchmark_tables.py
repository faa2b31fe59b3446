"""Markdown tables of the benchmark evaluation: the paper's Table 4 (VisA-D&R) and an MMAD accuracy table.

Table 4 gives detection accuracy / precision / recall / F1 and, for reasoning, low-level ROUGE-L, SBERT and
GPT
(judge) scores and complex-reasoning SBERT and GPT scores; the published rows (SPEC §7) are printed beside
ours. Fractions have two decimals, judge scores two decimals on their own scale, as published; a value that
was not computed shows "–".
"""

from collections.abc import Mapping
from typing import Any

TABLE4_COLUMNS: tuple[str, ...] = ("Acc", "P", "R", "F1", "R-L", "SBERT", "GPT", "SBERT(c)", "GPT(c)")

PUBLISHED_TABLE4: dict[str, tuple[float, ...]] = {
    "GPT-4o": (0.70, 0.83, 0.71, 0.68, 0.24, 0.71, 4.84, 0.81, 6.89),
    "LLaVA-OV-0.5B": (0.54, 0.70, 0.19, 0.28, 0.20, 0.63, 2.54, 0.81, 4.34),
    "LLaVA-OV-0.5B fine-tuned on Anomaly-Instruct": (0.71, 0.77, 0.84, 0.76, 0.31, 0.70, 3.69, 0.82, 5.31),
    "Anomaly-OV-0.5B": (0.79, 0.86, 0.83, 0.82, 0.33, 0.72, 3.87, 0.83, 5.67),
    "Anomaly-OV-7B": (0.79, 0.83, 0.86, 0.83, 0.34, 0.73, 4.26, 0.84, 6.34),
}
"""SPEC §7, Table 4, in :data:`TABLE4_COLUMNS` order."""

PUBLISHED_EXPERT_ALONE: dict[str, float] = {"Acc": 0.78, "F1": 0.77}
"""The expert alone thresholded at 0.5 on VisA-D&R detection (the paper's text)."""


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table4_row(
    detection: Mapping[str, Any] | None, reasoning: Mapping[str, Any] | None
) -> dict[str, float | None]:
    """One Table-4 row from the detection metrics' ``mean`` and the reasoning summary.

    Args:
        detection: ``{"accuracy", "precision", "recall", "f1"}`` (the macro averages), or None.
        reasoning: :func:`~anomaly_ov.eval.reasoning.summarize_reasoning`'s output, or None.
    """
    detection = detection or {}
    low = (reasoning or {}).get("low_level", {})
    complex_ = (reasoning or {}).get("complex", {})
    values = (
        detection.get("accuracy"),
        detection.get("precision"),
        detection.get("recall"),
        detection.get("f1"),
        low.get("rouge_l"),
        low.get("sbert"),
        low.get("judge"),
        complex_.get("sbert"),
        complex_.get("judge"),
    )
    return dict(zip(TABLE4_COLUMNS, values, strict=True))


def table4(rows: Mapping[str, Mapping[str, float | None]], published: bool = True) -> str:
    """Renders Table 4 with our rows first, then (optionally) the published ones.

    Args:
        rows: ``{row name: {column: value}}`` (columns of :data:`TABLE4_COLUMNS`; missing ones show "–").
        published: Append the published rows of SPEC §7 and the expert-alone figures.

    Returns:
        A markdown table.
    """
    lines = [
        "| Model | " + " | ".join(TABLE4_COLUMNS) + " |",
        "|---|" + "---|" * len(TABLE4_COLUMNS),
    ]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(values.get(c)) for c in TABLE4_COLUMNS) + " |")
    if published:
        for name, values in PUBLISHED_TABLE4.items():
            lines.append(f"| {name} (paper) | " + " | ".join(_cell(v) for v in values) + " |")
        expert = {c: PUBLISHED_EXPERT_ALONE.get(c) for c in TABLE4_COLUMNS}
        lines.append(
            "| Anomaly-OV expert alone, score >= 0.5 (paper) | "
            + " | ".join(_cell(expert[c]) for c in TABLE4_COLUMNS)
            + " |"
        )
    return "\n".join(lines) + "\n"


# MMAD's published 1-shot overall averages (jam-cc/MMAD all_result/*_accuracy.csv, "Average" row and column)
MMAD_PUBLISHED_1_SHOT: dict[str, float] = {"LLaVA-OneVision-7B (si)": 63.27, "GPT-4o": 74.31}


def mmad_table(name: str, metrics: Mapping[str, Any]) -> str:
    """MMAD's own table (their ``summary.py`` layout, percent): one row per source dataset and the average.

    Args:
        name: The model's name (the title line).
        metrics: :func:`~anomaly_ov.eval.mmad.mmad_metrics` output.

    Returns:
        Markdown: a title naming the parser, the dataset x type table with the average, recall, precision,
        F1, overkill and miss columns, a line with both parsers' overall averages and letter counts, and the
        published 1-shot averages.
    """
    summary = metrics["summary"]
    columns = [*summary["types"], "Average", "Recall", "Precision", "F1", "Overkill", "Miss"]
    lines = [
        f"MMAD: {name} (parse={metrics['parse']}, {summary['num_answers']} of {metrics['num_questions']} "
        "questions scored)",
        "",
        "| Dataset | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row, values in summary["table"].items():
        lines.append(f"| {row} | " + " | ".join(f"{values[c]:.1f}" for c in columns) + " |")
    by_mmad, by_strict = metrics["parsers"]["mmad"], metrics["parsers"]["strict"]
    lines += [
        "",
        f"Average with parse=mmad {by_mmad['average']:.1f} ({by_mmad['excluded']} left out without an A-E "
        f"letter, {by_mmad['from_option_text']} read from the option text); with parse=strict "
        f"{by_strict['average']:.1f} ({by_strict['unparseable']} without a letter, counted wrong).",
        "Published 1-shot averages (MMAD's tables): "
        + ", ".join(f"{model} {value:.1f}" for model, value in MMAD_PUBLISHED_1_SHOT.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"
