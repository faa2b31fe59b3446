"""The benchmark entrypoint on the synthetic benchmark with the tiny model: fast path = greedy decisions,
files and metrics, resume, 2 processes = 1, MMAD, bad records, the judge through a fake local server."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from anomaly_ov.data.images import read_image
from anomaly_ov.eval.detection import DETECTION_PROMPT, FastDetector, answer_tokens, is_yes
from anomaly_ov.eval.results import read_jsonl
from anomaly_ov.eval.yes_no_rig import rig_yes_no
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config
from anomaly_ov.recipes.eval_benchmark import eval_benchmark

PROJECT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(zoo, root, out_dir, *extra, cpu=True):
    return [
        f"paths.zoo_dir={zoo.root}",
        f"paths.synthetic_dir={root}",
        f"paths.output_root={out_dir.parent}",
        f"out_dir={out_dir}",
        "benchmark=synthetic_visa_dr",
        "generation.max_new_tokens=3",
        "batch_size=4",
        "progress=false",
        *(["cpu=true"] if cpu else []),
        # _benchmark_copy links the shared synthetic images into its root: links out of it, allowed here
        "benchmark.allow_outside_root=true",
        *extra,
    ]


def _run(zoo, root, out_dir, *extra):
    return eval_benchmark(compose_config("eval_benchmark", _overrides(zoo, root, out_dir, *extra)))


def test_config_needs_only_the_benchmark_root():
    from omegaconf import OmegaConf

    def missing(overrides: list[str]) -> set[str]:
        cfg = compose_config("eval_benchmark", overrides)
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        return {f"benchmark.{k}" for k, v in resolved["benchmark"].items() if v == "???"} | {
            k for k, v in resolved.items() if v == "???"
        }

    assert missing([]) == {"benchmark.root"}  # the release's file names are relative to it
    assert missing(["benchmark=mmad"]) == {"benchmark.root"}
    # the reproduction settings: the release's batch 1, MMAD's own protocol
    assert compose_config("eval_benchmark", []).batch_size == 1
    mmad = compose_config("eval_benchmark", ["benchmark=mmad"]).benchmark
    assert (mmad.shots, mmad.template, mmad.parse, mmad.preprocess, mmad.shuffle_options) == (
        1,
        "random",
        "mmad",
        "mmad",
        True,
    )
    synthetic = compose_config("eval_benchmark", ["benchmark=synthetic_visa_dr", "paths.synthetic_dir=/s"])
    assert (synthetic.benchmark.root, synthetic.benchmark.detection_file) == ("/s", "visa_dr/test_data.json")
    assert synthetic.benchmark.skip_classes == ["pcb2", "pcb4"] and synthetic.judge is None
    assert compose_config("eval_benchmark", ["judge=openai"]).judge.api_key_env == "OPENAI_API_KEY"


def test_fast_path_decides_as_greedy_generation(tiny_zoo, synthetic_data, tmp_path):
    cfg = compose_config("eval_benchmark", _overrides(tiny_zoo, synthetic_data.root, tmp_path / "x"))
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, _convert_="all")
    records = json.loads(synthetic_data.test_data_json.read_text())
    names = [str(synthetic_data.root / r["image"]) for r in records]
    images = [read_image(n) for n in names]
    # the untrained model rarely says Yes/No: rewrite it to answer Yes or No (by image), then stop
    rig_yes_no(bundle.model, bundle.processor, DETECTION_PROMPT, images, names)

    pipeline = AnomalyOVPipeline(bundle.model, bundle.processor, {"max_new_tokens": 6, "do_sample": False})
    replies = [
        pipeline.answer([[{"from": "human", "value": DETECTION_PROMPT}]], [[image]], [[name]])[0].text
        for image, name in zip(images, names, strict=True)
    ]  # the release's protocol: batch 1, greedy
    detector = FastDetector(bundle.model, bundle.processor, answer_tokens(bundle.processor.tokenizer))
    fast = [
        d
        for start in range(0, len(images), 8)
        for d in detector.decide(images[start : start + 8], names[start : start + 8])
    ]

    starts = [r.startswith(("Yes", "yes", "No", "no")) for r in replies]
    assert sum(starts) == len(replies), replies  # the rewritten model answers Yes/No and stops
    greedy = [is_yes(r) for r in replies]
    assert 0 < sum(greedy) < len(greedy), replies  # both answers occur: the comparison is not vacuous
    assert [d.predicted for d in fast] == greedy
    assert all(d.starts_with_answer for d in fast)
    assert all((d.score > 0.5) == d.predicted for d in fast)


def test_eval_writes_results_and_resumes(tiny_zoo, synthetic_data, tmp_path):
    out = tmp_path / "visa"
    metrics = _run(tiny_zoo, synthetic_data.root, out, "detection.protocol=fast")
    for name in (
        "detection.jsonl",
        "reasoning.jsonl",
        "metrics.json",
        "table.md",
        "run.json",
        "skipped_records.json",
    ):
        assert (out / name).is_file(), name
    detection = read_jsonl(out / "detection.jsonl")
    assert len(detection) == len(json.loads(synthetic_data.test_data_json.read_text()))
    assert set(detection[0]) >= {"image", "class", "anomaly", "reply", "predicted", "score", "expert_score"}
    assert detection[0]["class"] == Path(detection[0]["image"]).parts[1]
    reasoning = read_jsonl(out / "reasoning.jsonl")
    assert len(reasoning[0]["responses"]) == len(reasoning[0]["questions"]) == len(reasoning[0]["sbert"])
    assert metrics["detection"]["model"]["mean"]["auroc"] is not None
    assert metrics["detection"]["expert"]["threshold"] == 0.5
    assert sum(metrics["detection"]["replies"].values()) == len(detection)
    assert metrics["reasoning"]["low_level"]["num_answers"] == len(reasoning)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    table = (out / "table.md").read_text()
    assert "| Anomaly-OV-0.5B (paper) | 0.79 | 0.86 |" in table and "expert alone" in table

    # Interrupt: keep 5 finished lines (one marked), leave a half-written line in a part file.
    lines = (out / "detection.jsonl").read_text().splitlines()
    kept = [json.loads(line) for line in lines[:5]]
    kept[0]["reply"] = "MARKER"
    (out / "detection.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "detection.part-0.jsonl").write_text('{"key": "mvtec/')
    (out / "reasoning.jsonl").write_text(
        "".join(line + "\n" for line in (out / "reasoning.jsonl").read_text().splitlines()[:3])
    )
    resumed = _run(tiny_zoo, synthetic_data.root, out, "detection.protocol=fast")
    again = read_jsonl(out / "detection.jsonl")
    assert again[0]["reply"] == "MARKER"  # finished items are not evaluated again
    assert [r["image"] for r in again] == [r["image"] for r in detection]
    # the resumed items ran in other batches: left padding may move the last float digits, nothing else
    _assert_close(
        [{k: v for k, v in r.items() if k != "reply"} for r in again],
        [{k: v for k, v in r.items() if k != "reply"} for r in detection],
    )
    _assert_close(resumed, metrics)
    assert not list(out.glob("*.part-*"))

    with pytest.raises(ValueError, match="computed with other settings"):
        _run(tiny_zoo, synthetic_data.root, out, "detection.protocol=release")


def _assert_close(a: object, b: object, path: str = "") -> None:
    """Equal structures, floats within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{index}]")
    else:
        assert a == b, path


