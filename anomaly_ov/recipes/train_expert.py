"""Stage 1: train the anomaly expert (configs/train_expert.yaml; SPEC §4).

Seed -> build -> train -> write the resolved config and train_metrics.json into ``run_dir``.
``scripts/train_expert.py`` composes the config and calls :func:`train_expert`.
"""

import json
import time
from functools import partial
from pathlib import Path

from accelerate.utils import broadcast_object_list, gather_object, set_seed
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_ov.checkpoints.training_state import latest_checkpoint
from anomaly_ov.data.zsad import InstructionSource, check_zero_shot, write_skipped
from anomaly_ov.run_lock import lock_run_folder
from anomaly_ov.training.distributed import quiet_other_ranks, shutdown, start_trackers


def check_resumable(config_path: Path, resolved: dict) -> None:
    """Refuses to continue a run's checkpoints with another model or preprocessing than it started with.

    Args:
        config_path: The run's saved ``config.yaml`` (absent: a new run, nothing to compare).
        resolved: The resolved config of the run about to start.

    Raises:
        ValueError: Naming what differs from the run's saved ``config.yaml``.
    """
    if not config_path.is_file():
        return
    earlier = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    pairs = {
        "model": (earlier.get("model"), resolved["model"]),
        "features.crops": (earlier.get("features", {}).get("crops"), resolved["features"]["crops"]),
    }
    changed = [name for name, (before, now) in pairs.items() if before != now]
    if changed:
        raise ValueError(
            f"{config_path.parent} holds checkpoints trained with another {' and '.join(changed)} (see "
            f"{config_path}); resuming them would mix two setups under one config. Start a new run_dir, or "
            "resume with the run's own settings."
        )


def train_expert(cfg: DictConfig) -> dict[str, object]:
    """Trains the expert described by ``cfg`` (a composed configs/train_expert.yaml).

    Args:
        cfg: The composed config (hydra node removed or not).

    Returns:
        The training metrics, also written to ``<run_dir>/train_metrics.json``: ``losses`` (one per
        optimizer step), ``epoch_losses``, ``steps_per_epoch``, ``resumed_from_epoch``, ``num_samples``,
        ``num_anomalous``, ``num_skipped``, ``labels`` (per instruction source, how its records were
        labelled), ``num_processes``, ``expert`` (the safetensors path; None when stopped early),
        ``preempted`` (the signal that stopped the run at a checkpoint, or None), ``nonfinite_steps`` (steps
        skipped with ``trainer.fit.nonfinite=skip``), ``seconds``.

    Raises:
        ValueError: If ``run_dir`` holds checkpoints of another model or preprocessing.
        ZeroShotError: If the evaluation list overlaps the training data (unless ``allow_seen``).
        BadInputError: If an image is unusable (unless ``skip_bad_inputs``).
    """
    start = time.perf_counter()
    accelerator = instantiate(cfg.trainer.accelerator, log_with=cfg.logger.log_with)
    quiet_other_ranks(accelerator.is_main_process)
    # Every process must write to the directory of rank 0 (a timestamped default can differ by a second).
    run_dir = Path(broadcast_object_list([str(cfg.run_dir)])[0])
    # one run per run_dir: a second start is refused while this one holds the lock
    lock = lock_run_folder(
        run_dir, accelerator.is_main_process, broadcast_object_list, partial(shutdown, accelerator)
    )
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    resolved["run_dir"] = str(run_dir)
    if cfg.trainer.resume and latest_checkpoint(run_dir) is not None:
        check_resumable(run_dir / "config.yaml", resolved)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
    set_seed(cfg.seed)

    sources = {name: instantiate(cfg.data.sources[name]) for name in cfg.data.train}
    # The run's own evaluation list must be unseen (the evaluation entrypoint checks again).
    check_zero_shot(sources, list(cfg.data.eval), allow_seen=cfg.allow_seen)
    samples = []
    # how each instruction file's records were labelled (rule counts, unlabelled), kept with the metrics
    label_reports: dict[str, dict] = {}
    for name, source in sources.items():
        if isinstance(source, InstructionSource):
            read, report = source.read_with_report()
            label_reports[name] = report.to_dict()
        else:
            read = source.read()
        samples += read

    tower = instantiate(cfg.model.vision).to(accelerator.device)
    expert = instantiate(cfg.model.expert)
    expert.tower_record = tower.record(str(cfg.model.vision.name_or_path))
    distributed = accelerator.num_processes > 1
    features = instantiate(cfg.features)(
        tower=tower,
        tower_spec=resolved["model"]["vision"],
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone if distributed else None,
        all_gather=gather_object if distributed else None,
    )
    prepared = features.prepare(samples, skip_bad=cfg.skip_bad_inputs)
    kept = [samples[i] for i in prepared.kept]
    if accelerator.is_main_process:
        write_skipped(prepared.skipped, run_dir / "skipped_files.json")
    if cfg.logger.log_with:
        start_trackers(
            accelerator, cfg.logger.log_with, cfg.logger.project, cfg.logger.mode, resolved, run_dir
        )

    trainer = instantiate(cfg.trainer.fit)(
        expert=expert,
        optimizer_factory=instantiate(cfg.optimizer),
        scheduler_factory=instantiate(cfg.scheduler),
        accelerator=accelerator,
        run_dir=run_dir,
        seed=cfg.seed,
    )
    result = trainer.fit(
        prepared.dataset,
        prepared.collate_fn,
        prepared.featurize,
        labels=[item.label for item in kept],
        resume=cfg.trainer.resume,
        sample_ids=[str(item.images[0]) for item in kept],
    )
    metrics = {
        "losses": result.losses,
        "epoch_losses": result.epoch_losses,
        "steps_per_epoch": result.steps_per_epoch,
        "resumed_from_epoch": result.resumed_from_epoch,
        "num_samples": len(kept),
        "num_anomalous": sum(item.label for item in kept),
        "num_skipped": len(prepared.skipped),
        "labels": label_reports,
        "num_processes": accelerator.num_processes,
        "expert": None if result.preempted else str(result.expert_path),
        "preempted": result.preempted,
        "nonfinite_steps": result.nonfinite_steps,
        "seconds": time.perf_counter() - start,
    }
    if accelerator.is_main_process:
        (run_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if result.preempted is None:
            print(f"expert: {result.expert_path}\nevaluate: python scripts/eval_zsad.py run_dir={run_dir}")
    if lock is not None:
        lock.release()
    shutdown(accelerator)
    return metrics
