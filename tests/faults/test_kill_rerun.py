"""SIGKILL at points of a command's own progress, rerun, and the outputs equal an uninterrupted run's.

Deterministic commands must give byte-identical files (the synthetic dataset, the tiny zoo, the stage-1
expert, the zero-shot metrics); stage 2 gives the uninterrupted run's losses (relative 1e-6 on one process,
1e-5 on two, as the stage-2 integration tests) and identical weight checksums. ``FAULT_K`` / ``FAULT_K_SLOW``
and ``FAULT_SEED`` choose the points (see ``harness.py``).
"""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fault_runs import losses_of, reference, stage1_command, stage2_command
from harness import (
    PROJECT,
    PYTHON,
    differing_files,
    fault_k,
    fault_seed,
    files_under,
    json_of,
    kill_and_rerun,
    kill_points,
    lines_of,
    run_once,
    same_safetensors,
    stage1_epochs,
    total,
)
from safetensors.torch import load_file


def _cli(*arguments: str) -> list[str]:
    return [PYTHON, "-m", "anomaly_ov.cli", *arguments]


def _assert_all_killed(run, points) -> None:
    assert len(run.kills) == len(points), run.summary()  # every planned kill landed before the end
    assert run.final.returncode == 0, run.final.output


def test_make_synthetic_killed_and_rerun_writes_the_same_files(synthetic_data, tmp_path):
    out = tmp_path / "synthetic"
    expected = sum(1 for p in synthetic_data.root.rglob("*") if p.is_file())
    points = kill_points(expected, fault_k(), fault_seed())
    run = kill_and_rerun(
        _cli("make-synthetic", "--out", str(out), "--scale", "small", "--seed", "0"),
        files_under(out),
        points,
    )
    _assert_all_killed(run, points)
    # the fixture wrote the same seed in-process: every file byte for byte
    assert differing_files(out, synthetic_data.root) == []


@pytest.mark.slow
def test_make_tiny_zoo_killed_and_rerun_builds_the_same_zoo(tiny_zoo, tmp_path):
    box = tmp_path / "box"
    out = box / "zoo"
    expected = sum(1 for p in tiny_zoo.root.rglob("*") if p.is_file())
    points = kill_points(expected, fault_k(slow=True), fault_seed())
    run = kill_and_rerun(_cli("make-tiny-zoo", "--out", str(out), "--seed", "0"), files_under(box), points)
    _assert_all_killed(run, points)
    assert differing_files(out, tiny_zoo.root) == []
    # the zoo is staged beside its folder and renamed when complete: a killed build leaves its staging
    # folder behind (never taken for the zoo), one per kill that landed during the build
    leftovers = [p.name for p in box.iterdir() if p.name.endswith(".partial")]
    print(f"staging folders left by {len(run.kills)} kills: {leftovers}")
    assert len(leftovers) <= len(run.kills)


@pytest.mark.real  # the real zoo's weight packages (installed by scripts/setup_env.sh)
def test_make_real_zoo_killed_and_rerun_builds_the_same_zoo(tmp_path):
    reference_out = tmp_path / "reference"
    done = run_once(_cli("make-real-zoo", "--out", str(reference_out)), timeout=600)
    assert done.returncode == 0, done.output
    box = tmp_path / "box"
    out = box / "zoo"
    expected = sum(1 for p in reference_out.rglob("*") if p.is_file())
    points = kill_points(expected, fault_k(), fault_seed())
    run = kill_and_rerun(_cli("make-real-zoo", "--out", str(out)), files_under(box), points, timeout=600)
    _assert_all_killed(run, points)
    assert differing_files(out, reference_out) == []


def _stage1(tiny_zoo, synthetic_data, out, *extra, processes=1):
    return stage1_command(out, tiny_zoo, synthetic_data, *extra, processes=processes)


def _same_stage1_outputs(out: Path, expected: Path) -> None:
    got, want = json_of(out / "run" / "train_metrics.json"), json_of(expected / "run" / "train_metrics.json")
    assert got["losses"] == want["losses"] and got["epoch_losses"] == want["epoch_losses"]
    assert got["num_samples"] == want["num_samples"] == 66
    assert same_safetensors(out / "run" / "expert.safetensors", expected / "run" / "expert.safetensors")
    # the feature cache: the same shards, byte for byte (no half-written shard was kept)
    assert differing_files(out / "cache", expected / "cache") == []


def _stage1_progress(out: Path):
    return total(files_under(out / "cache", "index.json", name="shards"), stage1_epochs(out / "run"))


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["k", "k_slow"])
def test_stage1_cache_build_and_training_killed_and_rerun(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory, slow
):
    expected = reference("stage1", partial(_stage1, tiny_zoo, synthetic_data), tmp_path_factory)
    out = tmp_path / "faulted"
    # 9 shards, then 6 epochs: the points fall in the cache build and in training
    final = _stage1_progress(expected).count()
    points = kill_points(final, fault_k(slow), fault_seed())
    run = kill_and_rerun(_stage1(tiny_zoo, synthetic_data, out), _stage1_progress(out), points)
    assert run.final.returncode == 0, run.final.output
    assert run.kills, run.summary()
    _same_stage1_outputs(out, expected)


