#!/usr/bin/env bash
# README command 2: set up the environment, then run the offline CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline DS_ACCELERATOR=cpu
exec "${ANOMALY_OV_VENV:-.venv}/bin/python" -m pytest "$@"
