"""``anomaly-ov tables``: fake finished runs (metrics.json as eval_zsad writes it) -> Tables 1 and 2."""

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anomaly_ov.cli import main as cli
from anomaly_ov.eval.gather import gather
from anomaly_ov.eval.metrics import ClassMetrics
from anomaly_ov.eval.tables import PUBLISHED_TABLE2, table1_beside_paper, table2_beside_paper
from anomaly_ov.eval.zsad import DatasetResult

MODEL = {"vision": {"name_or_path": "llava-onevision-0.5b"}, "expert": {"look_back": True}}


def _dataset(name: str, auroc: float, failed: dict | None = None) -> dict:
    classes = [ClassMetrics(f"{name}_a", 10, auroc, 0.5, 0.5), ClassMetrics(f"{name}_b", 10, auroc, 0.5, 0.5)]
    mean = {"image_auroc": auroc, "image_ap": 0.5, "image_f1_max": 0.5}
    return DatasetResult(name, classes, mean, failed_classes=failed or {}).to_dict()


def _run(
    root: Path,
    task: str,
    aurocs: dict[str, float],
    model: dict = MODEL,
    evaluated: bool = True,
    seen: list | None = None,
    failed: dict | None = None,
) -> Path:
    run = root / task / f"run{len(list(root.glob(f'{task}/*')))}"
    run.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"task_name": task, "model": model}), run / "config.yaml")
    (run / "expert.safetensors").write_bytes(b"weights")
    if evaluated:
        metrics = {
            "model": task,
            "run_dir": str(run),
            "checkpoint": str(run / "expert.safetensors"),
            "trained_on": ["instruct_bmad"],
            "seen_datasets_evaluated": seen or [],
            "datasets": {
                name: _dataset(name, value, (failed or {}).get(name)) for name, value in aurocs.items()
            },
        }
        (run / "eval" / "2026-12-01_10-00-00").mkdir(parents=True)
        (run / "eval" / "2026-12-01_10-00-00" / "metrics.json").write_text(json.dumps(metrics))
    return run


MAIN = {
    "visa": 0.90,
    "aitex": 0.70,
    "elpv": 0.80,
    "btad": 0.88,
    "mpdd": 0.80,
    "brainmri": 0.94,
    "headct": 0.96,
    "br35h": 0.95,
}


def test_the_two_runs_of_one_row_fill_table2_with_the_difference(tmp_path):
    main = _run(tmp_path, "table2_anomaly_ov", MAIN)
    swap = _run(tmp_path, "table2_anomaly_ov_mvtec", {"mvtec": 0.93})
    gathered = gather([main, swap])
    assert gathered.skipped == []
    assert gathered.table2 == pytest.approx({"mvtec": 93.0, **{k: 100 * v for k, v in MAIN.items()}})
    text = table2_beside_paper(gathered.table2)
    ours = next(line for line in text.splitlines() if "(ours)" in line)
    delta = next(line for line in text.splitlines() if line.startswith("| Δ"))
    assert (
        ours
        == "| **Anomaly-OV (ours)** | 93.0 | 90.0 | 70.0 | 80.0 | 88.0 | 80.0 | 94.0 | 96.0 | 95.0 | 87.3 |"
    )
    # 94.0 -> 93.0; average 88.6 (88.64) -> 87.33
    assert delta == "| Δ ours − paper | -1.0 | -1.1 | -2.0 | -3.0 | -1.0 | -1.7 | +0.1 | -1.6 | -0.5 | -1.3 |"
    assert "| AdaCLIP | 89.2 | 85.8 |" in text
    # the full row of Table 1 comes from the same two runs
    assert gathered.table1["full"] == pytest.approx(
        {"mvtec": 93.0, "visa": 90.0, "headct": 96.0, "brainmri": 94.0}
    )


def test_without_the_swap_run_mvtec_and_the_average_stay_empty(tmp_path):
    gathered = gather([_run(tmp_path, "table2_anomaly_ov", MAIN)])
    ours = next(line for line in table2_beside_paper(gathered.table2).splitlines() if "(ours)" in line)
    assert ours.startswith("| **Anomaly-OV (ours)** | – | 90.0 |") and ours.endswith("| – |")


