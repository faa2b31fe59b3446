#!/usr/bin/env bash
# README command 1: set up the environment, then run the main job on the embedded default
# (the synthetic anomaly dataset and the tiny offline model zoo), end to end on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline DS_ACCELERATOR=cpu
py="${ANOMALY_OV_VENV:-.venv}/bin/python"
out=${ANOMALY_OV_OUTPUTS:-outputs}

echo "== 1/2 synthetic anomaly data -> $out/synthetic"
"$py" -m anomaly_ov.cli make-synthetic --out "$out/synthetic" --seed 0 --overwrite
echo "== 2/2 tiny offline model zoo -> $out/zoo"
"$py" -m anomaly_ov.cli make-tiny-zoo --out "$out/zoo" --seed 0
echo "== done: outputs under $out/"
