#!/usr/bin/env bash
# The GPU checks as one command, for a CUDA host (the device machine, or any GPU node with the project
# installed). Every figure is a JSON line, printed and saved under OUT_DIR:
#   1. detection.jsonl -- VisA-D&R detection throughput, the fast path (batched) vs the release's protocol
#      (greedy generation, batch 1), bfloat16: the tiny model, then LLaVA-OneVision-0.5B shapes at full
#      depth (24 Qwen2 + 26 SigLIP layers; random weights rigged to answer Yes/No; issue: >= 2x images/s);
#   2. finetune.jsonl -- one stage-2 step at 0.5B shapes and full depth on a 6x6-grid image (~7.4k tokens):
#      labelled-only loss vs full logits (LoRA), and full fine-tuning; peak = torch.cuda.max_memory_allocated.
#   bash scripts/gpu_benchmarks.sh [OUT_DIR]          (default: $OUT, else outputs/gpu_benchmarks)
# Sizes (environment): IMAGES (16), GRID (6), LLM_LAYERS (24), VISION_LAYERS (26), STEPS (3), DEVICE (cuda).
# Where the project's dependencies are missing, wheels from `bash scripts/gpu_wheels.sh` in .whl/ are
# installed into a temporary folder first (nothing is downloaded here).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-outputs/gpu_benchmarks}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ] && ! "$py" -c "import hydra, omegaconf" 2>/dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PYTHONPATH"
fi
"$py" - <<'PY'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CPU)'}", flush=True)
PY
device=${DEVICE:-cuda}
{
  "$py" scripts/benchmark_detection.py --device "$device" --shapes tiny --repeats 3
  "$py" scripts/benchmark_detection.py --device "$device" --shapes llava_ov_05b --images "${IMAGES:-16}" \
    --repeats 2 --llm-layers "${LLM_LAYERS:-24}" --vision-layers "${VISION_LAYERS:-26}"
} 2>"$out/detection.log" | grep '^{' | tee "$out/detection.jsonl"
"$py" scripts/benchmark_finetune.py --variants labelled full_logits full_ft --grid "${GRID:-6}" --steps "${STEPS:-3}" \
  --llm-layers "${LLM_LAYERS:-24}" --vision-layers "${VISION_LAYERS:-26}" 2>"$out/finetune.log" \
  | tee "$out/finetune.txt" | grep '^{' >"$out/finetune.jsonl"
cat "$out/finetune.txt"