def test_unusable_runs_are_skipped_with_their_reason(tmp_path):
    main = _run(tmp_path, "table2_anomaly_ov", MAIN)
    runs = {
        "unfinished": tmp_path / "killed",
        "not_evaluated": _run(tmp_path, "table1_no_lookback", {}, evaluated=False),
        "other": _run(tmp_path, "train_expert", {"visa": 0.5}),
        "seen": _run(tmp_path, "table1_no_prompts", {"visa": 0.99}, seen=["visa"]),
        "other_model": _run(tmp_path, "table2_anomaly_ov_mvtec", {"mvtec": 0.9}, model={"vision": {"x": 7}}),
        "empty": tmp_path / "empty",
    }
    (runs["unfinished"]).mkdir()
    OmegaConf.save(OmegaConf.create({"task_name": "table1_no_webad"}), runs["unfinished"] / "config.yaml")
    runs["empty"].mkdir()
    gathered = gather([main, *runs.values()])
    reasons = dict(gathered.skipped)
    assert "training has not written expert.safetensors" in reasons[str(runs["unfinished"])]
    assert "not evaluated yet" in reasons[str(runs["not_evaluated"])]
    assert "from another experiment: task_name 'train_expert'" in reasons[str(runs["other"])]
    assert "not zero-shot" in reasons[str(runs["seen"])]
    assert "model differs" in reasons[str(runs["other_model"])]
    assert "neither a training run" in reasons[str(runs["empty"])]
    # nothing of them reached a row
    assert "mvtec" not in gathered.table2 and set(gathered.table1) == {"full"}


def test_an_older_run_of_the_same_experiment_is_listed_not_mixed(tmp_path):
    older = _run(tmp_path, "table2_anomaly_ov", {**MAIN, "visa": 0.5})
    newer = _run(tmp_path, "table2_anomaly_ov", MAIN)
    stamp = (older / "eval" / "2026-12-01_10-00-00" / "metrics.json").stat().st_mtime
    os.utime(newer / "eval" / "2026-12-01_10-00-00" / "metrics.json", (stamp + 10, stamp + 10))
    gathered = gather([newer, older])
    assert gathered.table2["visa"] == pytest.approx(90.0)
    assert gathered.skipped == [(str(older), f"an older run of table2_anomaly_ov; used: {newer}")]


def test_table1_rows_and_notes_of_failed_classes(tmp_path):
    runs = [
        _run(
            tmp_path,
            "table1_no_webad",
            {"visa": 0.889, "headct": 0.912, "brainmri": 0.934},
            failed={"visa": {"pcb4": "masks of another size"}},
        ),
        _run(tmp_path, "table1_no_webad_mvtec", {"mvtec": 0.885}),
    ]
    gathered = gather(runs)
    text = table1_beside_paper(gathered.table1)
    lines = text.splitlines()
    row = lines.index("| w/o WebAD | paper | 88.5 | 88.9 | 91.2 | 93.4 |")
    assert lines[row + 1] == "| | **ours** | 88.5 | 88.9 | 91.2 | 93.4 |"
    assert lines[row + 2] == "| | Δ | +0.0 | +0.0 | +0.0 | +0.0 |"
    assert "| | **ours** | – | – | – | – |" in text  # rows without runs
    assert any("1 failed (pcb4)" in note for note in gathered.notes["w/o WebAD"])


def test_command_writes_markdown_json_and_charts(tmp_path, capsys):
    main = _run(tmp_path / "runs", "table2_anomaly_ov", MAIN)
    swap = _run(tmp_path / "runs", "table2_anomaly_ov_mvtec", {"mvtec": 0.93})
    out = tmp_path / "tables"
    assert cli(["tables", str(main), str(swap), str(tmp_path / "missing"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "not a folder" in captured.err
    assert "Skipped runs:" in (out / "table2.md").read_text() and str(main) in (out / "table2.md").read_text()
    merged = json.loads((out / "tables.json").read_text())
    assert merged["table2"]["mvtec"] == pytest.approx(93.0)
    assert merged["published_table2"] == PUBLISHED_TABLE2["Anomaly-OV (paper)"]
    for chart in ("table1.png", "table2.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no usable run at all: the tables are still written (empty), the status says so
    assert cli(["tables", str(tmp_path / "missing"), "--out", str(tmp_path / "none")]) == 1
