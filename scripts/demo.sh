#!/usr/bin/env bash
# README command 1: set up the environment, then run the whole pipeline on the embedded default (the
# synthetic anomaly dataset and the tiny offline model zoo) on the CPU, and write one report:
#   synthetic data -> tiny zoo -> stage 1 (the expert, from cached features) -> zero-shot evaluation on the
#   held-out classes (metrics, Table-2-style table, heat maps) -> stage 2: instruction tuning (full
#   fine-tuning of the tiny LLM, configs/finetune_recipe/demo.yaml says why not LoRA) as 2 processes under
#   DeepSpeed ZeRO-2 (torchrun, as on GPUs), with the expert and, for the baseline, without it ->
#   VisA-D&R-style detection + reasoning of the tuned, the tuned-without-expert and the untuned model
#   -> predict and a short chat -> the report: outputs/report/index.md (+ PNGs) and index.html.
# Every step must succeed (set -e); the report is written last, into a temporary folder renamed into place,
# so a failed run leaves no report (the previous one is removed when the run starts).
# Knobs: ANOMALY_OV_OUTPUTS (default outputs), ANOMALY_OV_VENV, ANOMALY_OV_DEMO_QUICK=1 (a reduced run for
# the tests: small data, few steps, 1 stage-2 process), ANOMALY_OV_DEMO_PROCS (stage-2 processes, default 2),
# ANOMALY_OV_SKIP_SETUP=1 (use the environment as it is: the tests, which must not install anything).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${ANOMALY_OV_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline DS_ACCELERATOR=cpu
# one intra-op thread per process: tiny models gain nothing from more, and on a shared CPU the thread pool's
# spinning made stage 1 ten times slower in some epochs (11 s instead of 1 s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
py="${ANOMALY_OV_VENV:-.venv}/bin/python"
# absolute, so that paths handed to the commands mean the same whatever folder a command resolves them from
out=$(realpath -m "${ANOMALY_OV_OUTPUTS:-outputs}")
quick=${ANOMALY_OV_DEMO_QUICK:-0}
paths=("paths.output_root=$out")
runs="$out/runs"
expert_run="$runs/demo_expert"
zsad="$expert_run/eval/demo"
split="$out/demo_data"
tuned="$runs/demo_tuned"
tuned_plain="$runs/demo_tuned_no_expert"
evals="$out/eval_benchmark"
expert="model.expert.checkpoint=$expert_run/expert.safetensors"
timings="$out/demo_timings.tsv"

if [ "$quick" = 1 ]; then
  scale=small procs=${ANOMALY_OV_DEMO_PROCS:-1} max_new=8
  stage1=(trainer.fit.epochs=2)
  stage2=(trainer.fit.epochs=1 "data.mixture=$split/mixture.yaml")
else
  scale=default procs=${ANOMALY_OV_DEMO_PROCS:-2} max_new=16
  stage1=()
  stage2=("data.mixture=$split/mixture.yaml")
fi

rm -rf "$out/report"  # never leave an earlier report beside this run's outputs as if it were this run's
mkdir -p "$out"
: > "$timings"
step=0
total=11
current=""
# on any failure (set -e ends the script at the failing command): say where, and that there is no report
trap 'status=$?; [ "$status" = 0 ] || echo "== demo FAILED at step $step/$total ($current); no report written" >&2' EXIT
# run NAME COMMAND...: prints the step, runs it, records its wall time in $timings
run() {
  current=$1
  step=$((step + 1))
  shift
  echo "== $step/$total $current"
  local start=$SECONDS
  "$@"
  local took=$((SECONDS - start))
  printf '%s\t%s\n' "$current" "$took" >> "$timings"
  echo "   ($current: ${took} s)"
}

stage1_train() {
  rm -rf "$expert_run"  # the demo's own run, trained afresh (a real run resumes instead: same run_dir)
  "$py" scripts/train_expert.py debug=tiny "${paths[@]}" run_dir="$expert_run" logger=none "${stage1[@]}"
}

