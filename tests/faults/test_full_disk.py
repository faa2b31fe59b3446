"""A full disk (``ENOSPC``) while writing each output a later step trusts: the error names the path, the
previous checkpoint / export / cache / result stays valid and is what a rerun uses, and no half-written
file is taken as complete. The disk is simulated (:mod:`full_disk`: the write that crosses a byte budget
fails, at several points of each write); one test fills a real small tmpfs where the machine allows it."""

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from full_disk import failure_points, full_disk, needed_bytes  # same folder (on sys.path)
from safetensors.torch import load_file
from torch.utils.data import Dataset

from anomaly_ov.checkpoints.training_state import latest_checkpoint
from anomaly_ov.data.feature_cache import collate_features
from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig
from anomaly_ov.training.distributed import make_accelerator
from anomaly_ov.training.expert import ExpertTrainer

PROJECT = Path(__file__).resolve().parents[2]
GRID, DIM, LEVELS = 4, 16, 2


def _disk_full(error: pytest.ExceptionInfo, path: Path) -> None:
    """The error is ENOSPC and names ``path``."""
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC, repr(error.value)
    assert str(path) in str(error.value), str(error.value)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old"))


# ---------------------------------------------------------------------------------------------- stage 1


class ToyFeatures(Dataset):
    """Cached-feature items of a toy task (anomalous: a bright patch in the level tokens)."""

    def __init__(self, num: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.labels = [int(i % 3 == 0) for i in range(num)]
        self.items = []
        for label in self.labels:
            final = torch.randn(1, GRID * GRID, DIM, generator=generator)
            levels = torch.randn(1, LEVELS, GRID * GRID, DIM, generator=generator)
            levels[0, :, 5, :4] += 3.0 * label
            self.items.append((final.half(), levels.half()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return (index, *self.items[index])


def _stage1(run_dir: Path, epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    expert = AnomalyExpert(ExpertConfig(vision_dim=DIM, expert_dim=8, grid=GRID, num_levels=LEVELS))
    trainer = ExpertTrainer(
        expert=expert,
        optimizer_factory=partial(torch.optim.AdamW, lr=1e-2),
        scheduler_factory=partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, eta_min=0.0),
        accelerator=make_accelerator(cpu=True),
        run_dir=run_dir,
        epochs=epochs,
        seed=0,
        progress=False,
        global_batch_size=4,
    )
    data = ToyFeatures(8)
    return trainer.fit(data, collate_features, lambda batch: batch, data.labels)


@pytest.fixture(scope="module")
def stage1_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage1") / "run"
    result = _stage1(run_dir, epochs=3)
    checkpoint_bytes = sum(p.stat().st_size for p in (run_dir / "checkpoints" / "epoch_001").iterdir())
    return result, checkpoint_bytes


def test_stage1_full_disk_while_checkpointing_keeps_the_last_checkpoint(stage1_reference, tmp_path):
    reference, size = stage1_reference
    points = failure_points(size)
    for number, point in enumerate(points):
        run_dir = tmp_path / f"run{number}"
        # the first epoch's checkpoint fits, the second's fails `point` bytes in
        with full_disk(run_dir / "checkpoints", budget=size + point), pytest.raises(OSError) as error:
            _stage1(run_dir, epochs=3)
        _disk_full(error, run_dir / "checkpoints" / "epoch_002")
        assert "earlier checkpoints are kept" in str(error.value)
        last = latest_checkpoint(run_dir)
        assert last.epoch == 1 and _leftovers(run_dir) == []
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_001"]
        load_file(last.model), load_file(last.state)  # complete files
        # the rerun continues from epoch 1 and ends where the uninterrupted run ends
        resumed = _stage1(run_dir, epochs=3, seed=7)
        assert resumed.resumed_from_epoch == 1 and resumed.losses == reference.losses
        a, b = load_file(reference.expert_path), load_file(resumed.expert_path)
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_stage1_full_disk_while_exporting_the_expert_leaves_no_half_file(stage1_reference, tmp_path):
    reference, _ = stage1_reference
    expert_bytes = Path(reference.expert_path).stat().st_size
    run_dir = tmp_path / "run"
    _stage1(run_dir, epochs=2)
    (run_dir / "expert.safetensors").unlink()  # as if the disk filled while copying it out
    # the run is complete: a rerun writes its small bookkeeping files, then copies the expert out
    rerun_bytes = needed_bytes(run_dir, lambda: _stage1(run_dir, epochs=2))
    (run_dir / "expert.safetensors").unlink()
    points = failure_points(expert_bytes)
    for point in points:
        budget = rerun_bytes - expert_bytes + point  # the copy fails `point` bytes in
        with full_disk(run_dir, budget=budget), pytest.raises(OSError) as error:
            _stage1(run_dir, epochs=2)
        _disk_full(error, run_dir / "expert.safetensors")
        assert not (run_dir / "expert.safetensors").exists() and _leftovers(run_dir) == []
    assert Path(_stage1(run_dir, epochs=2).expert_path).stat().st_size == expert_bytes


# ---------------------------------------------------------------------------------------------- stage 2


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_zoo):
    from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config

    torch.set_num_threads(1)
    config = compose_config(
        "chat", [f"paths.zoo_dir={tiny_zoo.root}", "model/lora=default", "model.lora.rank=4"]
    )
    return AnomalyOVPipeline.from_config(config), config


def test_stage2_full_disk_while_exporting_keeps_the_earlier_model_folder(tiny_pipeline, tmp_path):
    from anomaly_ov.checkpoints.model_folder import load_anomaly_ov, save_anomaly_ov

    pipe, config = tiny_pipeline
    folder = tmp_path / "model"
    save_anomaly_ov(pipe.model, pipe.processor, folder, config.model)
    before = _digest(folder)
    size = needed_bytes(
        tmp_path / "scratch",
        lambda: save_anomaly_ov(pipe.model, pipe.processor, tmp_path / "scratch" / "m", config.model),
    )
    points = failure_points(size)
    for point in points:
        with full_disk(tmp_path, budget=point), pytest.raises(OSError) as error:
            save_anomaly_ov(pipe.model, pipe.processor, folder, config.model)
        _disk_full(error, folder)
        assert _digest(folder) == before and _leftovers(tmp_path) == []
    assert load_anomaly_ov(folder).model is not None  # the earlier export still loads
    # a folder holding something else is never replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a saved Anomaly-OV model"):
        save_anomaly_ov(pipe.model, pipe.processor, tmp_path / "other", config.model)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


class _Accelerator:
    """What ``InstructTrainer._save`` asks of accelerate, on one process: save_state writes two files."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str, exclude_frozen_parameters: bool) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({"weights": torch.arange(256.0)}, Path(folder) / "pytorch_model.bin")
        torch.save({"optimizer": torch.zeros(128)}, Path(folder) / "optimizer.bin")


def test_stage2_full_disk_while_checkpointing_leaves_the_last_complete_checkpoint(tmp_path):
    from anomaly_ov.training.instruct import STATE_NAME, InstructTrainer, latest_step_checkpoint

    def trainer(run_dir: Path) -> SimpleNamespace:
        return SimpleNamespace(accelerator=_Accelerator(), run_dir=run_dir, keep_last_checkpoints=None)

    size = needed_bytes(
        tmp_path / "scratch", lambda: InstructTrainer._save(trainer(tmp_path / "scratch"), {"global_step": 1})
    )
    points = failure_points(size)
    for number, point in enumerate(points):
        run_dir = tmp_path / f"run{number}"
        InstructTrainer._save(trainer(run_dir), {"global_step": 2})
        with full_disk(run_dir, budget=point), pytest.raises(OSError) as error:
            InstructTrainer._save(trainer(run_dir), {"global_step": 4})
        _disk_full(error, run_dir / "checkpoints" / "step_0000004")
        last = latest_step_checkpoint(run_dir)
        assert last.name == "step_0000002" and json.loads((last / STATE_NAME).read_text())["global_step"] == 2
        # a folder without a complete state.json is never resumed from
        assert not (run_dir / "checkpoints" / "step_0000004" / STATE_NAME).exists()
        assert _leftovers(run_dir) == []


# ---------------------------------------------------------------------------------------------- feature cache


def test_feature_cache_full_disk_keeps_the_finished_shards(tiny_zoo, synthetic_data, tmp_path):
    from transformers import LlavaOnevisionImageProcessor

    from anomaly_ov.data.crops import ImageCrops
    from anomaly_ov.data.feature_cache import FeatureCache, cache_fingerprint, weights_sha256
    from anomaly_ov.data.zsad import InstructionSource
    from anomaly_ov.models.builders import build_siglip_tower

    torch.set_num_threads(1)
    tower = build_siglip_tower(str(tiny_zoo.siglip), [2, 3, 4, 5])
    crops = ImageCrops(LlavaOnevisionImageProcessor.from_pretrained(tiny_zoo.llava_ov), single_crop=True)
    samples = InstructionSource(synthetic_data.instruct_json, synthetic_data.root).read()[:8]

    def cache(root: Path) -> FeatureCache:
        fingerprint = cache_fingerprint(
            {"backend": "siglip"}, (2, 3, 4, 5), -1, weights_sha256(tower), crops.fingerprint()
        )
        return FeatureCache(root, fingerprint, tower.num_tokens, tower.hidden_size, 4)

    def build(root: Path) -> None:
        cache(root).build(samples, crops, tower, max_bytes=10**9, shard_size=4, progress=False)

    reference = tmp_path / "reference"
    build(reference)
    size = needed_bytes(tmp_path / "scratch", lambda: build(tmp_path / "scratch"))
    # meta.json, then two shards of 4 single-crop images (the same size): fail inside the second shard
    shard = (size - (cache(reference).dir / "meta.json").stat().st_size) // 2
    points = [size - shard + p for p in failure_points(shard)]
    for number, point in enumerate(points):
        root = tmp_path / f"cache{number}"
        with full_disk(root, budget=point), pytest.raises(OSError) as error:
            build(root)
        assert error.value.errno == errno.ENOSPC and "shard-" in str(error.value), str(error.value)
        shards = sorted(p.name for p in cache(root).dir.iterdir() if p.name.startswith("shard-"))
        assert len(shards) == 1 and _leftovers(root) == []  # the first shard, finished; nothing half
        build(root)  # the rerun builds only the missing shard and equals an uninterrupted build
        assert _digest(cache(root).dir) == _digest(cache(reference).dir)


# ---------------------------------------------------------------------------------------------- results


def test_a_result_line_cut_by_a_full_disk_is_dropped_and_evaluated_again(tmp_path):
    from anomaly_ov.eval.results import ResultsWriter, finished_records, merge_results, part_path, read_jsonl

    path = tmp_path / "detection.jsonl"
    record = {"key": "x", "reply": "Yes, there is a scratch on the left side." * 3}
    line = len(json.dumps({**record, "key": "item0"}) + "\n")  # every line has this length
    points = [2 * line + p for p in failure_points(line)]
    for point in points:
        for part in tmp_path.glob("*.jsonl"):
            part.unlink()
        with (
            full_disk(tmp_path, budget=point),
            pytest.raises(OSError) as error,
            ResultsWriter(path) as writer,
        ):
            for index in range(5):
                writer.append({**record, "key": f"item{index}"})
        _disk_full(error, part_path(path, 0))
        assert set(finished_records(path, "key")) == {"item0", "item1"}  # the cut line is not taken
        with ResultsWriter(path) as writer:  # the rerun cuts the file back to its last complete line
            assert part_path(path, 0).read_bytes().endswith(b"\n")
            for index in range(2, 5):
                writer.append({**record, "key": f"item{index}"})
        assert [r["key"] for r in read_jsonl(part_path(path, 0))] == [f"item{i}" for i in range(5)]
    # the merge is atomic: a full disk leaves the part files, and the merge reruns
    merged_bytes = 5 * line
    for point in failure_points(merged_bytes):
        with full_disk(tmp_path, budget=point), pytest.raises(OSError) as error:
            merge_results(path, "key", [f"item{i}" for i in range(5)])
        _disk_full(error, path)
        assert not path.exists() and part_path(path, 0).is_file() and _leftovers(tmp_path) == []
    assert len(merge_results(path, "key", [f"item{i}" for i in range(5)])) == 5


# ---------------------------------------------------------------------------------------------- report


def test_report_full_disk_keeps_the_earlier_report(tmp_path, monkeypatch):
    from anomaly_ov.report import document

    def fake_write(inputs, staging: Path) -> str:
        # stands for the figures and tables: three files of 1000 bytes
        for name in ("roc.png", "curves.png", "heatmaps.png"):
            (staging / name).write_bytes(bytes(1000))
        return "# report\n"

    monkeypatch.setattr(document, "_write", fake_write)
    out = tmp_path / "report"
    document.build_report(None, out)
    before = _digest(out)
    size = needed_bytes(tmp_path / "scratch", lambda: document.build_report(None, tmp_path / "scratch" / "r"))
    points = failure_points(size)
    for point in points:
        with full_disk(tmp_path, budget=point), pytest.raises(OSError) as error:
            document.build_report(None, out)
        _disk_full(error, out)
        assert _digest(out) == before and not list(tmp_path.glob(".report.*"))


# ---------------------------------------------------------------------------------------------- a real tmpfs

_FILL_CACHE = """
import sys
import numpy as np
from pathlib import Path
from anomaly_ov.data.feature_cache import FeatureCache
cache = FeatureCache(Path(sys.argv[1]), {"tower": "toy"}, num_tokens=729, hidden_size=1152, num_levels=4)
temporary = cache.dir / "shard-x.tmp"
temporary.mkdir(parents=True)
chunk = [("k", Path("k.png"), True)]
class Crops:
    def image_num_crops(self, path, single):
        return 8  # 8 crops at released shapes: ~67 MB, more than the 16 MB disk
try:
    cache._fill_shard(temporary, chunk, Crops(), None, 1, 1, 0, False)
except OSError as error:
    print("OSError", error.errno, error)
"""


def _mount_namespace_works() -> bool:
    probe = (
        subprocess.run(
            [
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                "mount -t tmpfs -o size=1m tmpfs /mnt",
            ],
            capture_output=True,
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(
    not _mount_namespace_works(), reason="needs unshare and a mount namespace (user namespaces)"
)
@pytest.mark.slow  # ~20 s on 2 busy cores: a fresh interpreter imports torch inside the namespace
def test_a_full_tmpfs_is_an_error_naming_the_cache_file_not_a_bus_error(tmp_path):
    # a memory-mapped shard is a sparse file: without reserving its blocks, the write through the map on a
    # full disk kills the process with SIGBUS (exit 135), no message, no file named
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_FILL_CACHE)
    command = f"mount -t tmpfs -o size=16m tmpfs {mount} && exec {sys.executable} {script} {mount}"
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # final.npy (13 MB) fits the 16 MB disk, levels.npy (54 MB) does not
    assert f"OSError {errno.ENOSPC}" in done.stdout and "shard-x.tmp/levels.npy" in done.stdout, done.stdout
