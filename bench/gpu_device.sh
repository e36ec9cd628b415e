#!/usr/bin/env bash
# The GPU checks on a GPU machine: the tests that read a GPU, then bench/gpu.py at full size.
# Python: $PYTHON, else the project's .venv, else python3 (a GPU image's own Python, with
# xgboost importable, e.g. through PYTHONPATH). Writes "$OUT/gpu-tests.log",
# "$OUT/gpu-latest.json" and "$OUT/gpu-latest.md" (OUT defaults to bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
nvidia-smi || echo "gpu_device.sh: nvidia-smi not found or failed" >&2
"$PYTHON" -c 'import xgboost; print("xgboost", xgboost.__version__, "USE_CUDA", xgboost.build_info().get("USE_CUDA"))' || exit 1
# No conftest: it starts the emulators, which these tests do not use.
timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider --noconftest \
  tests/test_bench_gpu.py tests/bench/test_gpu.py tests/training/test_model.py 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 480 "$PYTHON" -m bench.gpu --out "$OUT/gpu-latest"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_device.sh: bench.gpu ran past 480 s" >&2
[ "$rc" -eq 0 ] && rc=$tests
exit "$rc"
