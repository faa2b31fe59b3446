"""The report: ``index.md`` with the PNGs it embeds and ``index.html``, built from finished run folders.

:func:`build_report` reads the folders (:mod:`anomaly_ov.report.inputs`), draws the figures
(:mod:`anomaly_ov.report.figures`), writes everything into a temporary folder beside ``out_dir`` and renames
it into place only at the end, so ``out_dir`` holds either a complete report or none (a failure leaves the
previous folder untouched and no half-written one).
"""

import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import markdown

from anomaly_ov.atomic_files import write_failure
from anomaly_ov.eval.benchmark_tables import table4, table4_row
from anomaly_ov.eval.detection import detection_metrics
from anomaly_ov.report import figures
from anomaly_ov.report.inputs import (
    BenchmarkEval,
    ReportInputError,
    Stage1Run,
    Stage2Run,
    ZeroShotEval,
    lookup,
    read_benchmark,
    read_json,
    read_jsonl,
    read_stage1,
    read_stage2,
    read_timings,
    read_zero_shot,
)
from anomaly_ov.report.real_parts import ELPV, read_zero_shot_scores, real_zero_shot_section

SAMPLE_CONVERSATIONS = 3
# what the numbers are, by the zoo the run used
ZOO_NOTES: dict[str, str] = {
    "tiny": "Numbers are what this run measured with the tiny offline models (random-weight towers and LLM) "
    "on the synthetic data: they show the pipeline and its file formats work end to end, not the published "
    "quality.",
    "real": "Numbers are what this run measured with the real offline parts (anomaly-ov make-real-zoo: "
    "DINOv2-S/14 instead of SigLIP-so400m, SmolLM2-135M-Instruct instead of Qwen2-0.5B/7B; the projector, "
    "the expert and the LoRA adapter trained here, on the synthetic data, in CPU minutes) on the synthetic "
    "data and on real ELPV solar cells: the project's own numbers on small parts, not the paper's.",
}