def _benchmark_copy(synthetic_data, tmp_path) -> Path:
    """A benchmark root beside the shared synthetic data (its images linked, its files copied)."""
    root = tmp_path / "bench"
    root.mkdir()
    (root / "mvtec").symlink_to(synthetic_data.root / "mvtec")
    shutil.copytree(synthetic_data.root / "visa_dr", root / "visa_dr")
    shutil.copy(synthetic_data.meta_json, root / "meta.json")
    return root


def test_bad_records_stop_the_run_or_are_skipped(tiny_zoo, synthetic_data, tmp_path):
    root = _benchmark_copy(synthetic_data, tmp_path)
    records = json.loads((root / "visa_dr" / "test_data.json").read_text())[:4]
    records.append({"image": "mvtec/gear/test/hole/999.png", "anomaly": True})
    (root / "visa_dr" / "test_data.json").write_text(json.dumps(records))
    (root / "mvtec_bad").mkdir()
    extra = ["benchmark.tasks=[detection]", "generation.max_new_tokens=2"]
    with pytest.raises(
        ValueError, match=r"record #4 \(mvtec/gear/test/hole/999.png\): image file .* not found"
    ):
        _run(tiny_zoo, root, tmp_path / "a", *extra)

    from anomaly_ov import cli

    argv = ["eval", *_overrides(tiny_zoo, root, tmp_path / "b", *extra, "skip_bad_records=true")]
    assert cli.main(argv) == 0
    skipped = json.loads((tmp_path / "b" / "skipped_records.json").read_text())
    assert [s["record"] for s in skipped] == ["#4 (mvtec/gear/test/hole/999.png)"]
    assert len(read_jsonl(tmp_path / "b" / "detection.jsonl")) == 4
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["skipped_records"] == 1


