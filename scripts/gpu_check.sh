#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU and no internet, whose python3 already has torch and
# transformers (Ray and vLLM may be absent). About 5 minutes on an H100; writes, under $OUT (else bench/results/):
#
#   gpu-check.json        device facts and measured matmul peaks, the built-in engine against HF generate, a
#                         20-step DAPO run of a 104M built-in model in bf16-mixed (step time, MFU)
#   gpu-check-tests.txt   the `cuda` tests: log-probs, loss and updates on the device against the CPU; bf16-mixed
#
#   scripts/gpu_check.sh
#
# Exit status: 0 when every test passed and every section measured; 1 otherwise (the files say what broke).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
# The package itself only: its dependencies are on the machine already, and nothing can be downloaded there.
"$PYTHON" -m pip install --no-deps --no-build-isolation -q -e . || exit 1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
    || exit 1
status=0
"$PYTHON" -m pytest -m cuda tests/gpu -p no:cacheprovider -q -o addopts="" 2>&1 | tee "$OUT_DIR/gpu-check-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
"$PYTHON" bench/gpu_check.py --out "$OUT_DIR/gpu-check.json" || status=1
echo "[gpu-check] exit status $status"
exit $status
