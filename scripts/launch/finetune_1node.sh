#!/usr/bin/env bash
# Stage 2 on one node with N GPUs: DeepSpeed ZeRO through accelerate (NCCL), launched by torchrun.
#   GPUS=8 RUN_DIR=outputs/runs/ft05b bash scripts/launch/finetune_1node.sh finetune_recipe=release_05b \
#     model.expert.official_checkpoint=/path/pretrained_expert_05b.pth data.image_root=/path/images
#   GPUS=8 bash scripts/launch/finetune_1node.sh finetune_recipe=release_7b trainer=stage2/zero3 ...
# An interrupted run continues from its newest checkpoint when started again with the same RUN_DIR.
# The same script runs on CPUs (gloo): DS_ACCELERATOR=cpu GPUS=2 bash scripts/launch/finetune_1node.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
gpus=${GPUS:-8}
# Every process must write into the same run folder: name it here rather than by each process's clock.
run_dir=${RUN_DIR:-outputs/runs/finetune_$(date +%Y-%m-%d_%H-%M-%S)}
exec "${ANOMALY_OV_VENV:-.venv}/bin/torchrun" --standalone --nproc_per_node "$gpus" \
  scripts/finetune.py run_dir="$run_dir" "$@"
