"""Zero-shot anomaly-detection evaluation of the expert (configs/eval_zsad.yaml).

    python scripts/eval_zsad.py run_dir=<a train_expert run>
    python scripts/eval_zsad.py model.expert.official_checkpoint=/path/pretrained_expert_05b.pth

Composes the config; the recipe is :func:`anomaly_ov.recipes.eval_zsad.eval_zsad`.
"""

import sys

import hydra
from omegaconf import DictConfig

from anomaly_ov.config import config_dir
from anomaly_ov.offline import enforce_offline

enforce_offline()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval_zsad")
def main(cfg: DictConfig) -> None:
    # imported after enforce_offline(): the recipe imports transformers
    from anomaly_ov.recipes.eval_zsad import eval_zsad

    eval_zsad(cfg)


if __name__ == "__main__":
    main()
    sys.exit(0)
