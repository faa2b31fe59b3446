#!/usr/bin/env bash
# Stage 1 on several nodes: run this on every node with the same MASTER_ADDR / MASTER_PORT / RUN_DIR and
# its own NODE_RANK (SLURM: NODE_RANK=$SLURM_NODEID, MASTER_ADDR=first host of $SLURM_JOB_NODELIST).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS=8 RUN_DIR=/shared/runs/expert \
#     bash scripts/launch/train_expert_multinode.sh experiment=table2_anomaly_ov paths.cache_dir=/shared/cache
# RUN_DIR and the feature cache (paths.cache_dir) must be on a filesystem every node sees: each process
# computes its share of the cache, and every process reads all of it (or use features=streamed).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}" "${RUN_DIR:?set RUN_DIR}"
exec "${ANOMALY_OV_VENV:-.venv}/bin/torchrun" \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "${GPUS:-8}" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  scripts/train_expert.py trainer=ddp run_dir="$RUN_DIR" "$@"