@dataclass(frozen=True)
class ReportInputs:
    """Where the report's numbers come from.

    Attributes:
        stage1: The stage-1 run folder.
        zero_shot: Its zero-shot evaluation folder.
        stage2: ``{model name: stage-2 run folder}`` (the tuned models).
        benchmark: ``{model name: benchmark eval folder}``: the Table-4 rows, in order (VisA-D&R, held-out).
        scores: ``{model name: eval folder}`` of fast-path detection over training-class and held-out
            images (train vs held-out accuracy, ROC curves); optional.
        split: The demo split's ``split.json`` (class lists); needed with ``scores``.
        predict: A ``predict`` output folder (``predictions.jsonl``); optional.
        chat: A chat transcript (text); optional.
        timings: ``stage<TAB>seconds`` lines; optional.
        zoo: Which offline parts produced the run: "tiny" (random weights) or "real" (the real zoo); it
            chooses what the report says its numbers are.
        random_tower: The eval_zsad folder of the same stage 1 on a randomly initialised tower (the
            pretrained-vs-random comparison); optional. With ELPV in ``zero_shot``, the report shows its
            Table-2 row beside the darkness baseline (:mod:`anomaly_ov.report.real_parts`).
    """

    stage1: Path
    zero_shot: Path
    stage2: Mapping[str, Path] = field(default_factory=dict)
    benchmark: Mapping[str, Path] = field(default_factory=dict)
    scores: Mapping[str, Path] = field(default_factory=dict)
    split: Path | None = None
    predict: Path | None = None
    chat: Path | None = None
    timings: Path | None = None
    zoo: str = "tiny"
    random_tower: Path | None = None


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _git_commit(start: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _provenance(
    stage1: Stage1Run, stage2: Mapping[str, Stage2Run], benches: Mapping[str, BenchmarkEval]
) -> str:
    """Which data and models produced the numbers."""
    config = stage1.config
    synthetic = lookup(config, "paths.synthetic_dir")
    meta_path = Path(synthetic) / "meta.json" if synthetic else None
    meta = read_json(meta_path) if meta_path and meta_path.is_file() else {}
    lines = ["## What produced these numbers", ""]
    commit = _git_commit(Path(__file__).parent)
    lines.append(f"- code: anomaly-ov{f' at commit `{commit}`' if commit else ''}")
    if meta:
        lines.append(
            f"- data: the synthetic dataset `{synthetic}` (generator `{meta.get('generator')}`, seed "
            f"{meta.get('seed')}, scale {meta.get('scale')}, {meta.get('image_size')} px); training classes "
            f"{', '.join(meta.get('train_categories', []))}; held-out classes "
            f"{', '.join(meta.get('heldout_categories', []))}"
        )
    lines.append(
        f"- stage 1: `{stage1.folder}`: expert on the tower `{lookup(config, 'model.vision.name_or_path')}` "
        f"({lookup(config, 'model.vision.dtype') or 'float32'}), seed {config.get('seed')}, "
        f"{len(stage1.losses)} steps ({len(stage1.epoch_losses)} epochs), "
        f"data {lookup(config, 'data.train')}, "
        f"checkpoint `{stage1.metrics.get('expert')}`"
    )
    for name, run in stage2.items():
        cfg, metrics = run.config, run.metrics
        expert = lookup(cfg, "model.expert")
        lines.append(
            f"- stage 2, {name}: `{run.folder}`: LLM `{lookup(cfg, 'model.llm.name_or_path')}` "
            f"({lookup(cfg, 'model.llm.dtype') or 'float32'}), seed {cfg.get('seed')}, expert "
            f"{'`' + str(expert.get('checkpoint')) + '`' if isinstance(expert, dict) else 'none'}, tuning "
            f"`{cfg.get('tuning')}`"
            + (
                f" (LoRA rank {lookup(cfg, 'model.lora.rank')}, alpha {lookup(cfg, 'model.lora.alpha')})"
                if cfg.get("tuning") == "lora"
                else ""
            )
            + f", lr {lookup(cfg, 'optimizer.lr')}, "
            f"{lookup(cfg, 'trainer.fit.epochs')} epochs, {metrics.get('total_steps')} optimizer steps on "
            f"{metrics.get('num_samples')} samples, {metrics.get('num_processes')} processes under DeepSpeed "
            f"ZeRO-{lookup(cfg, 'trainer.accelerator.zero_stage')}, mixture `{lookup(cfg, 'data.mixture')}`; "
            f"model `{metrics.get('model')}`"
        )
    for name, bench in benches.items():
        settings = bench.settings
        model = settings.get("model_dir") or (
            f"{lookup(settings, 'model.llm.name_or_path')} with "
            f"{'no expert' if lookup(settings, 'model.expert') is None else 'its expert'} (untuned)"
        )
        # an absolute detection file (the demo's split) stands alone: pathlib joins it so
        benchmark = Path(str(lookup(settings, "benchmark.root")))
        benchmark /= str(lookup(settings, "benchmark.detection_file"))
        lines.append(
            f"- evaluation, {name}: `{bench.folder}`: model `{model}`, benchmark `{benchmark}`, "
            "protocol "
            f"{lookup(settings, 'detection.protocol')}, max_new_tokens "
            f"{lookup(settings, 'generation.max_new_tokens')}"
        )
    return "\n".join(lines) + "\n"


def _zero_shot_section(zero_shot: ZeroShotEval, assets: Path) -> str:
    lines = ["## Stage 1: zero-shot anomaly detection on the held-out classes", ""]
    lines += [
        f"From `{zero_shot.folder}` (image AUROC in %, the paper's Table 2 layout):",
        "",
        zero_shot.table,
    ]
    if zero_shot.heatmaps:
        lines += ["Heat maps of the expert (anomaly map over each test image, per held-out class):", ""]
        target = assets / "heatmaps"
        target.mkdir(parents=True, exist_ok=True)
        for source in zero_shot.heatmaps:
            name = f"{source.parent.name}_{source.name}"
            shutil.copyfile(source, target / name)
            lines += [f"![heat maps: {source.stem}](heatmaps/{name})", ""]
    return "\n".join(lines) + "\n"


def _table4_section(benches: Mapping[str, BenchmarkEval]) -> str:
    rows: dict[str, dict[str, float | None]] = {}
    replies = []
    for name, bench in benches.items():
        detection = bench.metrics.get("detection") or {}
        rows[name] = table4_row((detection.get("model") or {}).get("mean"), bench.metrics.get("reasoning"))
        counts = detection.get("replies") or {}
        replies.append([name, counts.get("yes", "–"), counts.get("no", "–"), counts.get("other", "–")])
    expert = next(
        (
            b.metrics["detection"]["expert"]
            for b in benches.values()
            if (b.metrics.get("detection") or {}).get("expert")
        ),
        None,
    )
    if expert is not None:
        rows[f"Expert alone, score >= {expert.get('threshold', 0.5):g}"] = table4_row(expert["mean"], None)
    lines = [
        "## VisA-D&R-style detection and reasoning (the paper's Table 4 layout)",
        "",
        "Held-out classes of the synthetic VisA-D&R files; detection by the release's protocol (greedy "
        "reply, anomalous when it contains Yes/yes), per-class metrics averaged over classes; reasoning: "
        "ROUGE-L and "
        "Sentence-BERT similarity to the reference answers, low-level (first question) and complex (the "
        "others); GPT columns need the LLM judge (off here). Rows marked (paper) are the published "
        "LLaVA-OneVision / Anomaly-OV numbers on the real VisA-D&R, for scale only.",
        "",
        table4(rows, published=True),
        "Greedy replies to the detection prompt, by how they start:",
        "",
        _markdown_table(["Model", "Yes", "No", "other"], replies),
    ]
    return "\n".join(lines) + "\n"


def _split_metrics(records: Sequence[Mapping[str, Any]], classes: set[str]) -> dict[str, Any] | None:
    chosen = [r for r in records if r["class"] in classes]
    if not chosen:
        return None
    scores = [r.get("score") for r in chosen]
    return detection_metrics(
        [r["class"] for r in chosen],
        [bool(r["anomaly"]) for r in chosen],
        [bool(r["predicted"]) for r in chosen],
        scores if all(s is not None for s in scores) else None,
    )


def _train_vs_heldout(scores: Mapping[str, BenchmarkEval], split: Mapping[str, Any], assets: Path) -> str:
    groups = {
        "training classes (images kept out of stage 2)": set(split["train_classes"]),
        "held-out classes": set(split["heldout_classes"]),
    }
    if split.get("elpv_classes"):  # real solar cells of the installed ELPV package, a test set only
        groups["ELPV (real, never used to choose a setting)"] = set(split["elpv_classes"])
    header = ["Model", "group", "images", "Acc", "P", "R", "F1", "AUROC", "first token Yes / No / other"]
    rows = []
    panels: dict[str, dict[str, tuple[list[bool], list[float]]]] = {group: {} for group in groups}
    for name, bench in scores.items():
        for group, classes in groups.items():
            chosen = [r for r in bench.detection if r["class"] in classes]
            metrics = _split_metrics(chosen, classes)
            if metrics is None:
                continue
            starts = [sum(r.get("starts_with") == s for r in chosen) for s in ("yes", "no", "other")]
            mean = metrics["mean"]
            rows.append(
                [name, group, metrics["num_images"]]
                + [_number(mean.get(k)) for k in ("accuracy", "precision", "recall", "f1", "auroc")]
                + [" / ".join(map(str, starts))]
            )
            if all(r.get("score") is not None for r in chosen):
                panels[group][f"{name}: P(Yes) vs P(No)"] = (
                    [bool(r["anomaly"]) for r in chosen],
                    [float(r["score"]) for r in chosen],
                )
            if all(r.get("expert_score") is not None for r in chosen) and "expert score" not in panels[group]:
                truth = [bool(r["anomaly"]) for r in chosen]
                panels[group]["expert score"] = (truth, [float(r["expert_score"]) for r in chosen])
                expert = detection_metrics(
                    [r["class"] for r in chosen],
                    truth,
                    [float(r["expert_score"]) >= 0.5 for r in chosen],
                    [float(r["expert_score"]) for r in chosen],
                )["mean"]
                rows.append(
                    ["Expert alone, score >= 0.5", group, len(chosen)]
                    + [_number(expert.get(k)) for k in ("accuracy", "precision", "recall", "f1", "auroc")]
                    + ["–"]
                )
    aurocs = figures.roc_curves(assets / "roc.png", panels)
    lines = [
        "## Detection on the training classes vs the held-out classes",
        "",
        "The fast path (one forward pass: the best 'Yes' first token against the best 'No' one; the same "
        "decision as greedy decoding whenever greedy's reply starts with either, which the last column "
        "counts) on the training classes' kept-back test images (never in the stage-2 data; the expert of "
        "stage 1 did see them), on the held-out classes' test images and, where the demo ran it, on ELPV "
        "cells (the field's rule: anomalous when the defect probability is 1.0). Metrics per class, averaged "
        "over classes; AUROC of the score sigmoid(best Yes logit - best No logit).",
        "",
        _markdown_table(header, rows),
        "![ROC curves](roc.png)",
        "",
        "Pooled AUROC of the curves drawn: "
        + "; ".join(
            f"{group}: " + ", ".join(f"{c} {v:.3f}" for c, v in values.items())
            for group, values in aurocs.items()
        ),
        "",
    ]
    return "\n".join(lines) + "\n"


def _heatmaps_by_image(folder: Path | None) -> dict[str, Path]:
    """``{resolved image path: heat-map PNG}`` of a predict output folder (empty without one)."""
    if folder is None or not (folder / "predictions.jsonl").is_file():
        return {}
    return {
        str(Path(str(r["image"])).resolve()): folder / str(r["heatmap"])
        for r in read_jsonl(folder / "predictions.jsonl")
        if r.get("image") and r.get("heatmap")
    }


def _samples_section(
    benches: Mapping[str, BenchmarkEval], assets: Path, root: Path | None, heatmaps: Mapping[str, Path]
) -> str:
    """The first reasoning records of the first model, verbatim, with every other model's replies to the
    same questions beside them, the image and (when ``predict`` ran on it) the expert's heat map.
    """
    (name, first), *others = benches.items()
    lines = [f"## Sample conversations (VisA-D&R reasoning questions; models: {', '.join(benches)})", ""]
    target = assets / "images"
    target.mkdir(parents=True, exist_ok=True)
    replies = {
        other: {str(r.get("image")): r.get("responses", []) for r in bench.reasoning}
        for other, bench in others
    }
    for record in first.reasoning[:SAMPLE_CONVERSATIONS]:
        image = Path(str(record.get("image", "")))
        source = (root / image) if root is not None else image
        lines.append(f"### `{image}` ({record.get('class')}, {record.get('defect', 'anomalous')})")
        lines.append("")
        pictures = []
        for picture, alt in ((source, "image"), (heatmaps.get(str(source.resolve())), "expert heat map")):
            if picture is not None and picture.is_file():
                copy = f"{len(list(target.iterdir())):02d}_{picture.name}"
                shutil.copyfile(picture, target / copy)
                pictures.append(f'<img src="images/{copy}" width="192" alt="{html.escape(alt)}: {image}">')
        if pictures:
            lines += [" ".join(pictures), ""]
        questions = record.get("questions") or []
        answers = record.get("answers") or []
        for index, (question, response) in enumerate(
            zip(questions, record.get("responses", []), strict=False)
        ):
            lines.append(f"- **Q{index + 1}:** {question}")
            lines.append(f"  - {name}: {response!r}")
            for other, by_image in replies.items():
                theirs = by_image.get(str(image), [])
                if index < len(theirs):
                    lines.append(f"  - {other}: {theirs[index]!r}")
            if index < len(answers):
                lines.append(f"  - reference: {answers[index]}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _predict_section(folder: Path, assets: Path) -> str:
    records = read_jsonl(folder / "predictions.jsonl")
    if not records:
        raise ReportInputError(f"{folder / 'predictions.jsonl'}: no predictions")
    rows = [
        [
            # the class folder, split and defect type: a file name alone repeats across classes
            f"`{'/'.join(Path(str(r.get('image'))).parts[-4:])}`",
            _number(r.get("score")),
            r.get("severity", "–"),
            repr(r.get("answer")),
        ]
        for r in records[:8]
    ]
    lines = [f"## `anomaly-ov predict` ({folder}, first {len(rows)} of {len(records)} images)", ""]
    lines.append(_markdown_table(["image", "expert score", "severity", "answer"], rows))
    return "\n".join(lines) + "\n"


def _stage2_section(stage1: Stage1Run, stage2: Mapping[str, Stage2Run]) -> str:
    lines = ["## Training curves", "", "![training curves](training_curves.png)", ""]
    # stage 1: the first and last epochs' mean losses (a single step's loss is one noisy batch: the demo's
    # last batch holds 16 images, and its loss once equalled the first step's)
    epochs = stage1.epoch_losses or stage1.losses
    rows = [
        [
            "stage 1 expert (epoch means)" if stage1.epoch_losses else "stage 1 expert",
            len(stage1.losses),
            _number(epochs[0]),
            _number(epochs[-1]),
            _number(stage1.metrics.get("seconds"), 1),
        ]
    ]
    for name, run in stage2.items():
        rows.append(
            [
                f"stage 2, {name}",
                run.steps[-1],
                _number(run.losses[0]),
                _number(run.losses[-1]),
                _number(run.metrics.get("seconds"), 1),
            ]
        )
    lines.append(_markdown_table(["run", "steps", "first loss", "last loss", "seconds"], rows))
    return "\n".join(lines) + "\n"


HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
code, pre {{ background: #f6f6f6; }}
pre {{ padding: 0.6em; overflow-x: auto; }}
</style></head><body>
{body}
</body></html>
"""


def render_html(text: str, title: str) -> str:
    """The HTML page of a markdown report (tables and fenced code enabled)."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return HTML_TEMPLATE.format(title=html.escape(title), body=body)


def _write(inputs: ReportInputs, assets: Path) -> str:
    stage1 = read_stage1(inputs.stage1)
    zero_shot = read_zero_shot(inputs.zero_shot)
    stage2 = {name: read_stage2(folder) for name, folder in inputs.stage2.items()}
    benches = {name: read_benchmark(folder) for name, folder in inputs.benchmark.items()}
    scores = {name: read_benchmark(folder) for name, folder in inputs.scores.items()}
    if scores and inputs.split is None:
        raise ReportInputError("--scores needs --split (which classes were trained on)")

    figures.training_curves(
        assets / "training_curves.png",
        stage1.losses,
        stage1.steps_per_epoch,
        {name: (run.steps, run.losses) for name, run in stage2.items()},
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# anomaly-ov demo report",
        "",
        f"Built {stamp} by `anomaly-ov report` after every step of the run succeeded. "
        + ZOO_NOTES[inputs.zoo],
        "",
        _provenance(stage1, stage2, benches),
    ]
    if inputs.timings is not None:
        timings = read_timings(inputs.timings)
        rows = [[name, f"{seconds:.1f}"] for name, seconds in timings]
        rows.append(["**total**", f"{sum(s for _, s in timings):.1f}"])
        parts += [
            "## Run time per stage (wall clock, seconds)",
            "",
            _markdown_table(["stage", "seconds"], rows),
        ]
    parts.append(_zero_shot_section(zero_shot, assets))
    real = (
        read_zero_shot_scores(inputs.zero_shot)
        if (Path(inputs.zero_shot) / "scores.jsonl").is_file()
        else None
    )
    if real is not None and ELPV in real.means:
        control = read_zero_shot_scores(inputs.random_tower) if inputs.random_tower is not None else None
        parts.append(
            real_zero_shot_section(real, control, "synthetic_heldout", "Ours: DINOv2-S expert (this run)")
        )
    parts.append(_stage2_section(stage1, stage2))
    if benches:
        parts.append(_table4_section(benches))
    if scores:
        parts.append(_train_vs_heldout(scores, read_json(inputs.split), assets))
    if benches:
        first = next(iter(benches.values()))
        root = lookup(first.settings, "benchmark.root")
        if first.reasoning:
            heatmaps = _heatmaps_by_image(Path(inputs.predict) if inputs.predict is not None else None)
            parts.append(_samples_section(benches, assets, Path(root) if root else None, heatmaps))
    if inputs.chat is not None:
        transcript = Path(inputs.chat).read_text(encoding="utf-8").strip()
        parts += ["## `anomaly-ov chat`", "", "```text", transcript, "```", ""]
    if inputs.predict is not None:
        parts.append(_predict_section(Path(inputs.predict), assets))
    return "\n".join(parts)


def build_report(inputs: ReportInputs, out_dir: str | Path) -> Path:
    """Builds the report into ``out_dir`` (replaced as a whole, only once everything succeeded).

    Args:
        inputs: The run folders.
        out_dir: The report folder (``index.md``, ``index.html``, PNGs).

    Returns:
        The path of ``index.md``.

    Raises:
        ReportInputError: A run folder lacks a file or holds a malformed one (named); ``out_dir`` is then
            left as it was.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        text = _write(inputs, staging)
        (staging / "index.md").write_text(text, encoding="utf-8")
        (staging / "index.html").write_text(render_html(text, "anomaly-ov demo report"), encoding="utf-8")
        os.chmod(staging, 0o755)
        previous = out.with_name(f".{out.name}.previous")
        if previous.exists():
            shutil.rmtree(previous)
        if out.exists():
            out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # a full disk: name the report; the earlier one stays
            raise write_failure(error, out, "the earlier report there (if any) is kept") from error
        raise
    return out / "index.md"
