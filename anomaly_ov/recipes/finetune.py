"""Stage 2: instruction-tune Anomaly-OV (configs/finetune.yaml; SPEC §4).

Accelerator (DeepSpeed) -> model (builders) -> what trains (``tuning``) -> the mixture, checked up front ->
fit with checkpoints -> export the model folder -> ``train_metrics.json``. ``scripts/finetune.py`` and
``anomaly-ov finetune`` compose the config and call :func:`finetune`.
"""

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from accelerate.utils import broadcast_object_list, set_seed
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_ov.checkpoints import save_anomaly_ov
from anomaly_ov.data.instruct import InstructDataset, InstructRecord, plan_lengths
from anomaly_ov.data.mixture import load_mixture
from anomaly_ov.models.processor import AnomalyOVProcessor
from anomaly_ov.run_lock import lock_run_folder
from anomaly_ov.training.deepspeed import whole_weights_build
from anomaly_ov.training.distributed import quiet_other_ranks, shutdown, start_trackers
from anomaly_ov.training.instruct import check_process_count, latest_step_checkpoint
from anomaly_ov.training.preemption import PREEMPTED_EXIT_CODE
from anomaly_ov.training.tuning import apply_tuning, trainable_counts

logger = logging.getLogger(__name__)

DATA_REPORT_NAME = "data_report.json"
METRICS_NAME = "train_metrics.json"
# what a resumed run must share with the run it continues
_RESUME_KEYS = ("model", "tuning", "data", "seed", "optimizer", "scheduler")


