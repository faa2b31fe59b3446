#!/usr/bin/env bash
# Stage 2 on several nodes (torchrun rendezvous): run this on every node with the same NNODES, MASTER_ADDR,
# MASTER_PORT and RUN_DIR; the c10d rendezvous assigns the node ranks.
#   NNODES=4 MASTER_ADDR=node0 GPUS=8 RUN_DIR=/shared/runs/ft7b \
#     bash scripts/launch/finetune_multinode.sh finetune_recipe=release_7b \
#       model.expert.official_checkpoint=/shared/pretrained_expert_7b.pth data.image_root=/shared/images
# RUN_DIR must be on a filesystem every node sees (DeepSpeed writes each rank's checkpoint shard there).
# The global batch grows with the nodes (per-device batch x accumulation x GPUs); to keep the released one
# (0.5B: 1 x 2 x 8 = 16), pass trainer.accelerator.global_batch_size=16 and the accumulation adapts.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${NNODES:?set NNODES}" "${MASTER_ADDR:?set MASTER_ADDR}" "${RUN_DIR:?set RUN_DIR}"
exec "${ANOMALY_OV_VENV:-.venv}/bin/torchrun" \
  --nnodes "$NNODES" --nproc_per_node "${GPUS:-8}" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id "${RDZV_ID:-anomaly_ov_ft}" \
  scripts/finetune.py run_dir="$RUN_DIR" "$@"
