r"""Benchmark evaluation of a multimodal model (configs/eval_benchmark.yaml): VisA-D&R detection and
reasoning, or MMAD (SPEC §5-§7).

    python scripts/eval_benchmark.py benchmark=visa_dr benchmark.root=/data model_dir=<exported model>
    python scripts/eval_benchmark.py benchmark=mmad benchmark.root=/data/MMAD model/llm=llava_ov_05b \
        model/expert=none
    accelerate launch --num_processes 8 scripts/eval_benchmark.py ...        # or: anomaly-ov eval ...

Every process evaluates its own slice of the unfinished items and appends each result to its part file as
soon as it is computed (:mod:`anomaly_ov.eval.results`); a rerun with the same ``out_dir`` skips what is
done. When all are done, the main process merges the parts into ``detection.jsonl`` / ``reasoning.jsonl`` /
``mmad.jsonl`` and writes ``metrics.json``, ``table.md`` and ``skipped_records.json`` into ``out_dir``. The
settings that change results are kept in ``run.json``; resuming under other settings is refused.
"""

import copy
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from anomaly_ov.checkpoints import load_anomaly_ov
from anomaly_ov.data.images import BadInputError, read_image
from anomaly_ov.eval import detection as det
from anomaly_ov.eval import mmad
from anomaly_ov.eval import reasoning as rsn
from anomaly_ov.eval.benchmark_tables import mmad_table, table4, table4_row
from anomaly_ov.eval.records import BadRecordError, RecordChecker, SkippedRecord, write_skip_report
from anomaly_ov.eval.results import ResultsWriter, finished_records, merge_results, shard, write_json
from anomaly_ov.eval.text_similarity import RougeL, SentenceSimilarity
from anomaly_ov.inference.pipeline import AnomalyOVPipeline
from anomaly_ov.models.processor import AnomalyOVProcessor
from anomaly_ov.run_lock import lock_run_folder

RUN_FILE = "run.json"
SKIPPED_FILE = "skipped_records.json"
SKIPPED_PARTS = "skipped.jsonl"


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings that change results (model, benchmark, protocol, scoring), as saved in ``run.json``."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    keys = ("model_dir", "benchmark", "generation", "max_image_side", "detection", "reasoning", "judge")
    settings = {key: resolved.get(key) for key in keys}
    settings["model"] = None if resolved.get("model_dir") else resolved.get("model")
    return settings