def test_mmad_on_synthetic_images(tiny_zoo, synthetic_data, tmp_path):
    from anomaly_ov.eval.mmad_summary import ScoredAnswer, mmad_summary

    root = _benchmark_copy(synthetic_data, tmp_path)
    out = tmp_path / "mmad"
    metrics = eval_benchmark(
        compose_config(
            "eval_benchmark",
            [o for o in _overrides(tiny_zoo, root, out) if not o.startswith("benchmark=")]
            + ["benchmark=synthetic_mmad"],
        )
    )
    source = json.loads((root / "mmad.json").read_text())
    questions = sum(len(v["conversation"]) for v in source.values())
    results = read_jsonl(out / "mmad.jsonl")
    assert len(results) == questions and set(results[0]) >= {
        "image",
        "type",
        "options",
        "answer",
        "templates",
        "reply",
        "letter_mmad",
        "letter_strict",
        "letter",
        "correct",
    }
    shuffled = 0
    for result in results:
        image, index = result["key"].split("#")
        asked = source[image]["conversation"][int(index)]
        # the options are shown shuffled (seeded) and the answer follows its text
        assert result["options"][result["answer"]] == asked["Options"][asked["Answer"]]
        assert sorted(result["options"].values()) == sorted(asked["Options"].values())
        shuffled += list(result["options"].values()) != list(asked["Options"].values())
        assert result["templates"] == source[image]["random_templates"][:1]  # MMAD's default template
    assert shuffled > 0
    mmad = metrics["mmad"]
    assert mmad["parse"] == "mmad" and mmad["num_questions"] == questions
    assert mmad["summary"]["num_answers"] + mmad["summary"]["excluded"] == questions
    assert mmad["parsers"]["strict"]["unparseable"] == sum(r["letter_strict"] is None for r in results)
    # the table is MMAD's summary of the stored letters, under each parser
    again = mmad_summary(
        [ScoredAnswer(r["image"], r["type"], r["answer"], r["letter_mmad"]) for r in results]
    )
    assert mmad["summary"]["table"] == again["table"]
    assert mmad["parsers"]["mmad"]["average"] == again["table"]["Average"]["Average"]
    table = (out / "table.md").read_text()
    assert "parse=mmad" in table and "| Average |" in table and "Anomaly Detection" in table


def test_evaluation_settings_reach_a_saved_model_folders_processor(tiny_zoo, tmp_path):
    """max_image_side=null turns the release's resize off for a saved folder too; MMAD's preprocessing
    encodes every image as one crop."""
    from PIL import Image

    from anomaly_ov.checkpoints import save_anomaly_ov
    from anomaly_ov.recipes.eval_benchmark import _build_pipeline

    cfg = compose_config("eval_benchmark", [f"paths.zoo_dir={tiny_zoo.root}", "cpu=true"])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, _convert_="all")
    assert bundle.processor.max_image_side == 1024
    save_anomaly_ov(bundle.model, bundle.processor, tmp_path / "folder", cfg.model)
    big = Image.new("RGB", (1500, 1000), (90, 90, 90))

    def pipeline(*overrides):
        config = compose_config(
            "eval_benchmark",
            [f"paths.zoo_dir={tiny_zoo.root}", "cpu=true", f"model_dir={tmp_path / 'folder'}", *overrides],
        )
        return _build_pipeline(config, torch.device("cpu"))

    released = pipeline().processor
    assert released.encode_images([big]).image_sizes.tolist() == [[682, 1024]]
    whole = pipeline("max_image_side=null").processor
    assert whole.max_image_side is None and whole.encode_images([big]).image_sizes.tolist() == [[1000, 1500]]
    assert released.max_image_side == 1024  # the loaded folder's processor is not changed in place
    single = pipeline("benchmark=mmad", "benchmark.root=/unused")
    assert not single.processor.anyres and single.processor.encode_images([big]).image_num_crops.tolist() == [
        1
    ]
    assert single.generation["max_new_tokens"] == 64  # MMAD's LLaVA script
    native = pipeline("benchmark=mmad", "benchmark.root=/unused", "benchmark.preprocess=native").processor
    assert native.anyres and native.encode_images([big]).image_num_crops.tolist()[0] > 1


