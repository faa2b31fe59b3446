#!/usr/bin/env bash
# Stage 1 on one node with N GPUs (data parallel through accelerate / DDP, NCCL).
#   GPUS=8 bash scripts/launch/train_expert_1node.sh experiment=table2_anomaly_ov
#   GPUS=8 bash scripts/launch/train_expert_1node.sh experiment=table2_anomaly_ov_mvtec
# The global batch (trainer.fit.global_batch_size, 128) is split over the processes, so the result does not
# depend on N. An interrupted run continues from its last epoch when started again with the same RUN_DIR.
# The same script runs on CPUs with the gloo backend: GPUS=2 ... trainer=cpu
set -euo pipefail
cd "$(dirname "$0")/../.."
gpus=${GPUS:-8}
# Every process must write into the same run folder: name it here rather than by each process's clock.
run_dir=${RUN_DIR:-outputs/runs/expert_$(date +%Y-%m-%d_%H-%M-%S)}
exec "${ANOMALY_OV_VENV:-.venv}/bin/torchrun" --standalone --nproc_per_node "$gpus" \
  scripts/train_expert.py trainer=ddp run_dir="$run_dir" "$@"
