#!/usr/bin/env bash
# bench/gpu.py on a GPU machine: the repo checked out there with its .venv carried over.
# Writes "$OUT/gpu-latest.json" and "$OUT/gpu-latest.md" (OUT defaults to bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
nvidia-smi || echo "gpu_device.sh: nvidia-smi not found or failed" >&2
.venv/bin/python -c 'import xgboost; print("xgboost", xgboost.__version__, "USE_CUDA", xgboost.build_info().get("USE_CUDA"))'
timeout 480 .venv/bin/python -m bench.gpu --out "$OUT/gpu-latest"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_device.sh: bench.gpu ran past 480 s" >&2
exit "$rc"
