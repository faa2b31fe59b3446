#!/usr/bin/env bash
# README command 1: set up the environment, then run the main job on the embedded default (the synthetic
# anomaly dataset and the tiny offline model zoo), end to end on CPU in about a minute:
#   synthetic data -> tiny zoo -> stage 1 (train the expert on the tiny LLaVA-OV's tower, feature cache)
#   -> zero-shot evaluation on the held-out classes (metrics JSON, Table-2-style table, heatmaps)
#   -> Anomaly-OV with the trained expert: predict (JSON lines + heatmap overlays) and a two-turn chat.
# Re-running is safe: the data and the demo run are regenerated identically, the zoo is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline DS_ACCELERATOR=cpu
py="${ANOMALY_OV_VENV:-.venv}/bin/python"
out=${ANOMALY_OV_OUTPUTS:-outputs}
paths=("paths.output_root=$out")
run="$out/runs/demo_expert"
expert="model.expert.checkpoint=$run/expert.safetensors"

echo "== 1/6 synthetic anomaly data -> $out/synthetic"
"$py" -m anomaly_ov.cli make-synthetic --out "$out/synthetic" --seed 0 --overwrite
echo "== 2/6 tiny offline model zoo -> $out/zoo"
"$py" -m anomaly_ov.cli make-tiny-zoo --out "$out/zoo" --seed 0
echo "== 3/6 stage 1: train the expert on the training classes -> $run"
rm -rf "$run"  # the demo's own run, trained afresh (a real run resumes instead: same run_dir)
"$py" scripts/train_expert.py debug=tiny "${paths[@]}" run_dir="$run" logger=none
echo "== 4/6 zero-shot evaluation on the held-out classes"
"$py" scripts/eval_zsad.py "${paths[@]}" run_dir="$run"
echo "== 5/6 predict: score, answer and heatmap for each held-out test image -> $out/predict"
"$py" -m anomaly_ov.cli predict --images "$out/synthetic/mvtec/gear/test" --out "$out/predict" \
  --config-overrides "${paths[@]}" "$expert" generation.max_new_tokens=16
echo "== 6/6 chat about one image (the tiny LLM is untrained: its words are noise; the score is the expert's)"
"$py" -m anomaly_ov.cli chat --image "$out/synthetic/mvtec/gear/test/crack/000.png" \
  --question "Is there any defect in the image?" --question "Where is it?" \
  --config-overrides "${paths[@]}" "$expert" generation.max_new_tokens=16
echo
echo "== done. Stage-1 run: $run (config.yaml, train_metrics.json, expert.safetensors, eval/<time>/)"
echo "   zero-shot table:    $(ls -d "$run"/eval/*/ | tail -n 1)table.md"
echo "   predictions:        $out/predict/predictions.jsonl (+ heatmaps/)"
