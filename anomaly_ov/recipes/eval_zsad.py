"""Zero-shot anomaly-detection evaluation of the expert (configs/eval_zsad.yaml; SPEC §5, Table 2).

(Read the run's resolved config) -> build -> evaluate each dataset class by class -> write the resolved
config, metrics.json, table.md, scores.jsonl (every image's score) and heat maps into the output
folder. ``scripts/eval_zsad.py`` composes the config and calls :func:`eval_zsad`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from anomaly_ov.data.zsad import check_zero_shot, write_skipped
from anomaly_ov.eval.tables import class_table, table2
from anomaly_ov.eval.zsad import DatasetResult, PixelMapSettings, evaluate_dataset
from anomaly_ov.models.builders import torch_dtype
from anomaly_ov.models.expert_io import load_expert_weights
from anomaly_ov.run_lock import RunLock

NO_WEIGHTS = (
    "eval_zsad needs weights to evaluate: run_dir=<a train_expert run>, or "
    "model.expert.checkpoint=<expert.safetensors>, or model.expert.official_checkpoint=<released .pth>. "
    "An expert without weights would only score its random initialisation."
)


@dataclass
class Evaluated:
    """What is evaluated, on which data: from a training run's saved config or from this config.

    Attributes:
        model: The model node (``vision`` and ``expert``) to build.
        data: The data node whose ``sources`` define every dataset named here.
        crops: The preprocessing node (``features.crops``) the expert was trained with.
        trained_on: Names of the sources the weights were trained on (for the zero-shot check).
        eval_names: Names of the sources to evaluate.
        checkpoint: The run's expert weights; None when ``model.expert`` loads its own checkpoint.
        row_name: The model's row in the tables.
        out_dir: Where the results go.
    """

    model: DictConfig
    data: DictConfig
    crops: DictConfig
    trained_on: list[str]
    eval_names: list[str]
    checkpoint: Path | None
    row_name: str
    out_dir: Path


def run_dir_of(cfg: DictConfig) -> Path | None:
    """The training run ``cfg`` evaluates, or None when it evaluates ``model.expert``'s own checkpoint.

    Raises:
        MissingMandatoryValue: If ``cfg`` names neither a run nor a checkpoint (see :data:`NO_WEIGHTS`).
    """
    if not OmegaConf.is_missing(cfg, "run_dir") and cfg.run_dir is not None:
        return Path(cfg.run_dir)
    expert = cfg.model.expert
    if expert.get("checkpoint") is None and expert.get("official_checkpoint") is None:
        raise MissingMandatoryValue(NO_WEIGHTS)
    return None


def evaluated(cfg: DictConfig) -> Evaluated:
    """Resolves what ``cfg`` evaluates (see :class:`Evaluated`).

    Raises:
        MissingMandatoryValue: If ``cfg`` names neither a run nor a checkpoint.
        FileNotFoundError: If ``run_dir`` has no saved ``config.yaml``.
        ValueError: If ``sources_from`` is unknown.
    """
    run_dir = run_dir_of(cfg)
    if run_dir is None:
        return Evaluated(
            model=cfg.model,
            data=cfg.data,
            crops=cfg.features.crops,
            trained_on=list(cfg.trained_on),
            eval_names=list(cfg.datasets if cfg.datasets is not None else cfg.data.eval),
            checkpoint=None,
            row_name=cfg.table.row_name or "expert",
            out_dir=Path(cfg.paths.output_root) / "eval" / cfg.output_name,
        )
    # The run's own config says what was trained and how; this config only says how to evaluate.
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: run_dir must be a finished train_expert run")
    trained = OmegaConf.load(config_path)
    if cfg.sources_from not in ("run", "config"):
        raise ValueError(f"sources_from={cfg.sources_from!r}; expected 'run' or 'config'.")
    return Evaluated(
        model=trained.model,
        # "config": the datasets as composed now (moved roots, new sources); the model stays the run's.
        data=trained.data if cfg.sources_from == "run" else cfg.data,
        crops=trained.features.crops,
        trained_on=list(trained.data.train),
        eval_names=list(cfg.datasets if cfg.datasets is not None else trained.data.eval),
        checkpoint=run_dir / "expert.safetensors",
        row_name=cfg.table.row_name or trained.task_name,
        out_dir=run_dir / "eval" / cfg.output_name,
    )


def image_aurocs(results: dict[str, DatasetResult]) -> dict[str, float]:
    """Each dataset's mean image AUROC (datasets none of whose classes could be evaluated are absent)."""
    return {name: r.mean["image_auroc"] for name, r in results.items() if "image_auroc" in r.mean}


