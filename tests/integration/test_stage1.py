"""Stage 1 end to end on the tiny zoo and the synthetic data: train, evaluate, protocol, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomaly_ov.config import config_dir
from anomaly_ov.data.zsad import BadInputError, ZeroShotError
from anomaly_ov.eval.metrics import METRIC_NAMES
from anomaly_ov.recipes.eval_zsad import eval_zsad
from anomaly_ov.recipes.train_expert import train_expert


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${now:...}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _paths(out: Path, zoo, data_root: Path) -> list[str]:
    return [f"paths.output_root={out}", f"paths.zoo_dir={zoo.root}", f"paths.synthetic_dir={data_root}"]


@pytest.fixture(scope="module")
def trained(tiny_zoo, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    overrides = [
        "debug=tiny",
        f"run_dir={out}/run",
        "logger=wandb",
        *_paths(out, tiny_zoo, synthetic_data.root),
    ]
    metrics = train_expert(_compose("train_expert", overrides))
    return out, Path(metrics["expert"]).parent, metrics


def test_training_writes_its_outputs_and_the_loss_falls(trained, tiny_zoo):
    _, run_dir, metrics = trained
    from anomaly_ov.models.expert_io import load_expert

    # the expert remembers the tower it was trained on (SPEC §4)
    record = load_expert(run_dir / "expert.safetensors").tower_record
    assert record["name_or_path"] == str(tiny_zoo.llava_ov) and record["level_layers"] == [2, 3, 4, 5]
    saved = json.loads((run_dir / "train_metrics.json").read_text())
    assert saved["losses"] == metrics["losses"] and saved["num_samples"] == 66
    losses = np.asarray(metrics["losses"])
    assert len(losses) == 30 * metrics["steps_per_epoch"]
    assert losses[-25:].mean() < 0.8 * losses[:25].mean()
    config = OmegaConf.load(run_dir / "config.yaml")
    assert "${" not in OmegaConf.to_yaml(config)  # resolved
    assert config.model.vision._target_.endswith(".build_llava_onevision_tower")
    assert config.data.train == ["synthetic_instruct"]
    assert (run_dir / "expert.safetensors").is_file() and json.loads(
        (run_dir / "skipped_files.json").read_text()
    ) == []
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_029", "epoch_030"]
    assert list((run_dir / "wandb").glob("offline-run-*"))  # offline tracker


def test_evaluation_ranks_anomalies_of_the_training_classes_first(trained, tiny_zoo, synthetic_data):
    out, run_dir, _ = trained
    overrides = [
        f"run_dir={run_dir}",
        "datasets=[synthetic_seen,synthetic_heldout]",
        "allow_seen=true",
        "heatmaps_per_class=2",
        "output_name=check",
        *_paths(out, tiny_zoo, synthetic_data.root),
    ]
    metrics = eval_zsad(_compose("eval_zsad", overrides))
    eval_dir = run_dir / "eval" / "check"
    assert json.loads((eval_dir / "metrics.json").read_text()) == metrics
    assert metrics["seen_datasets_evaluated"] == ["synthetic_seen"]
    seen, heldout = metrics["datasets"]["synthetic_seen"], metrics["datasets"]["synthetic_heldout"]
    assert sorted(seen["classes"]) == sorted(synthetic_data.train_categories)
    assert sorted(heldout["classes"]) == sorted(synthetic_data.heldout_categories)
    # Far better than chance (0.5) on the classes it was trained on; the held-out number is reported.
    assert seen["mean"]["image_auroc"] > 0.8
    for name in METRIC_NAMES:
        assert 0.0 <= heldout["mean"][name] <= 1.0
        assert heldout["mean"][name] == pytest.approx(np.mean([c[name] for c in heldout["classes"].values()]))
    table = (eval_dir / "table.md").read_text()
    assert "| Model | synthetic_heldout | synthetic_seen | Avg |" in table
    assert "**Not zero-shot** (allow_seen=true): the model was trained on synthetic_seen." in table
    assert f"| train_expert | {100 * heldout['mean']['image_auroc']:.1f} |" in table
    assert "- synthetic_heldout: pixel metrics at each mask's own size" in table  # the protocol is named
    assert heldout["pixel_maps"]["pixel_size"] is None
    # scores.jsonl: every evaluated image once, and each class's AUROC recomputed from it (sklearn)
    rows = [json.loads(line) for line in (eval_dir / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == seen["num_images"] + heldout["num_images"]
    for row in rows:
        assert row["dataset"] in ("synthetic_seen", "synthetic_heldout") and Path(row["image"]).is_file()
    for name, result in (("synthetic_seen", seen), ("synthetic_heldout", heldout)):
        for class_name, values in result["classes"].items():
            chosen = [r for r in rows if r["dataset"] == name and r["class"] == class_name]
            auroc = roc_auc_score([r["label"] for r in chosen], [r["score"] for r in chosen])
            assert auroc == pytest.approx(values["image_auroc"])
    heatmaps = sorted(p.name for p in (eval_dir / "heatmaps").rglob("*.png"))
    assert len(heatmaps) == len(synthetic_data.train_categories) + len(synthetic_data.heldout_categories)
    with Image.open(next((eval_dir / "heatmaps" / "synthetic_heldout").glob("*.png"))) as grid:
        assert grid.size == (3 * 256, 2 * 256)  # image | overlay | mask, two rows


def test_evaluation_refuses_a_dataset_the_run_trained_on(trained, tiny_zoo, synthetic_data):
    out, run_dir, _ = trained
    overrides = [
        f"run_dir={run_dir}",
        "datasets=[synthetic_seen]",
        *_paths(out, tiny_zoo, synthetic_data.root),
    ]
    with pytest.raises(ZeroShotError, match=r"'synthetic_seen' \(in training source 'synthetic_instruct'\)"):
        eval_zsad(_compose("eval_zsad", overrides))


def test_training_names_or_reports_a_truncated_image(tiny_zoo, synthetic_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data.root, data)
    record = json.loads((data / "instruct.json").read_text())[3]
    broken = data / record["image"]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    base = ["debug=tiny", "logger=none", "trainer.fit.epochs=1", *_paths(tmp_path, tiny_zoo, data)]
    with pytest.raises(BadInputError, match=rf"{record['image']}: unreadable or truncated"):
        train_expert(_compose("train_expert", [*base, f"run_dir={tmp_path}/a"]))
    metrics = train_expert(_compose("train_expert", [*base, f"run_dir={tmp_path}/b", "skip_bad_inputs=true"]))
    skipped = json.loads((tmp_path / "b" / "skipped_files.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == [broken.name] and metrics["num_samples"] == 65


def test_evaluating_a_checkpoint_without_its_run_gives_the_same_numbers(trained, tiny_zoo, synthetic_data):
    out, run_dir, _ = trained
    paths = _paths(out, tiny_zoo, synthetic_data.root)
    from_run = eval_zsad(_compose("eval_zsad", [f"run_dir={run_dir}", "output_name=run", *paths]))
    checkpoint = [f"model.expert.checkpoint={run_dir}/expert.safetensors", "debug=tiny", "output_name=ckpt"]
    from_checkpoint = eval_zsad(_compose("eval_zsad", [*checkpoint, *paths]))
    assert from_checkpoint["trained_on"] == ["synthetic_instruct"] and from_checkpoint["run_dir"] is None
    assert (
        from_checkpoint["datasets"]["synthetic_heldout"]["mean"]
        == from_run["datasets"]["synthetic_heldout"]["mean"]
    )
    assert (out / "eval" / "ckpt" / "metrics.json").is_file()


def test_a_run_is_evaluated_on_moved_datasets_with_sources_from_config(
    trained, tiny_zoo, synthetic_data, tmp_path
):
    out, run_dir, _ = trained
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_data.root, moved)
    moved_paths = _paths(out, tiny_zoo, moved)
    original = eval_zsad(_compose("eval_zsad", [f"run_dir={run_dir}", "output_name=orig", *moved_paths]))
    relocated = eval_zsad(
        _compose(
            "eval_zsad",
            [f"run_dir={run_dir}", "output_name=moved", "sources_from=config", "debug=tiny", *moved_paths],
        )
    )
    assert (
        relocated["datasets"]["synthetic_heldout"]["mean"]
        == original["datasets"]["synthetic_heldout"]["mean"]
    )
    assert OmegaConf.load(run_dir / "eval" / "moved" / "config.yaml").evaluated.data.root == str(moved)
    assert OmegaConf.load(run_dir / "eval" / "orig" / "config.yaml").evaluated.data.root == str(
        synthetic_data.root
    )
    # With sources_from=config the new root is really read (a class removed there is an error naming it);
    # the default keeps the run's own sources.
    shutil.rmtree(moved / "mvtec" / "gear")
    with pytest.raises(FileNotFoundError, match="gear"):
        eval_zsad(
            _compose(
                "eval_zsad",
                [f"run_dir={run_dir}", "output_name=gone", "sources_from=config", "debug=tiny", *moved_paths],
            )
        )
    with pytest.raises(ValueError, match="sources_from"):
        eval_zsad(
            _compose(
                "eval_zsad", [f"run_dir={run_dir}", "output_name=bad", "sources_from=both", *moved_paths]
            )
        )
