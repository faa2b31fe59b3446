"""Stage 1: train the anomaly expert (configs/train_expert.yaml).

    python scripts/train_expert.py debug=tiny                      # tiny zoo + synthetic data on CPU
    python scripts/train_expert.py experiment=table2_anomaly_ov    # published recipe
    torchrun --nproc_per_node N scripts/train_expert.py run_dir=... # data parallel (scripts/launch/)

Composes the config; the recipe is :func:`anomaly_ov.recipes.train_expert.train_expert`.
"""

import sys

import hydra
from omegaconf import DictConfig

from anomaly_ov.config import config_dir
from anomaly_ov.offline import enforce_offline

enforce_offline()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train_expert")
def main(cfg: DictConfig) -> None:
    # imported after enforce_offline(): the recipe imports transformers and wandb
    from anomaly_ov.recipes.train_expert import train_expert
    from anomaly_ov.training.preemption import PREEMPTED_EXIT_CODE

    if train_expert(cfg)["preempted"]:
        # stopped by a signal with a checkpoint: the SLURM script requeues, a rerun continues
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
    # gloo can abort at interpreter exit; the process group is already destroyed, leave explicitly.
    sys.exit(0)