class SampleLengths:
    """``length_fn`` of :func:`~anomaly_ov.data.instruct.plan_lengths`: a record's token ids from image sizes.

    The reserved positions of an image depend only on its size, so the processor computes them from the
    header sizes alone (:meth:`~anomaly_ov.models.processor.AnomalyOVProcessor.token_ids`): no pixels are
    read or processed before training starts.
    """

    def __init__(self, processor: AnomalyOVProcessor) -> None:
        self.processor = processor

    def __call__(self, record: InstructRecord, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """The token ids of ``record`` when its images have ``sizes`` ((width, height) each)."""
        return self.processor.token_ids(
            record.conversations, [(int(h), int(w)) for w, h in sizes], source=record.name
        )


def check_resumable(config_path: Path, resolved: dict) -> None:
    """Refuses to continue a run's checkpoints with another model, tuning, data or optimisation.

    Raises:
        ValueError: Naming what differs from the run's saved ``config.yaml``.
    """
    if not config_path.is_file():
        return
    earlier = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    changed = [key for key in _RESUME_KEYS if earlier.get(key) != resolved.get(key)]
    if changed:
        raise ValueError(
            f"{config_path.parent} holds checkpoints of a run with another {', '.join(changed)} (see "
            f"{config_path}); start a new run_dir, or resume with the run's own settings."
        )


def _prepare_data(cfg: DictConfig, processor: AnomalyOVProcessor, accelerator) -> tuple:
    """Reads and checks the mixture on the main process (before any GPU work); every rank gets the result."""
    result = [None]
    if accelerator.is_main_process:
        mixture = load_mixture(cfg.data.mixture, seed=cfg.seed, skip_bad_records=cfg.data.skip_bad_records)
        limit = cfg.data.max_records
        plan = plan_lengths(
            mixture.records
            if limit is None
            else [mixture.records[i] for i in range(min(limit, len(mixture.records)))],
            cfg.data.image_root,
            SampleLengths(processor),
            sorted(processor.reserved_ids),
            model_max_length=cfg.data.model_max_length,
            max_image_side=cfg.max_image_side,
            allow_outside_root=cfg.data.allow_outside_root,
        )
        report = {
            "mixture": str(cfg.data.mixture),
            "records_per_file": mixture.counts,
            "max_records": limit,
            "kept": len(plan.records),
            "skipped_bad_records": [dataclasses.asdict(r) for r in mixture.skipped],
            "dropped_image_tokens_cut": [dataclasses.asdict(r) for r in plan.dropped],
            "truncated_in_text": [
                {"source": source, "index": index, "tokens_cut": cut} for source, index, cut in plan.truncated
            ],
        }
        result = [(list(plan.records), plan.lengths, plan.multimodal, report)]
    return broadcast_object_list(result)[0]


def finetune(cfg: DictConfig) -> dict[str, object]:
    """Instruction-tunes the model described by ``cfg`` (a composed configs/finetune.yaml).

    Args:
        cfg: The composed config (hydra node removed or not).

    Returns:
        The run's metrics, also written to ``<run_dir>/train_metrics.json``: ``losses`` and ``learning_rates``
        (one per optimizer step), ``steps_per_epoch``, ``total_steps``, ``resumed_from_step``, ``finished``,
        ``num_samples``, ``num_processes``, ``trainable_parameters``, ``rank_checksums`` (identical on every
        rank), ``model`` (the exported folder, once finished), ``preempted`` (the signal that stopped the run
        at a checkpoint, or None), ``nonfinite_steps`` (skipped with ``trainer.fit.nonfinite=skip``),
        ``seconds``.

    Raises:
        ValueError: If ``run_dir`` holds checkpoints of another setup or process count, or the tuning and the
            model disagree.
        MixtureError, RecordError, BadInputError: Unusable data (the file and record are named).
    """
    start = time.perf_counter()
    if cfg.export.merge_lora and cfg.model.lora is None:
        raise ValueError("export.merge_lora=true needs a LoRA adapter to merge, but model.lora is null.")
    accelerator = instantiate(cfg.trainer.accelerator, log_with=cfg.logger.log_with)
    quiet_other_ranks(accelerator.is_main_process)
    run_dir = Path(broadcast_object_list([str(cfg.run_dir)])[0])
    # one run per run_dir: rank 0 holds the lock, a second start is refused on every rank
    lock = lock_run_folder(
        run_dir, accelerator.is_main_process, broadcast_object_list, partial(shutdown, accelerator)
    )
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    resolved.pop("hydra", None)
    resolved["run_dir"] = str(run_dir)
    if cfg.trainer.resume and (checkpoint := latest_step_checkpoint(run_dir)) is not None:
        check_resumable(run_dir / "config.yaml", resolved)
        check_process_count(checkpoint, accelerator.num_processes)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
    set_seed(cfg.seed)

    with whole_weights_build(accelerator):
        bundle = instantiate(cfg.model, _convert_="all")
    model, processor = bundle.model, bundle.processor
    apply_tuning(model, cfg.tuning)
    counts = trainable_counts(model)
    logger.info(
        "tuning=%s: %d trainable parameters in %d tensors", cfg.tuning, sum(counts.values()), len(counts)
    )

    records, lengths, multimodal, report = _prepare_data(cfg, processor, accelerator)
    if accelerator.is_main_process:
        (run_dir / DATA_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        logger.info(
            "data: %d samples kept, %d bad records skipped, %d dropped (image tokens cut), "
            "%d truncated in text",
            report["kept"],
            len(report["skipped_bad_records"]),
            len(report["dropped_image_tokens_cut"]),
            len(report["truncated_in_text"]),
        )
    dataset = InstructDataset(
        records,
        cfg.data.image_root,
        partial(processor.encode, add_generation_prompt=False),
        reserved_ids=sorted(processor.reserved_ids),
        max_image_side=cfg.max_image_side,
        model_max_length=cfg.data.model_max_length,
    )
    if cfg.logger.log_with:
        start_trackers(
            accelerator, cfg.logger.log_with, cfg.logger.project, cfg.logger.mode, resolved, run_dir
        )
    trainer = instantiate(cfg.trainer.fit)(
        model=model,
        optimizer_factory=instantiate(cfg.optimizer),
        scheduler_factory=instantiate(cfg.scheduler),
        accelerator=accelerator,
        run_dir=run_dir,
        seed=cfg.seed,
    )
    result = trainer.fit(
        dataset,
        partial(processor.collate, padding_side="right"),
        lengths=lengths,
        multimodal=multimodal,
        resume=cfg.trainer.resume,
        sample_ids=[record.id for record in records],
    )
    folder = Path(cfg.export.folder)
    checksums = trainer.export(
        lambda trained: (
            save_anomaly_ov(
                trained,
                processor,
                folder,
                cfg.model,
                base_weights=cfg.tuning == "full",
                merge_lora=cfg.export.merge_lora,
            )
            if result.finished
            else None
        )
    )
    metrics = {
        "losses": result.losses,
        "learning_rates": result.learning_rates,
        "steps_per_epoch": result.steps_per_epoch,
        "total_steps": result.total_steps,
        "resumed_from_step": result.resumed_from_step,
        "finished": result.finished,
        "left_out_per_epoch": result.left_out_per_epoch,
        "num_samples": len(records),
        "num_processes": accelerator.num_processes,
        "trainable_parameters": sum(counts.values()),
        "rank_checksums": checksums,
        "model": str(folder) if result.finished else None,
        "preempted": result.preempted,
        "nonfinite_steps": result.nonfinite_steps,
        "seconds": time.perf_counter() - start,
    }
    if accelerator.is_main_process:
        (run_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if result.finished:
            print(f"model: {folder}\npredict: anomaly-ov predict --model {folder} <images>")
    if lock is not None:
        lock.release()
    shutdown(accelerator)
    return metrics


def cli_main(argv: list[str]) -> int:
    """``anomaly-ov finetune [hydra overrides]``: composes configs/finetune.yaml and trains."""
    from hydra import compose, initialize_config_dir

    from anomaly_ov.config import config_dir

    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        print("usage: anomaly-ov finetune [key=value ...]   (keys of configs/finetune.yaml)")
        return 0
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="finetune", overrides=list(argv))
    metrics = finetune(cfg)
    sys.stdout.flush()
    if metrics["preempted"]:
        return PREEMPTED_EXIT_CODE
    return 0 if metrics["losses"] or metrics["finished"] else 1