def test_judge_scores_through_a_local_endpoint(tiny_zoo, synthetic_data, tmp_path):
    from pytest_httpserver import HTTPServer

    root = _benchmark_copy(synthetic_data, tmp_path)
    records = json.loads((root / "visa_dr" / "visa_dr.json").read_text())[:2]
    (root / "visa_dr" / "visa_dr.json").write_text(json.dumps(records))
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        reply = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Score: 6"}, "finish_reason": "stop"}
            ]
        }
        server.expect_request("/v1/chat/completions", method="POST").respond_with_json(
            {"id": "x", "object": "chat.completion", "created": 0, "model": "j", **reply}
        )
        extra = ["benchmark.tasks=[reasoning]", "judge=openai", f"judge.base_url={server.url_for('/v1')}",
                 "judge.api_key_env=null", "judge.model=j", "judge.timeout_s=5"]  # fmt: skip
        metrics = _run(tiny_zoo, root, tmp_path / "j", *extra)
        assert len(server.log) == sum(len(r["questions"]) for r in records)
    finally:
        server.clear()
        server.stop()
    assert metrics["reasoning"]["low_level"]["judge"] == 6.0 and metrics["reasoning"]["judge_failures"] == 0
    assert "| 6.00 |" in (tmp_path / "j" / "table.md").read_text()


def test_a_saved_model_folder_and_a_model_without_the_expert(tiny_zoo, synthetic_data, tmp_path):
    from anomaly_ov.checkpoints import save_anomaly_ov

    root = _benchmark_copy(synthetic_data, tmp_path)
    records = json.loads((root / "visa_dr" / "test_data.json").read_text())[:6]
    (root / "visa_dr" / "test_data.json").write_text(json.dumps(records))
    extra = ["benchmark.tasks=[detection]", "generation.max_new_tokens=2"]
    built = _run(tiny_zoo, root, tmp_path / "built", *extra)
    cfg = compose_config("eval_benchmark", _overrides(tiny_zoo, root, tmp_path / "unused", *extra))
    torch.manual_seed(int(cfg.seed))
    bundle = instantiate(cfg.model, _convert_="all")
    save_anomaly_ov(bundle.model, bundle.processor, tmp_path / "folder", cfg.model)
    loaded = _run(tiny_zoo, root, tmp_path / "loaded", *extra, f"model_dir={tmp_path / 'folder'}")
    assert read_jsonl(tmp_path / "loaded" / "detection.jsonl") == read_jsonl(
        tmp_path / "built" / "detection.jsonl"
    )
    assert loaded["detection"] == built["detection"]
    assert "| folder |" in (tmp_path / "loaded" / "table.md").read_text()  # the row is named after the folder

    plain = _run(tiny_zoo, root, tmp_path / "plain", *extra, "model/expert=none")
    assert plain["detection"]["expert"] is None  # no expert-alone row for plain LLaVA-OneVision
    assert all(r["expert_score"] is None for r in read_jsonl(tmp_path / "plain" / "detection.jsonl"))
    assert (
        "expert alone, score >= 0.5 |"
        not in (tmp_path / "plain" / "table.md").read_text().split("(paper)")[0]
    )


@pytest.mark.multiprocess
def test_two_processes_give_the_files_and_metrics_of_one(tiny_zoo, synthetic_data, tmp_path):
    root = _benchmark_copy(synthetic_data, tmp_path)
    for name, count in (("test_data.json", 9), ("visa_dr.json", 3)):  # a short benchmark keeps this < 60 s
        records = json.loads((root / "visa_dr" / name).read_text())
        (root / "visa_dr" / name).write_text(json.dumps(records[:count]))
    extra = ["batch_size=1", "generation.max_new_tokens=2"]
    one, two = tmp_path / "p1", tmp_path / "p2"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    command = [
        *launcher,
        str(PROJECT / "scripts" / "eval_benchmark.py"),
        # without cpu=true: a torchrun on a machine without GPUs must still form one group of 2 (accelerate
        # alone would give 2 independent main processes, both taking the run lock)
        *_overrides(tiny_zoo, root, two, *extra, cpu=torch.cuda.is_available()),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    m1 = _run(tiny_zoo, root, one, *extra)  # one process, one intra-op thread like each of the two
    for name in ("detection.jsonl", "reasoning.jsonl", "table.md", "skipped_records.json"):
        assert (two / name).read_text() == (one / name).read_text(), name
    m2 = json.loads((two / "metrics.json").read_text())
    assert (m1.pop("num_processes"), m2.pop("num_processes")) == (1, 2)
    assert m1 == m2
    assert len(read_jsonl(two / "detection.jsonl")) == 9 and not list(two.glob("*.part-*"))


def test_a_launch_without_one_process_group_is_refused(monkeypatch):
    from anomaly_ov.recipes import eval_benchmark as recipe

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert recipe._use_cpu(False)  # 2 launched processes, no GPU: accelerate's CPU group
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not recipe._use_cpu(False) and recipe._use_cpu(True)
    recipe._check_world(2)
    with pytest.raises(RuntimeError, match=r"started 2 processes .* sees 1"):
        recipe._check_world(1)  # each rank alone would evaluate every item and take the run lock
    monkeypatch.delenv("WORLD_SIZE")
    assert not recipe._use_cpu(False)
    recipe._check_world(1)
