"""Benchmark evaluation: VisA-D&R detection and reasoning, or MMAD (configs/eval_benchmark.yaml).

    python scripts/eval_benchmark.py benchmark.root=/data model_dir=<exported model>
    accelerate launch --num_processes 8 scripts/eval_benchmark.py benchmark=mmad benchmark.root=/data/MMAD ...

Composes the config; the recipe is :func:`anomaly_ov.recipes.eval_benchmark.eval_benchmark`.
"""

import sys

import hydra
from omegaconf import DictConfig

from anomaly_ov.config import config_dir
from anomaly_ov.offline import enforce_offline

enforce_offline()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval_benchmark")
def main(cfg: DictConfig) -> None:
    # imported after enforce_offline(): the recipe imports transformers
    from anomaly_ov.recipes.eval_benchmark import eval_benchmark

    eval_benchmark(cfg)


if __name__ == "__main__":
    main()
    sys.exit(0)