def tables_markdown(
    row_name: str, results: dict[str, DatasetResult], seen: list[str], published: bool
) -> str:
    """The table.md of an evaluation: Table 2's layout, then one per-class table per dataset.

    Args:
        row_name: The model's row.
        results: Each evaluated dataset's result, by name.
        seen: Evaluated datasets the model was trained on (allowed by ``allow_seen``): flagged.
        published: Add the published rows of Table 2.
    """
    aurocs = {row_name: image_aurocs(results)}
    # allow_seen: the table must not pass a seen dataset's number off as zero-shot
    not_zero_shot = f"**Not zero-shot** (allow_seen=true): the model was trained on {', '.join(seen)}.\n"
    tables = [
        "## Zero-shot image AUROC (%), Table 2 layout\n",
        *([not_zero_shot] if seen else []),
        table2(aurocs, published=published),
        # a class that could not be evaluated is left out of its dataset's mean: say so under the table
        *(
            f"- {name}: not evaluated: {', '.join(f'{c} ({why})' for c, why in r.failed_classes.items())}\n"
            for name, r in results.items()
            if r.failed_classes
        ),
        "\n## Per-class metrics (%)\n",
        # the pixel protocol named, so a number at 518 px is never read as one at mask size
        *(f"- {name}: {r.pixel_maps.describe()}\n" for name, r in results.items()),
        *(class_table(name, r.to_dict()["classes"], r.mean) + "\n" for name, r in results.items()),
    ]
    return "\n".join(tables)


def eval_zsad(cfg: DictConfig) -> dict[str, object]:
    """Evaluates the run (or checkpoint) of ``cfg`` (a composed configs/eval_zsad.yaml).

    Args:
        cfg: The composed config.

    Returns:
        The metrics written to ``metrics.json``: ``model`` (the row name), ``run_dir``, ``checkpoint``,
        ``trained_on``, ``seen_datasets_evaluated`` and per dataset its per-class and mean metrics.

    Raises:
        MissingMandatoryValue: If ``cfg`` names neither a run nor a checkpoint.
        ZeroShotError: If a dataset to evaluate was in training (unless ``allow_seen``).
        ValueError: If a dataset name is not in ``data.sources``.
    """
    what = evaluated(cfg)
    # one evaluation per out_dir: a second start is refused while this one holds the lock
    lock = RunLock.acquire(what.out_dir)
    unknown = [name for name in [*what.trained_on, *what.eval_names] if name not in what.data.sources]
    if unknown:
        raise ValueError(f"datasets {unknown} are not in data.sources ({sorted(what.data.sources)})")
    train_sources = {name: instantiate(what.data.sources[name]) for name in what.trained_on}
    seen = check_zero_shot(train_sources, what.eval_names, allow_seen=cfg.allow_seen)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tower = instantiate(what.model.vision).to(device)
    expert = instantiate(what.model.expert)
    if what.checkpoint is not None:
        load_expert_weights(expert, what.checkpoint)
    expert.to(device).eval()
    if cfg.expert_dtype is not None:
        # the release evaluates its expert in bfloat16; inputs follow the expert's dtype (eval.zsad)
        expert.to(torch_dtype(cfg.expert_dtype))
    # The crops must be those the expert was trained on; the cache settings are this evaluation's.
    features_cfg = OmegaConf.merge(cfg.features, {"crops": what.crops})
    source = instantiate(features_cfg)(tower=tower, tower_spec=OmegaConf.to_container(what.model.vision))

    what.out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.update(
        evaluated={
            "model": OmegaConf.to_container(what.model),
            "checkpoint": str(what.checkpoint),
            "data": OmegaConf.to_container(what.data, resolve=True),
        }
    )
    OmegaConf.save(OmegaConf.create(resolved), what.out_dir / "config.yaml")
    results = {}
    for name in what.eval_names:
        samples = instantiate(what.data.sources[name]).read()
        results[name] = evaluate_dataset(
            name,
            samples,
            expert,
            source,
            heatmap_dir=what.out_dir / "heatmaps" / name,
            heatmaps_per_class=cfg.heatmaps_per_class,
            skip_bad=cfg.skip_bad_inputs,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            max_fpr=cfg.max_fpr,
            pixel_maps=PixelMapSettings(
                source=cfg.pixel_maps.source,
                smoothing_sigma=cfg.pixel_maps.smoothing_sigma,
                aupro=cfg.pixel_maps.aupro,
                pixel_size=cfg.pixel_size,
            ),
            image_score=cfg.image_score,
        )
    write_skipped([s for r in results.values() for s in r.skipped], what.out_dir / "skipped_files.json")
    run_dir = run_dir_of(cfg)
    metrics = {
        "model": what.row_name,
        "run_dir": None if run_dir is None else str(run_dir),
        "checkpoint": None if what.checkpoint is None else str(what.checkpoint),
        "trained_on": what.trained_on,
        "seen_datasets_evaluated": seen,
        "expert_dtype": str(next(expert.parameters()).dtype).removeprefix("torch."),
        "image_score": cfg.image_score,
        "datasets": {name: result.to_dict() for name, result in results.items()},
    }
    (what.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    # every image's score, so the AUROC of any subset (e.g. ELPV's mono / poly cells) comes from this run
    with (what.out_dir / "scores.jsonl").open("w", encoding="utf-8") as handle:
        for name, result in results.items():
            handle.writelines(json.dumps({"dataset": name, **row}) + "\n" for row in result.image_scores)
    markdown = tables_markdown(what.row_name, results, seen, published=cfg.table.published)
    (what.out_dir / "table.md").write_text(markdown, encoding="utf-8")
    print(table2({what.row_name: image_aurocs(results)}))
    print(f"metrics, table and heat maps: {what.out_dir}")
    lock.release()
    return metrics