stage2_tune() {  # stage2_tune RUN_DIR EXTRA_OVERRIDES...
  local run_dir=$1
  shift
  rm -rf "$run_dir"
  "$py" -m torch.distributed.run --standalone --nproc_per_node "$procs" scripts/finetune.py \
    finetune_recipe=demo "${paths[@]}" run_dir="$run_dir" "${stage2[@]}" "$@"
}

evaluate() {  # evaluate NAME MODEL_OVERRIDES...: Table-4 run (held-out, release protocol) + fast path
  local name=$1
  shift
  rm -rf "$evals/$name" "$evals/${name}_scores"
  "$py" scripts/eval_benchmark.py benchmark=synthetic_visa_dr "${paths[@]}" "$@" out_dir="$evals/$name" \
    generation.max_new_tokens="$max_new" table.row_name="$name" batch_size=20
  "$py" scripts/eval_benchmark.py benchmark=synthetic_visa_dr "${paths[@]}" "$@" \
    out_dir="$evals/${name}_scores" detection.protocol=fast 'benchmark.tasks=[detection]' \
    benchmark.detection_file="$split/detection_all.json" table.row_name="$name" batch_size=20
}

evaluate_all() {
  evaluate tuned model_dir="$tuned/model"
  evaluate tuned_no_expert model_dir="$tuned_plain/model"
  # one crop per image, as the tuned models (configs/finetune_recipe/demo.yaml) and the expert's stage 1
  evaluate untuned "$expert" model.llm.anyres=false
}

chat_demo() {  # the transcript (image, questions, then the replies) goes into the report
  local image="$out/synthetic/mvtec/gear/test/crack/000.png"
  local first="Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
  local second="Where is the anomaly located?"
  {
    printf 'image: %s\nyou> %s\nyou> %s\n' "$image" "$first" "$second"
    "$py" -m anomaly_ov.cli chat --model "$tuned/model" --image "$image" --question "$first" \
      --question "$second" --config-overrides "${paths[@]}" generation.max_new_tokens=16
  } | tee "$out/demo_chat.txt"
}

report() {
  "$py" -m anomaly_ov.cli report --out "$out/report" --stage1 "$expert_run" --zero-shot "$zsad" \
    --split "$split/split.json" --predict "$out/predict" --chat "$out/demo_chat.txt" --timings "$timings" \
    --stage2 "Tuned, with expert=$tuned" --stage2 "Tuned, without expert=$tuned_plain" \
    --benchmark "Tuned, with expert=$evals/tuned" --benchmark "Tuned, without expert=$evals/tuned_no_expert" \
    --benchmark "Untuned (tiny LLaVA-OV + expert)=$evals/untuned" \
    --scores "Tuned, with expert=$evals/tuned_scores" \
    --scores "Tuned, without expert=$evals/tuned_no_expert_scores" \
    --scores "Untuned (tiny LLaVA-OV + expert)=$evals/untuned_scores"
}

run "synthetic data" "$py" -m anomaly_ov.cli make-synthetic --out "$out/synthetic" --seed 0 --scale "$scale" \
  --overwrite
run "tiny model zoo" "$py" -m anomaly_ov.cli make-tiny-zoo --out "$out/zoo" --seed 0
run "stage 1: expert" stage1_train
run "zero-shot evaluation" "$py" scripts/eval_zsad.py "${paths[@]}" run_dir="$expert_run" output_name=demo
run "stage-2 data split" "$py" -m anomaly_ov.report.demo_data --synthetic "$out/synthetic" --out "$split"
run "stage 2: full fine-tuning, with expert ($procs processes, ZeRO-2)" stage2_tune "$tuned" "$expert"
run "stage 2: full fine-tuning, without expert ($procs processes, ZeRO-2)" stage2_tune "$tuned_plain" model/expert=none
run "VisA-D&R evaluation of 3 models" evaluate_all
run "predict (tuned model)" "$py" -m anomaly_ov.cli predict --model "$tuned/model" \
  --images "$out/synthetic/mvtec/gear/test" --out "$out/predict" \
  --config-overrides "${paths[@]}" generation.max_new_tokens=16
run "chat (tuned model)" chat_demo
run "report" report
echo
echo "== done in ${SECONDS} s. Report: $out/report/index.md and $out/report/index.html"
echo "   times per stage: $timings"
