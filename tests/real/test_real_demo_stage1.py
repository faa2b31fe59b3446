"""The reduced real demo's stage-1 side (issue 17): the transfer-profile data, stage 1 on the real zoo's
DINOv2-S and on a randomly initialised tower of the same architecture, the zero-shot evaluation on the
held-out synthetic classes and on ELPV (a fixed subset of the installed package's cells), and the report
section that holds the ELPV row, the darkness baseline and the pretrained-vs-random comparison."""

import json
import re

import pytest

from anomaly_ov.data.synthetic import generate_synthetic

pytestmark = [pytest.mark.real, pytest.mark.slow]

# the demo's stage-1 recipe (scripts/demo.sh, ANOMALY_OV_DEMO_ZOO=real), fewer epochs and ELPV cells
RECIPE = [
    "data=synthetic_transfer",
    "data.eval=[synthetic_heldout,elpv]",
    "optimizer.lr=1.0e-4",
    "trainer.fit.epochs=2",
    "trainer.fit.global_batch_size=32",
    "data.sources.elpv.every=64",
    "data.sources.elpv_quarter.every=128",
    "logger=none",
]


def test_reduced_real_stage1_report_holds_the_elpv_row_and_the_random_tower(real_zoo, tmp_path):
    from anomaly_ov.inference.pipeline import compose_config
    from anomaly_ov.recipes.eval_zsad import eval_zsad
    from anomaly_ov.recipes.train_expert import train_expert
    from anomaly_ov.report.real_parts import read_zero_shot_scores, real_zero_shot_section

    data = generate_synthetic(tmp_path / "synthetic", seed=0, scale="transfer_small")
    common = [
        "debug=real",
        f"paths.real_zoo_dir={real_zoo.root}",
        f"paths.output_root={tmp_path}",
        f"paths.synthetic_dir={data.root}",
    ]
    evals = {}
    for name, tower, datasets in (
        ("pretrained", [], "[synthetic_heldout,elpv]"),
        ("random", ["model/vision=dinov2_s14_random"], "[synthetic_heldout,elpv_quarter]"),
    ):
        run_dir = tmp_path / name
        train_expert(compose_config("train_expert", [*common, *RECIPE, *tower, f"run_dir={run_dir}"]))
        # the evaluation reads the model, the data and the preprocessing from the run's saved config
        overrides = [*common, f"run_dir={run_dir}", f"datasets={datasets}", "output_name=demo"]
        metrics = eval_zsad(compose_config("eval_zsad", overrides))
        assert (run_dir / "eval" / "demo" / "scores.jsonl").is_file()
        evals[name] = (run_dir / "eval" / "demo", metrics)
    pretrained = read_zero_shot_scores(evals["pretrained"][0])
    control = read_zero_shot_scores(evals["random"][0])
    assert len([r for r in pretrained.rows if r["dataset"] == "elpv"]) == 41  # every 64th of 2,624 cells
    text = real_zero_shot_section(pretrained, control, "synthetic_heldout", "Ours")
    print(text)
    row = re.search(r"\| \*\*Ours\*\* \| \*\*([0-9.]+)\*\* \| ([0-9.]+) \| ([0-9.]+) \|", text)
    darkness = re.search(r"\| darkness baseline [^|]*\| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", text)
    assert row and darkness, text
    ours = evals["pretrained"][1]["datasets"]["elpv"]["mean"]["image_auroc"]
    assert float(row.group(1)) == pytest.approx(100 * ours, abs=0.05)
    assert all(0.0 <= float(value) <= 100.0 for value in (*row.groups(), *darkness.groups()))
    random_row = re.search(r"\| random DINOv2-S \(same architecture\) \| ([0-9.]+) \| ([0-9.]+) \|", text)
    assert random_row, text
    heldout = evals["random"][1]["datasets"]["synthetic_heldout"]["mean"]["image_auroc"]
    assert float(random_row.group(1)) == pytest.approx(100 * heldout, abs=0.05)
    assert "Gain from pretraining:" in text
    json.dumps(evals["pretrained"][1])  # the metrics are plain JSON