def check_resumable(out_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuses to resume into ``out_dir`` when its results were computed under other settings.

    Raises:
        ValueError: Naming the settings that differ.
    """
    path = out_dir / RUN_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key))
    if changed:
        raise ValueError(
            f"{out_dir} holds results computed with other settings ({', '.join(changed)} differ from "
            f"{path}); "
            "choose another out_dir, or delete that folder to start over"
        )


class ItemLoop:
    """What every benchmark task shares: this rank's slice of the unfinished items, images, results, skips.

    Args:
        out_dir: The output folder.
        rank: This process's rank.
        world_size: Number of processes.
        root: The benchmark root (image paths are relative to it).
        max_image_side: The release's long-side limit (None: off).
        skip_bad_records: Skip and report records whose images cannot be read.
        progress: Show a progress bar (main process only).
        barrier: Waits for every process (a no-op for one).
        prepare: Applied to every image after reading (MMAD's own preprocessing); None: as read.
    """

    def __init__(
        self,
        out_dir: Path,
        rank: int,
        world_size: int,
        root: Path,
        max_image_side: int | None,
        skip_bad_records: bool,
        progress: bool,
        barrier: Callable[[], None],
        prepare: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.rank = rank
        self.world_size = world_size
        self.root = root
        self.max_image_side = max_image_side
        self.skip_bad_records = skip_bad_records
        self.progress = progress and rank == 0
        self.barrier = barrier
        self.prepare = prepare
        self._prepared: dict[str, Image.Image] = {}  # the last 8 prepared images, newest first
        self._skips = ResultsWriter(out_dir / SKIPPED_PARTS, rank)

    def image(
        self, path: str, record: str, source: str, check: Callable[[Image.Image, str], None]
    ) -> Image.Image | None:
        """Reads one image of a record (None when it is bad and skipping is on).

        Raises:
            BadRecordError: For an unreadable or unusable image, unless skipping is on.
        """
        try:
            image = self._prepared.get(path)
            if image is None:
                image = read_image(self.root / path, self.max_image_side)
                if self.prepare is not None:
                    # MMAD asks several questions of one image (and shows one template many times): fit once
                    image = self.prepare(image)
                    self._prepared = {path: image, **dict(list(self._prepared.items())[:7])}
            check(image, str(self.root / path))
            return image
        except (BadInputError, ValueError, TypeError) as error:
            if not self.skip_bad_records:
                raise BadRecordError(source, record, str(error)) from None
            self._skips.append(
                {"key": f"{source}:{record}", "source": source, "record": record, "reason": str(error)}
            )
            return None

    def run(
        self,
        name: str,
        items: Sequence[Any],
        key: Callable[[Any], str],
        batch_size: int,
        evaluate: Callable[[list[Any]], Iterator[dict[str, Any]]],
    ) -> None:
        """Evaluates this rank's share of the unfinished ``items`` and appends each result at once.

        Args:
            name: The results file (``detection.jsonl``, ...).
            items: All items of the task, in benchmark order.
            key: The item's key (its ``key`` field in the results).
            batch_size: Items per call of ``evaluate``.
            evaluate: Turns a batch of items into result records (with the key field).
        """
        path = self.out_dir / name
        done = finished_records(path, "key")
        mine = list(shard([item for item in items if key(item) not in done], self.rank, self.world_size))
        # every process must see the same finished items before any writes, or the slices would not match
        self.barrier()
        with (
            ResultsWriter(path, self.rank) as writer,
            tqdm(total=len(mine), desc=Path(name).stem, unit="item", disable=not self.progress) as bar,
        ):
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                for record in evaluate(chunk):
                    writer.append(record)
                bar.update(len(chunk))

    def close(self) -> None:
        """Closes the skip report's part file."""
        self._skips.close()


def _mmad_preprocessing(cfg: DictConfig) -> bool:
    """Whether images go through MMAD's own preprocessing (``benchmark.preprocess: mmad``)."""
    if cfg.benchmark.name != "mmad":
        return False
    if cfg.benchmark.preprocess not in mmad.PREPROCESSING:
        raise ValueError(
            f"benchmark.preprocess={cfg.benchmark.preprocess!r}; expected one of {list(mmad.PREPROCESSING)}"
        )
    return cfg.benchmark.preprocess == "mmad"


def _evaluation_processor(processor: AnomalyOVProcessor, cfg: DictConfig) -> AnomalyOVProcessor:
    """The processor with this evaluation's image settings.

    ``max_image_side`` replaces the value a saved model folder's processor carries (so ``null`` turns the
    resize off there too, and ``run.json`` records what is applied); MMAD's preprocessing encodes every
    image as one crop (AnyRes off).
    """
    max_side = None if cfg.max_image_side is None else int(cfg.max_image_side)
    single_crop = _mmad_preprocessing(cfg)
    if processor.max_image_side == max_side and not (single_crop and processor.anyres):
        return processor
    adjusted = copy.copy(processor)
    adjusted.max_image_side = max_side
    adjusted.anyres = processor.anyres and not single_crop
    return adjusted


def _build_pipeline(cfg: DictConfig, device: torch.device) -> AnomalyOVPipeline:
    generation = OmegaConf.to_container(cfg.generation, resolve=True)
    if cfg.benchmark.name == "mmad" and cfg.benchmark.max_new_tokens is not None:
        generation["max_new_tokens"] = int(cfg.benchmark.max_new_tokens)
    if cfg.model_dir is not None:
        loaded = load_anomaly_ov(cfg.model_dir)
        model, processor = loaded.model, loaded.processor
    else:
        torch.manual_seed(int(cfg.seed))
        bundle = instantiate(cfg.model, _convert_="all")
        model, processor = bundle.model, bundle.processor
    if next(model.parameters()).device.type == "cpu" and device.type != "cpu":
        model = model.to(device)
    return AnomalyOVPipeline(model, _evaluation_processor(processor, cfg), generation)


def _batches_of_images(
    loop: ItemLoop,
    source: str,
    items: list[Any],
    paths: Callable[[Any], list[str]],
    name: Callable[[Any], str],
    check: Callable[[Image.Image, str], None],
) -> list[tuple[Any, list[Image.Image]]]:
    """The items of a batch whose images could all be read, with their images."""
    kept = []
    for item in items:
        images = [loop.image(p, name(item), source, check) for p in paths(item)]
        if all(image is not None for image in images):
            kept.append((item, images))
    return kept


def run_detection(
    cfg: DictConfig,
    loop: ItemLoop,
    pipeline: AnomalyOVPipeline,
    records: list[det.DetectionRecord],
    source: str,
) -> None:
    """Detection on this rank's share: the release's protocol (generation) or the fast path."""
    bench, settings = cfg.benchmark, cfg.detection
    check = pipeline.processor.check_image
    if settings.protocol not in ("release", "fast"):
        raise ValueError(f"detection.protocol={settings.protocol!r}; expected 'release' or 'fast'")
    tokens = det.answer_tokens(
        pipeline.processor.tokenizer,
        [str(w) for w in settings.yes_words],
        [str(w) for w in settings.no_words],
    )
    fast = det.FastDetector(pipeline.model, pipeline.processor, tokens, bench.prompt)

    def evaluate(chunk: list[det.DetectionRecord]) -> Iterator[dict[str, Any]]:
        kept = _batches_of_images(loop, source, chunk, lambda r: [r.image], lambda r: r.image, check)
        if not kept:
            return
        records_, images = [r for r, _ in kept], [i[0] for _, i in kept]
        names = [str(loop.root / r.image) for r in records_]
        if settings.protocol == "fast":
            for record, decision in zip(records_, fast.decide(images, names), strict=True):
                reply = pipeline.processor.tokenizer.decode([decision.first_token])
                start = det.reply_start(reply) if decision.starts_with_answer else "other"
                yield _detection_line(
                    record, reply, decision.predicted, decision.score, decision.expert_score, start
                )
            return
        turns = [[{"from": "human", "value": bench.prompt}]] * len(records_)
        answers = pipeline.answer(turns, [[i] for i in images], [[n] for n in names])
        for record, answer in zip(records_, answers, strict=True):
            expert = answer.images[0].score if answer.images else None
            yield _detection_line(
                record, answer.text, det.is_yes(answer.text), None, expert, det.reply_start(answer.text)
            )

    loop.run("detection.jsonl", records, lambda r: r.image, int(cfg.batch_size), evaluate)


def _detection_line(
    record: det.DetectionRecord,
    reply: str,
    predicted: bool,
    score: float | None,
    expert_score: float | None,
    start: str,
) -> dict[str, Any]:
    return {
        "key": record.image,
        "image": record.image,
        "class": record.class_name,
        "anomaly": record.anomaly,
        "reply": reply,
        "predicted": predicted,
        "score": score,
        "expert_score": expert_score,
        "starts_with": start,
    }


def run_reasoning(
    cfg: DictConfig,
    loop: ItemLoop,
    pipeline: AnomalyOVPipeline,
    records: list[rsn.ReasoningRecord],
    source: str,
    device: torch.device,
) -> None:
    """Reasoning on this rank's share: multi-turn answers, then ROUGE-L, SBERT and (optionally) the judge."""
    settings = cfg.reasoning
    judge = instantiate(cfg.judge) if cfg.judge is not None else None
    scorer = rsn.ReasoningScorer(
        rouge=RougeL(use_stemmer=bool(settings.rouge_stemmer)),
        sentence_similarity=SentenceSimilarity(settings.sbert_model, device=str(device)),
        judge=judge,
    )

    def evaluate(chunk: list[rsn.ReasoningRecord]) -> Iterator[dict[str, Any]]:
        kept = _batches_of_images(
            loop, source, chunk, lambda r: [r.image], lambda r: r.image, pipeline.processor.check_image
        )
        if not kept:
            return
        records_ = [r for r, _ in kept]
        responses = rsn.answer_conversations(pipeline, records_, [i[0] for _, i in kept])
        for record, answers in zip(records_, responses, strict=True):
            yield {"key": record.image, **rsn.reasoning_output(record, answers, scorer(record, answers))}

    loop.run("reasoning.jsonl", records, lambda r: r.image, int(cfg.batch_size), evaluate)


def run_mmad(
    cfg: DictConfig,
    loop: ItemLoop,
    pipeline: AnomalyOVPipeline,
    questions: list[mmad.MMADQuestion],
    source: str,
) -> None:
    """MMAD on this rank's share: MMAD's prompt per question, the letter parsed by both parsers."""
    bench = cfg.benchmark
    if bench.shuffle_options:
        questions = [mmad.shuffle_options(q, int(bench.shuffle_seed)) for q in questions]
    prompts = {q.key: mmad.mmad_prompt(q, bool(bench.letter_instruction)) for q in questions}

    def evaluate(chunk: list[mmad.MMADQuestion]) -> Iterator[dict[str, Any]]:
        kept = _batches_of_images(
            loop, source, chunk, lambda q: prompts[q.key][1], lambda q: q.key, pipeline.processor.check_image
        )
        if not kept:
            return
        turns = [[{"from": "human", "value": prompts[q.key][0]}] for q, _ in kept]
        names = [[str(loop.root / p) for p in prompts[q.key][1]] for q, _ in kept]
        answers = pipeline.answer(turns, [images for _, images in kept], names)
        for (question, _), answer in zip(kept, answers, strict=True):
            yield mmad.answer_record(question, answer.text, str(bench.parse), str(bench.letter_pick))

    loop.run("mmad.jsonl", questions, lambda q: q.key, int(cfg.batch_size), evaluate)


def _row_name(cfg: DictConfig) -> str:
    if cfg.table.row_name:
        return str(cfg.table.row_name)
    return Path(cfg.model_dir).name if cfg.model_dir else "this model"


def _summarize(
    cfg: DictConfig, out_dir: Path, orders: Mapping[str, list[str]], world_size: int
) -> dict[str, Any]:
    """Merges the part files and computes metrics.json and table.md (main process)."""
    metrics: dict[str, Any] = {"benchmark": cfg.benchmark.name, "num_processes": world_size}
    merged = {name: merge_results(out_dir / name, "key", order) for name, order in orders.items()}
    row = _row_name(cfg)
    if cfg.benchmark.name == "mmad":
        results = merged["mmad.jsonl"]
        bench = cfg.benchmark
        metrics["mmad"] = (
            mmad.mmad_metrics(results, str(bench.parse), str(bench.normal_flag)) if results else None
        )
        table = mmad_table(row, metrics["mmad"]) if metrics["mmad"] else ""
    else:
        detection = merged.get("detection.jsonl")
        reasoning = merged.get("reasoning.jsonl")
        metrics["detection"] = (
            det.summarize_detection(detection, float(cfg.detection.expert_threshold)) if detection else None
        )
        metrics["detection_protocol"] = cfg.detection.protocol if detection else None
        metrics["reasoning"] = (
            rsn.summarize_reasoning(reasoning, int(cfg.reasoning.low_level_questions)) if reasoning else None
        )
        rows = {
            row: table4_row(
                metrics["detection"]["model"]["mean"] if detection else None, metrics["reasoning"]
            )
        }
        if detection and metrics["detection"]["expert"] is not None:
            rows[f"{row}: expert alone, score >= {cfg.detection.expert_threshold:g}"] = table4_row(
                metrics["detection"]["expert"]["mean"], None
            )
        table = table4(rows, published=bool(cfg.table.published))
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    return metrics


def _destroy_process_group() -> None:
    """Tears the process group down (if any), so that no rank of a stopped run hangs at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _launched_world_size() -> int:
    """The number of processes the launcher (torchrun, accelerate launch) started, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _use_cpu(cpu: bool) -> bool:
    """Whether accelerate's state must be the CPU's: asked for, or several launched processes without CUDA.

    accelerate only recognises a multi-process CPU launch when told ``cpu=True``; otherwise every rank of a
    ``torchrun`` on a machine without GPUs would think itself the only, main process (each taking the run
    lock and evaluating every item).
    """
    return cpu or (_launched_world_size() > 1 and not torch.cuda.is_available())


def _check_world(world_size: int) -> None:
    """Stops a launch whose processes do not form one group (each would evaluate everything, alone)."""
    launched = _launched_world_size()
    if launched != world_size:
        raise RuntimeError(
            f"the launcher started {launched} processes (WORLD_SIZE) but accelerate sees {world_size}: "
            "the processes do not form one group; on a machine without GPUs pass cpu=true"
        )


def eval_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Evaluates the configured model on the configured benchmark; returns metrics.json (main process; {}
    on the others).
    """
    state = PartialState(cpu=_use_cpu(bool(cfg.cpu)))
    rank, world_size = state.process_index, state.num_processes
    _check_world(world_size)
    out_dir = Path(cfg.out_dir)
    # one evaluation per out_dir: rank 0 holds the lock, a second start is refused on every rank
    lock = lock_run_folder(out_dir, state.is_main_process, broadcast_object_list, _destroy_process_group)
    settings = run_settings(cfg)
    check_resumable(out_dir, settings)
    bench = cfg.benchmark
    root = Path(bench.root)
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / RUN_FILE, settings)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if bench.name == "mmad" and bench.get("make_synthetic") and not (root / bench.file).is_file():
            mmad.write_synthetic_mmad(root)
    state.wait_for_everyone()

    skip = bool(cfg.skip_bad_records)
    # records whose image paths leave the benchmark root are refused unless this says otherwise
    outside = bool(bench.allow_outside_root)
    checkers: list[RecordChecker] = []
    orders: dict[str, list[str]] = {}
    pipeline = _build_pipeline(cfg, state.device)
    max_side = None if cfg.max_image_side is None else int(cfg.max_image_side)
    prepare = None
    if _mmad_preprocessing(cfg):
        # MMAD's path reads the whole image and fits it into 512x512 itself: no long-side limit first
        max_side, prepare = None, partial(mmad.mmad_view, crop_size=pipeline.processor.crop_size)
    loop = ItemLoop(
        out_dir, rank, world_size, root, max_side, skip, bool(cfg.progress), state.wait_for_everyone, prepare
    )
    if bench.name == "mmad":
        questions, checker = mmad.read_mmad(
            root / bench.file, root, int(bench.shots), str(bench.template), skip, outside
        )
        checkers.append(checker)
        orders["mmad.jsonl"] = [q.key for q in questions]
        run_mmad(cfg, loop, pipeline, questions, str(root / bench.file))
    else:
        if "detection" in bench.tasks:
            records, checker = det.read_detection_records(root / bench.detection_file, root, skip, outside)
            checkers.append(checker)
            orders["detection.jsonl"] = [r.image for r in records]
            run_detection(cfg, loop, pipeline, records, str(root / bench.detection_file))
        if "reasoning" in bench.tasks:
            records_r, checker, _ = rsn.read_reasoning_records(
                root / bench.reasoning_file, root, bench.answers_key, list(bench.skip_classes), skip, outside
            )
            checkers.append(checker)
            orders["reasoning.jsonl"] = [r.image for r in records_r]
            run_reasoning(cfg, loop, pipeline, records_r, str(root / bench.reasoning_file), state.device)
    loop.close()
    state.wait_for_everyone()

    metrics: dict[str, Any] = {}
    if state.is_main_process:
        metrics = _summarize(cfg, out_dir, orders, world_size)

        runtime = merge_results(out_dir / SKIPPED_PARTS, "key", [])
        skipped = [s for c in checkers for s in c.skipped]
        skipped += [SkippedRecord(r["source"], r["record"], r["reason"]) for r in runtime]
        write_skip_report(out_dir / SKIPPED_FILE, skipped)
        (out_dir / SKIPPED_PARTS).unlink(missing_ok=True)
        metrics["skipped_records"] = len(skipped)
        write_json(out_dir / "metrics.json", metrics)
    state.wait_for_everyone()
    if lock is not None:
        lock.release()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return metrics


def cli_main(argv: list[str] | None = None) -> int:
    """``anomaly-ov eval KEY=VALUE ...``: composes configs/eval_benchmark.yaml with the overrides and runs it.

    Returns:
        0 on success, 2 on a config error (Hydra's message is printed).
    """
    from anomaly_ov.inference.pipeline import compose_config

    overrides = list(sys.argv[1:] if argv is None else argv)
    if overrides and overrides[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = compose_config("eval_benchmark", overrides)
    except ValueError as error:
        print(f"anomaly-ov eval: {error}", file=sys.stderr)
        return 2
    metrics = eval_benchmark(cfg)
    if metrics:
        print((Path(cfg.out_dir) / "table.md").read_text(encoding="utf-8"))
    return 0