@pytest.mark.slow
def test_eval_zsad_killed_and_rerun_writes_the_same_metrics(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory
):
    trained = reference("stage1", partial(_stage1, tiny_zoo, synthetic_data), tmp_path_factory)

    def command(out: Path, processes: int = 1) -> list[str]:
        return [
            PYTHON,
            str(PROJECT / "scripts" / "eval_zsad.py"),
            f"run_dir={trained / 'run'}",
            "heatmaps_per_class=2",
            f"output_name={out.name}",
            f"paths.output_root={out}",
            f"paths.zoo_dir={tiny_zoo.root}",
            f"paths.synthetic_dir={synthetic_data.root}",
        ]

    def outputs(out: Path) -> Path:
        return trained / "run" / "eval" / out.name

    expected = reference("eval_zsad", command, tmp_path_factory)
    out = tmp_path / "faulted_eval"
    progress = total(
        files_under(out / "cache", "index.json", name="shards"), files_under(outputs(out), "*.png")
    )
    final = total(
        files_under(expected / "cache", "index.json"), files_under(outputs(expected), "*.png")
    ).count()
    points = kill_points(final, fault_k(slow=True), fault_seed())
    run = kill_and_rerun(command(out), progress, points)
    assert run.final.returncode == 0, run.final.output
    assert run.kills, run.summary()
    got, want = json_of(outputs(out) / "metrics.json"), json_of(outputs(expected) / "metrics.json")

    def relative(datasets: dict, root: Path) -> dict:  # heat-map paths name the evaluation's own folder
        return {
            name: {**d, "heatmaps": [str(Path(h).relative_to(root)) for h in d["heatmaps"]]}
            for name, d in datasets.items()
        }

    assert relative(got["datasets"], outputs(out)) == relative(want["datasets"], outputs(expected))
    assert (outputs(out) / "table.md").read_text() == (outputs(expected) / "table.md").read_text()
    assert differing_files(outputs(out) / "heatmaps", outputs(expected) / "heatmaps") == []


def _checksums_equal(out: Path, expected: Path, rtol: float) -> None:
    got, want = json_of(out / "run" / "train_metrics.json"), json_of(expected / "run" / "train_metrics.json")
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=rtol)
    for rank in got["rank_checksums"]:
        np.testing.assert_allclose(rank, want["rank_checksums"][0], rtol=rtol, atol=1e-7)
    lines = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # lines after the resumed checkpoint redone once


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_stage2_killed_and_rerun_gives_the_same_losses(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory, processes
):
    def command(out: Path, *extra: str, processes: int = 1) -> list[str]:
        return stage2_command(out, tiny_zoo, synthetic_data, *extra, processes=processes)

    expected = reference("stage2", command, tmp_path_factory)
    out = tmp_path / "faulted"
    extra = [
        "trainer.fit.save_every_n_steps=1",
        *(["trainer.accelerator.bf16=false"] if processes > 1 else []),
    ]
    # the 4 optimizer steps as metrics.jsonl lines: kill after 1, 2 or 3 of them
    points = kill_points(4, fault_k(slow=True), fault_seed())
    run = kill_and_rerun(
        command(out, *extra, processes=processes),
        lines_of(out / "run" / "metrics.jsonl", name="steps"),
        points,
    )
    assert run.final.returncode == 0, run.final.output
    assert run.kills, run.summary()
    _checksums_equal(out, expected, rtol=1e-6 if processes == 1 else 1e-5)
    assert (out / "run" / "model" / "anomaly_ov.json").is_file()


def _benchmark_command(tiny_zoo, synthetic_data, out: Path, *extra: str, processes: int = 1) -> list[str]:
    return [
        PYTHON,
        str(PROJECT / "scripts" / "eval_benchmark.py"),
        f"paths.zoo_dir={tiny_zoo.root}",
        f"paths.synthetic_dir={synthetic_data.root}",
        f"paths.output_root={out}",
        f"out_dir={out / 'eval'}",
        "generation.max_new_tokens=3",
        "batch_size=1",
        "progress=false",
        "cpu=true",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "benchmark",
    ["synthetic_visa_dr", "synthetic_visa_dr_fast", "synthetic_mmad"],
    ids=["release", "fast", "mmad"],
)
def test_eval_benchmark_killed_and_rerun_writes_the_same_results(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory, benchmark
):
    extra = (
        ("benchmark=synthetic_mmad",) if benchmark == "synthetic_mmad" else ("benchmark=synthetic_visa_dr",)
    )
    if benchmark.endswith("_fast"):
        extra = (*extra, "detection.protocol=fast")
    command = partial(_benchmark_command, tiny_zoo, synthetic_data)
    expected = reference(f"eval_{benchmark}", command, tmp_path_factory, *extra)
    out = tmp_path / "faulted"
    rows = lines_of(out / "eval" / "*.jsonl", name="rows")
    final = lines_of(expected / "eval" / "*.jsonl").count()
    points = kill_points(final, fault_k(slow=True), fault_seed())
    run = kill_and_rerun(command(out, *extra), rows, points)
    assert run.final.returncode == 0, run.final.output
    assert run.kills, run.summary()
    # every result file: the same records (one per item, none twice), the same metrics
    for path in sorted((expected / "eval").glob("*.jsonl")):
        want = sorted(path.read_text().splitlines())
        assert sorted((out / "eval" / path.name).read_text().splitlines()) == want, path.name
    for path in sorted((expected / "eval").glob("*.json")):
        if path.name != "config.json":
            assert json_of(out / "eval" / path.name) == json_of(path), path.name
    if (expected / "eval" / "table.md").is_file():
        assert (out / "eval" / "table.md").read_text() == (expected / "eval" / "table.md").read_text()


def test_stage1_expert_of_a_killed_run_is_the_reference_expert(tiny_zoo, synthetic_data, tmp_path_factory):
    """The reference itself is sane: a full expert whose weights are finite (what the comparisons trust)."""
    expected = reference("stage1", partial(_stage1, tiny_zoo, synthetic_data), tmp_path_factory)
    weights = load_file(expected / "run" / "expert.safetensors")
    assert weights and all(bool(t.isfinite().all()) for t in weights.values())
    assert len(losses_of(expected)) == 6 * 5
