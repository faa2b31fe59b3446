"""What the tests of ``anomaly-ov serve`` share: a saved tiny model folder and the serve overrides."""

from pathlib import Path

from anomaly_ov.checkpoints.model_folder import save_anomaly_ov
from anomaly_ov.inference.pipeline import AnomalyOVPipeline, compose_config

# the tiny model's answers are cut short: the tests compare them, they need not be long
MAX_NEW_TOKENS = 8


def saved_tiny_model(zoo_root: Path, folder: Path) -> Path:
    """A model folder of the tiny zoo's LLaVA-OV + tiny expert, as ``predict`` and ``chat`` load it."""
    config = compose_config("predict", [f"paths.zoo_dir={zoo_root}"])
    pipeline = AnomalyOVPipeline.from_config(config)
    return save_anomaly_ov(pipeline.model, pipeline.processor, folder, config.model)


def serve_overrides(zoo_root: Path, synthetic_root: Path) -> list[str]:
    """configs/serve.yaml overrides for the tiny zoo and the test's synthetic dataset."""
    return [
        f"paths.zoo_dir={zoo_root}",
        f"examples.synthetic_dir={synthetic_root}",
        f"generation.max_new_tokens={MAX_NEW_TOKENS}",
    ]


def held_out_defect_image(synthetic) -> Path:
    """The first defect image of the first held-out class of a synthetic dataset."""
    test = synthetic.mvtec_root / synthetic.heldout_categories[0] / "test"
    defect = sorted(d for d in test.iterdir() if d.is_dir() and d.name != "good")[0]
    return sorted(defect.glob("*.png"))[0]
