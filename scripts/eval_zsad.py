"""Zero-shot anomaly-detection evaluation of the expert (configs/eval_zsad.yaml).

    python scripts/eval_zsad.py run_dir=<a train_expert run>
    python scripts/eval_zsad.py model.expert.official_checkpoint=/path/pretrained_expert_05b.pth

Compose -> (read the run's resolved config) -> build -> evaluate each dataset class by class -> write the
resolved config, metrics.json, table.md and heat maps into the output folder.
"""

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from anomaly_ov.offline import enforce_offline

enforce_offline()


def run(cfg: DictConfig) -> dict[str, object]:
    """Evaluates the run (or checkpoint) of ``cfg``; returns the metrics written to metrics.json."""
    import torch
    from hydra.utils import instantiate

    from anomaly_ov.data.zsad import check_zero_shot, write_skipped
    from anomaly_ov.eval.tables import class_table, table2
    from anomaly_ov.eval.zsad import evaluate_dataset

    if cfg.run_dir is not None:
        # The run's own config says what was trained and how; this config only says how to evaluate.
        run_dir = Path(cfg.run_dir)
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: run_dir must be a finished train_expert run")
        trained = OmegaConf.load(config_path)
        if cfg.sources_from not in ("run", "config"):
            raise ValueError(f"sources_from={cfg.sources_from!r}; expected 'run' or 'config'.")
        # "config": the datasets as composed now (moved roots, new sources); the model stays the run's.
        data_cfg = trained.data if cfg.sources_from == "run" else cfg.data
        model_cfg, trained_on = trained.model, list(trained.data.train)
        crops_cfg = trained.features.crops
        eval_names = list(cfg.datasets if cfg.datasets is not None else trained.data.eval)
        checkpoint = run_dir / "expert.safetensors"
        row_name = cfg.table.row_name or trained.task_name
        out_dir = run_dir / "eval" / cfg.output_name
    else:
        model_cfg, data_cfg, trained_on = cfg.model, cfg.data, list(cfg.trained_on)
        crops_cfg = cfg.features.crops
        eval_names = list(cfg.datasets if cfg.datasets is not None else cfg.data.eval)
        checkpoint = None
        row_name = cfg.table.row_name or "expert"
        out_dir = Path(cfg.paths.output_root) / "eval" / cfg.output_name

    unknown = [name for name in [*trained_on, *eval_names] if name not in data_cfg.sources]
    if unknown:
        raise ValueError(f"datasets {unknown} are not in data.sources ({sorted(data_cfg.sources)})")
    train_sources = {name: instantiate(data_cfg.sources[name]) for name in trained_on}
    seen = check_zero_shot(train_sources, eval_names, allow_seen=cfg.allow_seen)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tower = instantiate(model_cfg.vision).to(device)
    expert = instantiate(model_cfg.expert)
    if checkpoint is not None:
        expert.load_weights(checkpoint)
    expert.to(device).eval()
    # The crops must be those the expert was trained on; the cache settings are this evaluation's.
    features_cfg = OmegaConf.merge(cfg.features, {"crops": crops_cfg})
    source = instantiate(features_cfg)(tower=tower, tower_spec=OmegaConf.to_container(model_cfg.vision))

    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.update(
        evaluated={
            "model": OmegaConf.to_container(model_cfg),
            "checkpoint": str(checkpoint),
            "data": OmegaConf.to_container(data_cfg, resolve=True),
        }
    )
    OmegaConf.save(OmegaConf.create(resolved), out_dir / "config.yaml")
    results = {}
    for name in eval_names:
        samples = instantiate(data_cfg.sources[name]).read()
        results[name] = evaluate_dataset(
            name,
            samples,
            expert,
            source,
            heatmap_dir=out_dir / "heatmaps" / name,
            heatmaps_per_class=cfg.heatmaps_per_class,
            skip_bad=cfg.skip_bad_inputs,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            pixel_size=cfg.pixel_size,
            max_fpr=cfg.max_fpr,
        )
    write_skipped([s for r in results.values() for s in r.skipped], out_dir / "skipped_files.json")
    metrics = {
        "model": row_name,
        "run_dir": None if cfg.run_dir is None else str(cfg.run_dir),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "trained_on": trained_on,
        "seen_datasets_evaluated": seen,
        "datasets": {name: result.to_dict() for name, result in results.items()},
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    aurocs = {row_name: {name: r.mean["image_auroc"] for name, r in results.items()}}
    # allow_seen: the table must not pass a seen dataset's number off as zero-shot
    not_zero_shot = f"**Not zero-shot** (allow_seen=true): the model was trained on {', '.join(seen)}.\n"
    tables = [
        "## Zero-shot image AUROC (%), Table 2 layout\n",
        *([not_zero_shot] if seen else []),
        table2(aurocs, published=cfg.table.published),
        "\n## Per-class metrics (%)\n",
        *(class_table(name, r.to_dict()["classes"], r.mean) + "\n" for name, r in results.items()),
    ]
    (out_dir / "table.md").write_text("\n".join(tables), encoding="utf-8")
    print(table2(aurocs))
    print(f"metrics, table and heat maps: {out_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval_zsad")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
    sys.exit(0)
