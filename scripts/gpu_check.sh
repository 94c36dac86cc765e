#!/usr/bin/env bash
# MedCL's GPU check (scripts/gpu_check.py): quickstart in bf16-mixed, a 2-experience stream with replay
# under DDP on all visible GPUs, and a ViT-B/16 training step at 224 px; prints images/s and peak GPU memory.
#   scripts/gpu_check.sh                 # on a CUDA machine (writes $OUT/gpu_check.json when OUT is set)
#   scripts/gpu_check.sh --smoke         # the same code on the CPU, tiny: checks the script
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(nvidia-smi not found)"
args=("$@")
if [ -n "${OUT:-}" ]; then args+=(--out "$OUT"); fi
exec "$PY" scripts/gpu_check.py "${args[@]}"
