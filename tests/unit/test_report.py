"""The demo report builder on fake run folders: files, numbers checked by hand and against sklearn, atomic
replacement, clear errors; and the demo's data split."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomaly_ov.data.synthetic.text import DETECTION_PROMPT
from anomaly_ov.eval.detection import summarize_detection
from anomaly_ov.eval.reasoning import summarize_reasoning
from anomaly_ov.report import ReportInputError, cli_main
from anomaly_ov.report.demo_data import split_instruct
from anomaly_ov.report.document import ReportInputs, build_report
from anomaly_ov.report.figures import moving_average, roc_curves

TRAIN = ("brick", "pill")
HELDOUT = ("gear", "grass")


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _png(path: Path, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 120, dtype=np.uint8)).save(path)


def _detection(classes: tuple[str, ...], correct_per_class: int) -> list[dict]:
    """Four images per class (2 anomalous, 2 normal); the first ``correct_per_class`` are decided right."""
    records = []
    for name in classes:
        for index, anomaly in enumerate((True, True, False, False)):
            predicted = anomaly if index < correct_per_class else not anomaly
            records.append(
                {
                    "key": f"mvtec/{name}/test/{index}.png",
                    "image": f"mvtec/{name}/test/{index}.png",
                    "class": name,
                    "anomaly": anomaly,
                    "reply": "Yes" if predicted else "No",
                    "predicted": predicted,
                    "score": (0.9 if predicted else 0.1) - 0.01 * index,
                    "expert_score": 0.8 if anomaly else 0.2,
                    "starts_with": "yes" if predicted else "no",
                }
            )
    return records


def _benchmark(folder: Path, detection: list[dict], reasoning: list[dict], model_dir: str | None) -> Path:
    metrics = {
        "benchmark": "visa_dr",
        "detection": summarize_detection(detection),
        "reasoning": summarize_reasoning(reasoning) if reasoning else None,
    }
    _write_json(folder / "metrics.json", metrics)
    settings = {
        "model_dir": model_dir,
        "model": None
        if model_dir
        else {"llm": {"name_or_path": "zoo/llava_ov"}, "expert": {"checkpoint": "e"}},
        "benchmark": {"root": str(folder.parent / "synthetic"), "detection_file": "visa_dr/test_data.json"},
        "detection": {"protocol": "release"},
        "generation": {"max_new_tokens": 8},
    }
    _write_json(folder / "run.json", settings)
    _write_jsonl(folder / "detection.jsonl", detection)
    if reasoning:
        _write_jsonl(folder / "reasoning.jsonl", reasoning)
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> ReportInputs:
    synthetic = tmp_path / "synthetic"
    _write_json(
        synthetic / "meta.json",
        {
            "generator": "fake",
            "seed": 0,
            "scale": "small",
            "image_size": 16,
            "train_categories": list(TRAIN),
            "heldout_categories": list(HELDOUT),
        },
    )
    _png(synthetic / "mvtec/gear/test/crack/000.png")
    stage1 = tmp_path / "stage1"
    _write_json(
        stage1 / "train_metrics.json",
        {"losses": [0.9, 0.8, 0.7, 0.6], "epoch_losses": [0.85, 0.65], "steps_per_epoch": 2, "expert": "e"},
    )
    (stage1 / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "paths": {"synthetic_dir": str(synthetic)},
                "seed": 2,
                "model": {"vision": {"dtype": "bfloat16"}},
            }
        )
    )
    zsad = stage1 / "eval" / "demo"
    class_metrics = {
        "num_images": 20,
        "image_auroc": 0.625,
        "image_ap": 0.7,
        "image_f1_max": 0.75,
        "pixel_auroc": 0.5,
        "aupro": 0.2,
    }
    _write_json(
        zsad / "metrics.json",
        {
            "datasets": {
                "synthetic_heldout": {
                    "mean": class_metrics,
                    "classes": {"gear": class_metrics},
                    "num_images": 20,
                }
            }
        },
    )
    (zsad / "table.md").write_text(
        "| Model | synthetic_heldout | Avg |\n|---|---|---|\n| e | 62.5 | 62.5 |\n"
    )
    _png(zsad / "heatmaps" / "synthetic_heldout" / "gear.png")

    stage2 = {}
    for name in ("with", "without"):
        run = tmp_path / f"tuned_{name}"
        _write_jsonl(run / "metrics.jsonl", [{"step": s, "loss": 7.0 - 0.1 * s} for s in range(1, 11)])
        _write_json(
            run / "train_metrics.json",
            {
                "finished": True,
                "total_steps": 10,
                "num_samples": 40,
                "num_processes": 2,
                "seconds": 12.5,
                "model": str(run / "model"),
            },
        )
        config = {
            "tuning": "lora",
            "seed": 1,
            "model": {
                "llm": {"dtype": "bfloat16"},
                "lora": {"rank": 8},
                "expert": {"checkpoint": "e"} if name == "with" else None,
            },
            "trainer": {"accelerator": {"zero_stage": 2}},
        }
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        stage2[f"Tuned, {name} expert"] = run

    reasoning = [
        {
            "key": "mvtec/gear/test/crack/000.png",
            "image": "mvtec/gear/test/crack/000.png",
            "class": "gear",
            "defect": "crack",
            "questions": ["Is there any anomaly?", "What type?"],
            "answers": ["Yes.", "A crack."],
            "responses": ["Yes.", "A scratch."],
            "rouge_l": [1.0, 0.5],
            "sbert": [0.9, 0.6],
        },
    ]
    heldout = _detection(HELDOUT, correct_per_class=3)  # accuracy 0.75 per class
    benchmark = {
        "Tuned, with expert": _benchmark(tmp_path / "eval_tuned", heldout, reasoning, str(tmp_path / "m")),
        "Untuned": _benchmark(tmp_path / "eval_untuned", _detection(HELDOUT, 2), reasoning, None),
    }
    # training classes: every decision right (accuracy 1.0); held-out: 3 of 4 right (0.75)
    combined = _detection(TRAIN, correct_per_class=4) + heldout
    scores = {"Tuned, with expert": _benchmark(tmp_path / "scores_tuned", combined, [], str(tmp_path / "m"))}
    split = tmp_path / "split.json"
    _write_json(split, {"train_classes": list(TRAIN), "heldout_classes": list(HELDOUT)})
    chat = tmp_path / "chat.txt"
    chat.write_text("you> Is there a defect?\nanomaly-ov> Yes.\n")
    _write_jsonl(
        tmp_path / "predict" / "predictions.jsonl",
        [
            {
                "image": f"/d/mvtec/{name}/test/crack/000.png",
                "score": 0.7,
                "severity": "moderately",
                "answer": "Yes.",
            }
            for name in ("gear", "grass")
        ],
    )
    timings = tmp_path / "timings.tsv"
    timings.write_text("synthetic data\t3\nstage 1: expert\t40\n")
    return ReportInputs(
        stage1=stage1,
        zero_shot=zsad,
        stage2=stage2,
        benchmark=benchmark,
        scores=scores,
        split=split,
        predict=tmp_path / "predict",
        chat=chat,
        timings=timings,
    )


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_files_and_numbers(runs: ReportInputs, tmp_path: Path) -> None:
    index = build_report(runs, tmp_path / "report")
    folder = index.parent
    for name in ("index.md", "index.html", "training_curves.png", "roc.png"):
        assert (folder / name).is_file(), name
    for png in folder.rglob("*.png"):
        with Image.open(png) as image:
            assert min(image.size) >= 16, png
    text = index.read_text()
    # every embedded image exists
    for link in re.findall(r"\]\(([^)]+\.png)\)", text) + re.findall(r'src="([^"]+)"', text):
        assert (folder / link).is_file(), link
    # Table 4: per held-out class, 3 of 4 right; the wrong one is a normal image called anomalous:
    # TP 2, FP 1, FN 0 -> accuracy 0.75, precision 2/3, recall 1, F1 0.8 (the same in every class)
    row = _row(text, "Tuned, with expert |")
    assert row[1:5] == ["0.75", "0.67", "1.00", "0.80"]
    # low-level = the first answer (ROUGE-L 1.0, SBERT 0.9), complex = the others (SBERT 0.6); no judge
    assert row[5:10] == ["1.00", "0.90", "–", "0.60", "–"]
    assert _row(text, "Untuned |")[1] == "0.50"
    assert any(line.startswith("| Anomaly-OV-0.5B (paper)") for line in text.splitlines())
    # train vs held-out: every training-class image right, 3 of 4 held-out ones
    train_row = _row(text, "Tuned, with expert | training classes")
    held_row = _row(text, "Tuned, with expert | held-out classes")
    assert train_row[2:4] == ["8", "1.000"] and held_row[2:4] == ["8", "0.750"]
    assert train_row[-1] == "4 / 4 / 0"
    # provenance and timings
    assert "Run time per stage" in text and "| **total** | 43.0 |" in text
    assert "ZeRO-2" in text and "LoRA rank 8" in text
    # the dtype and seed of each training run; the benchmark file of each evaluation
    assert "(bfloat16), seed 2, 4 steps (2 epochs)" in text
    assert "(bfloat16), seed 1, expert `e`" in text and "(bfloat16), seed 1, expert none" in text
    untuned_file = runs.benchmark["Untuned"].parent / "synthetic" / "visa_dr" / "test_data.json"
    assert f"benchmark `{untuned_file}`" in text
    # the stage-1 curve's row: its first and last epochs' mean losses, not two single noisy steps
    assert _row(text, "stage 1 expert (epoch means) |")[1:4] == ["4", "0.850", "0.650"]
    # predict: images of one defect type in two classes are told apart by their class folder
    assert "| `gear/test/crack/000.png` | 0.700 |" in text and "| `grass/test/crack/000.png` |" in text
    assert "<table>" in (folder / "index.html").read_text()
    assert not list(tmp_path.glob(".report.partial-*"))


def test_failed_build_keeps_the_previous_report(runs: ReportInputs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report(runs, out)
    before = (out / "index.md").read_text()
    (runs.benchmark["Untuned"] / "metrics.json").unlink()
    with pytest.raises(ReportInputError, match=r"eval_untuned/metrics\.json: missing"):
        build_report(runs, out)
    assert (out / "index.md").read_text() == before
    assert not list(tmp_path.glob(".report.partial-*"))


def test_unfinished_stage2_run_is_refused(runs: ReportInputs, tmp_path: Path) -> None:
    run = next(iter(runs.stage2.values()))
    _write_json(run / "train_metrics.json", {"finished": False})
    with pytest.raises(ReportInputError, match="has not finished"):
        build_report(runs, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_malformed_jsonl_names_file_and_line(runs: ReportInputs, tmp_path: Path) -> None:
    run = next(iter(runs.stage2.values()))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(ReportInputError, match=r"metrics.jsonl:2: not JSON"):
        build_report(runs, tmp_path / "report")


def test_cli_builds_and_reports_errors(runs: ReportInputs, tmp_path: Path, capsys) -> None:
    argv = ["--stage1", str(runs.stage1), "--zero-shot", str(runs.zero_shot), "--out", str(tmp_path / "r")]
    argv += [f"--benchmark=Tuned={runs.benchmark['Tuned, with expert']}"]
    assert cli_main(argv) == 0
    assert (tmp_path / "r" / "index.html").is_file()
    assert cli_main([*argv[:-1], "--benchmark", "no-equals-sign"]) == 1
    assert "expected 'NAME=FOLDER'" in capsys.readouterr().err


def test_roc_auroc_matches_sklearn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(50) < 0.4
    scores = rng.random(50) + 0.3 * labels
    aurocs = roc_curves(
        tmp_path / "roc.png",
        {"p": {"a": (labels.tolist(), scores.tolist()), "one class": ([True] * 3, [0.1, 0.2, 0.3])}},
    )
    assert aurocs["p"]["a"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert "one class" not in aurocs["p"]


def test_moving_average_matches_a_loop() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]
    expected = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(moving_average(values, 3), expected)
    with pytest.raises(ValueError):
        moving_average(values, 0)


def test_demo_split(synthetic_data, tmp_path: Path) -> None:
    split = split_instruct(synthetic_data.root, tmp_path / "split")
    instruct = json.loads(synthetic_data.instruct_json.read_text())
    tune = json.loads(split.tune_json.read_text())
    kept = json.loads(split.train_classes_json.read_text())
    detect = json.loads(split.detect_json.read_text())
    tuned_images = {r["image"] for r in tune}
    assert kept and not tuned_images & {r["image"] for r in kept}
    assert len(tune) + len(kept) == len(instruct)
    assert {Path(r["image"]).parts[1] for r in kept} == set(synthetic_data.train_categories)
    # balanced detection records, answered from the label, only of tuning images
    answers = [r["conversations"][1]["value"] for r in detect]
    assert answers.count("Yes.") == answers.count("No.") > 0
    assert all((a == "Yes.") == r["anomaly"] for a, r in zip(answers, detect, strict=True))
    assert {r["image"] for r in detect} <= tuned_images
    heldout = json.loads(synthetic_data.test_data_json.read_text())
    assert json.loads(split.detection_all_json.read_text()) == kept + heldout
    mixture = yaml.safe_load(split.mixture_yaml.read_text())
    assert [d["json_path"] for d in mixture["datasets"]] == [str(split.tune_json), str(split.detect_json)]


def test_demo_split_names_a_bad_record(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    _write_json(root / "instruct.json", [{"image": "mvtec/a/test/good/0.png"}])
    _write_json(root / "visa_dr" / "test_data.json", [])
    with pytest.raises(ValueError, match=r"instruct.json: record 0 has no 'image' path or no 'anomaly'"):
        split_instruct(root, tmp_path / "out")


def test_report_imports_neither_recipes_nor_training() -> None:
    code = (
        "import sys, anomaly_ov.report, anomaly_ov.report.demo_data;"
        "print(sorted(m for m in sys.modules if m.startswith(('anomaly_ov.recipes', 'anomaly_ov.training'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_demo_split_detection_first_conversations(synthetic_data, tmp_path: Path) -> None:
    split = split_instruct(synthetic_data.root, tmp_path / "split", turns_samples=4)
    tune = {r["image"]: r for r in json.loads(split.tune_json.read_text())}
    turns = json.loads(split.turns_json.read_text())
    # every anomalous tuning image once, as many normal ones, alternating (so any even prefix is balanced)
    assert [r["anomaly"] for r in turns] == [True, False] * (len(turns) // 2)
    assert len(turns) == 2 * sum(r["anomaly"] for r in tune.values())
    for index, record in enumerate(turns):
        first, answer, *rest = record["conversations"]
        assert first == {"from": "human", "value": f"<image>\n{DETECTION_PROMPT}"}
        assert answer == {"from": "gpt", "value": "Yes." if record["anomaly"] else "No."}
        own = tune[record["image"]]["conversations"] if index % 4 < 2 else []  # every second pair
        if own and own[0]["value"] == f"<image>\n{DETECTION_PROMPT}":
            own = own[2:]  # the detection prompt is not asked twice
        assert rest == [dict(t, value=t["value"].replace("<image>\n", "")) for t in own]
        assert "<image>" not in json.dumps(rest)
    # the classes take turns: the first pairs come from different classes
    classes = [Path(r["image"]).parts[1] for r in turns if r["anomaly"]]
    head = classes[: len(set(classes))]
    assert len(set(head)) == len(head)
    mixture = yaml.safe_load(split.turns_mixture_yaml.read_text())
    assert mixture["datasets"] == [{"json_path": str(split.turns_json), "sampling_strategy": "first:4"}]


def test_demo_split_evaluation_subsets_and_elpv(synthetic_data, tmp_path: Path, monkeypatch) -> None:
    import anomaly_ov.data.prepare.elpv as elpv

    cells = tmp_path / "elpv"
    probabilities = [1.0, 0.0, 0.3333333333333333, 1.0, 0.0, 0.6666666666666666, 1.0, 0.0]
    lines = []
    for number, probability in enumerate(probabilities):
        _png(cells / "images" / f"cell{number:04d}.png")
        lines.append(f"images/cell{number:04d}.png  {probability}  {'mono' if number % 2 else 'poly'}")
    (cells / "labels.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(elpv, "installed_elpv_root", lambda: cells)

    split = split_instruct(
        synthetic_data.root,
        tmp_path / "split",
        eval_per_class=2,
        release_per_class=1,
        elpv_images=4,
        reasoning_records=2,
    )
    records = json.loads(split.detection_all_json.read_text())
    kept = json.loads(split.train_classes_json.read_text())
    heldout = json.loads(synthetic_data.test_data_json.read_text())
    by_group = {"kept": [], "heldout": [], "elpv": []}
    for record in records:
        assert (split.image_root / record["image"]).is_file(), record
        group = "elpv" if record["image"].startswith("elpv/") else ("kept" if record in kept else "heldout")
        by_group[group].append(record)
    # per class: one anomalous and one normal image (every class has both)
    for group, source in (("kept", kept), ("heldout", heldout)):
        classes = {Path(r["image"]).parts[1] for r in source}
        assert len(by_group[group]) == 2 * len(classes)
        for name in classes:
            chosen = [r["anomaly"] for r in by_group[group] if Path(r["image"]).parts[1] == name]
            assert sorted(chosen) == [False, True], name
    release = json.loads(split.heldout_json.read_text())
    assert len(release) == len({Path(r["image"]).parts[1] for r in heldout}) and all(
        r in heldout for r in release
    )
    # ELPV: two cells of probability 1.0 (anomalous) and two of the others (normal, the field's rule)
    labels = {Path(line.split()[0]).name: float(line.split()[1]) for line in lines}
    assert sorted(r["anomaly"] for r in by_group["elpv"]) == [False, False, True, True]
    for record in by_group["elpv"]:
        assert record["anomaly"] == (labels[Path(record["image"]).name] == 1.0)
        assert Path(record["image"]).parts[1] == "solar_cell"
    summary = json.loads(split.split_json.read_text())
    assert summary["elpv_classes"] == ["solar_cell"] and summary["elpv_test_images"] == 4
    assert summary["image_root"] == str(split.image_root)
    reasoning = json.loads(split.reasoning_json.read_text())
    assert len(reasoning) == 2 and len({Path(r["image"]).parts[1] for r in reasoning}) == 2
    predict = split.predict_txt.read_text().splitlines()
    assert len(predict) == 2 + 4 and all(Path(line).is_file() for line in predict)
