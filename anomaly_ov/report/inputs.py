"""Reading the run folders the report is made of (files only: nothing here runs a model).

* stage 1 (``scripts/train_expert.py``): ``train_metrics.json`` (``losses`` per step, ``epoch_losses``) and
  the resolved ``config.yaml``;
* zero-shot evaluation (``scripts/eval_zsad.py``): ``metrics.json``, ``table.md``, ``heatmaps/**.png``;
* stage 2 (``scripts/finetune.py``): ``metrics.jsonl`` (``step``, ``loss`` per logged step),
  ``train_metrics.json``, ``config.yaml``;
* benchmark evaluation (``scripts/eval_benchmark.py``): ``metrics.json``, ``run.json``, ``detection.jsonl``,
  ``reasoning.jsonl``.

A missing or malformed file is a :class:`ReportInputError` naming the file (and the line of a JSON-lines
file), so a report is never built from a run that did not finish.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ReportInputError(ValueError):
    """A run folder lacks a file the report needs, or a file cannot be read."""


def read_json(path: Path) -> Any:
    """A JSON file's content.

    Raises:
        ReportInputError: Missing or not JSON (the path is named).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportInputError(f"{path}: missing (did the step that writes it finish?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportInputError(f"{path}: not readable JSON ({error})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (blank lines ignored).

    Raises:
        ReportInputError: Missing, or a line that is not a JSON object (file and line named).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ReportInputError(f"{path}: missing (did the step that writes it finish?)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path}: not readable ({error})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ReportInputError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ReportInputError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    return records


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping (a run's resolved ``config.yaml``).

    Raises:
        ReportInputError: Missing, unreadable or not a mapping.
    """
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportInputError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ReportInputError(f"{path}: not readable YAML ({error})") from None
    if not isinstance(content, dict):
        raise ReportInputError(f"{path}: expected a mapping")
    return content


def lookup(mapping: dict[str, Any] | None, dotted: str) -> Any:
    """``mapping["a"]["b"]`` for ``"a.b"``; None where a level is missing."""
    value: Any = mapping
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _float_list(values: Any, path: Path, key: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise ReportInputError(f"{path}: '{key}' is not a list of numbers")
    return [float(v) for v in values]


@dataclass(frozen=True)
class Stage1Run:
    """A stage-1 (expert) training run.

    Attributes:
        folder: The run folder.
        losses: Training loss per optimizer step.
        epoch_losses: Mean loss per epoch.
        steps_per_epoch: Optimizer steps per epoch.
        config: The resolved ``config.yaml`` (empty when absent).
        metrics: ``train_metrics.json``.
    """

    folder: Path
    losses: list[float]
    epoch_losses: list[float]
    steps_per_epoch: int
    config: dict[str, Any]
    metrics: dict[str, Any]


def read_stage1(folder: str | Path) -> Stage1Run:
    """Reads a ``scripts/train_expert.py`` run folder.

    Raises:
        ReportInputError: No ``train_metrics.json`` or no losses in it.
    """
    folder = Path(folder)
    path = folder / "train_metrics.json"
    metrics = read_json(path)
    losses = _float_list(metrics.get("losses"), path, "losses")
    if not losses:
        raise ReportInputError(f"{path}: no training losses")
    config_path = folder / "config.yaml"
    return Stage1Run(
        folder=folder,
        losses=losses,
        epoch_losses=_float_list(metrics.get("epoch_losses", []), path, "epoch_losses"),
        steps_per_epoch=int(metrics.get("steps_per_epoch") or 0),
        config=read_yaml(config_path) if config_path.is_file() else {},
        metrics=metrics,
    )


@dataclass(frozen=True)
class ZeroShotEval:
    """A zero-shot evaluation folder (``<stage-1 run>/eval/<time>``).

    Attributes:
        folder: The folder.
        metrics: ``metrics.json`` (``datasets`` -> ``mean`` and ``classes``).
        table: ``table.md`` (Table-2 layout).
        heatmaps: The heat-map PNGs, sorted.
    """

    folder: Path
    metrics: dict[str, Any]
    table: str
    heatmaps: list[Path]


def read_zero_shot(folder: str | Path) -> ZeroShotEval:
    """Reads a ``scripts/eval_zsad.py`` output folder.

    Raises:
        ReportInputError: Missing ``metrics.json``/``table.md``, or no dataset in the metrics.
    """
    folder = Path(folder)
    metrics = read_json(folder / "metrics.json")
    if not isinstance(metrics.get("datasets"), dict) or not metrics["datasets"]:
        raise ReportInputError(f"{folder / 'metrics.json'}: no 'datasets' evaluated")
    table_path = folder / "table.md"
    if not table_path.is_file():
        raise ReportInputError(f"{table_path}: missing")
    return ZeroShotEval(
        folder=folder,
        metrics=metrics,
        table=table_path.read_text(encoding="utf-8"),
        heatmaps=sorted((folder / "heatmaps").rglob("*.png")),
    )


@dataclass(frozen=True)
class Stage2Run:
    """A stage-2 (instruction tuning) run.

    Attributes:
        folder: The run folder.
        steps: Logged optimizer steps.
        losses: Loss at each logged step.
        config: The resolved ``config.yaml``.
        metrics: ``train_metrics.json``.
    """

    folder: Path
    steps: list[int]
    losses: list[float]
    config: dict[str, Any]
    metrics: dict[str, Any]


def read_stage2(folder: str | Path) -> Stage2Run:
    """Reads a ``scripts/finetune.py`` run folder; it must have finished (its model exported).

    Raises:
        ReportInputError: Missing files, a ``metrics.jsonl`` line without ``step``/``loss``, or an unfinished
            run.
    """
    folder = Path(folder)
    path = folder / "metrics.jsonl"
    records = read_jsonl(path)
    steps, losses = [], []
    for number, record in enumerate(records, start=1):
        if not isinstance(record.get("step"), int) or not isinstance(record.get("loss"), (int, float)):
            raise ReportInputError(f"{path}: record {number} lacks an integer 'step' or a numeric 'loss'")
        steps.append(int(record["step"]))
        losses.append(float(record["loss"]))
    if not losses:
        raise ReportInputError(f"{path}: no logged steps")
    metrics = read_json(folder / "train_metrics.json")
    if not metrics.get("finished"):
        raise ReportInputError(
            f"{folder / 'train_metrics.json'}: the run has not finished (no exported model)"
        )
    return Stage2Run(folder, steps, losses, read_yaml(folder / "config.yaml"), metrics)


@dataclass(frozen=True)
class BenchmarkEval:
    """A benchmark evaluation folder (``scripts/eval_benchmark.py``'s ``out_dir``).

    Attributes:
        folder: The folder.
        metrics: ``metrics.json``.
        settings: ``run.json`` (model, benchmark, protocol).
        detection: ``detection.jsonl`` records (empty when detection was not run).
        reasoning: ``reasoning.jsonl`` records (empty when reasoning was not run).
    """

    folder: Path
    metrics: dict[str, Any]
    settings: dict[str, Any]
    detection: list[dict[str, Any]]
    reasoning: list[dict[str, Any]]


def read_benchmark(folder: str | Path) -> BenchmarkEval:
    """Reads a finished benchmark evaluation.

    Raises:
        ReportInputError: Missing ``metrics.json``/``run.json`` (an unfinished run writes no metrics), or
            detection records without ``class``/``anomaly``/``predicted``.
    """
    folder = Path(folder)
    metrics = read_json(folder / "metrics.json")
    settings = read_json(folder / "run.json")
    detection = read_jsonl(folder / "detection.jsonl") if (folder / "detection.jsonl").is_file() else []
    for number, record in enumerate(detection, start=1):
        missing = [key for key in ("image", "class", "anomaly", "predicted") if key not in record]
        if missing:
            raise ReportInputError(f"{folder / 'detection.jsonl'}: record {number} lacks {missing}")
    reasoning = read_jsonl(folder / "reasoning.jsonl") if (folder / "reasoning.jsonl").is_file() else []
    if metrics.get("detection") is None and metrics.get("reasoning") is None:
        raise ReportInputError(f"{folder / 'metrics.json'}: neither detection nor reasoning metrics")
    return BenchmarkEval(folder, metrics, settings, detection, reasoning)


def read_timings(path: str | Path) -> list[tuple[str, float]]:
    """The demo's ``stage<TAB>seconds`` lines.

    Raises:
        ReportInputError: Missing file or a line that is not ``name<TAB>number``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ReportInputError(f"{path}: not readable ({error})") from None
    timings = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, _, seconds = line.rpartition("\t")
        try:
            timings.append((name, float(seconds)))
        except ValueError:
            raise ReportInputError(f"{path}:{number}: expected 'stage<TAB>seconds', got {line!r}") from None
    return timings
