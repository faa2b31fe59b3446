#!/usr/bin/env bash
# Fetches into .whl/ the wheels that scripts/gpu_benchmarks.sh installs on a GPU host that has PyTorch but
# not this project's dependencies (the device machine: no network there; its image has torch, peft,
# accelerate, safetensors, but neither Hydra nor our transformers version). Versions come from
# constraints.txt; run it where PyPI is reachable, then carry .whl/ (git-ignored) with the working tree.
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION]        (default 3.12, the device image's)
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
packages=(hydra-core omegaconf transformers tokenizers huggingface_hub peft accelerate safetensors)
pins=()
for name in "${packages[@]}"; do
  pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt) || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
# Hydra's parser runtime is published as a source archive only: built here into a pure-Python wheel
antlr=$(grep -i -E "^antlr4-python3-runtime==" constraints.txt)
python3 -m pip wheel -q --no-deps -w .whl "$antlr"
ls -s .whl
