"""Stage 2: instruction-tune Anomaly-OV (configs/finetune.yaml).

    python scripts/finetune.py                                       # tiny zoo + synthetic data on the CPU
    torchrun --nproc_per_node 8 scripts/finetune.py finetune_recipe=release_05b \
        model.expert.official_checkpoint=/path/pretrained_expert_05b.pth data.image_root=/path/images
    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 scripts/finetune.py   # 2 CPU processes

Composes the config; the recipe is :func:`anomaly_ov.recipes.finetune.finetune`.
"""

import sys

import hydra
from omegaconf import DictConfig

from anomaly_ov.config import config_dir
from anomaly_ov.offline import enforce_offline

enforce_offline()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="finetune")
def main(cfg: DictConfig) -> None:
    # imported after enforce_offline(): the recipe imports transformers, deepspeed and wandb
    from anomaly_ov.recipes.finetune import finetune
    from anomaly_ov.training.preemption import PREEMPTED_EXIT_CODE

    if finetune(cfg)["preempted"]:
        # stopped by a signal with a checkpoint: the SLURM script requeues, a rerun continues
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
    # gloo can abort at interpreter exit; the process group is already destroyed, leave explicitly.
    sys.exit(0)
