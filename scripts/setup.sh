#!/usr/bin/env bash
# Create ./.venv (once) and install dapo into it. Idempotent: a second run only checks.
#
#   scripts/setup.sh            # runtime dependencies
#   scripts/setup.sh dev        # + test and lint tools (pytest, ruff, math-verify)
#
# torch is installed FIRST and pinned to the CPU build (torch==2.13.0): an unpinned torch
# requirement would make pip download a multi-gigabyte CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${DAPO_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC (CPU build) first"
    "${PIP[@]}" install "$TORCH_SPEC"
fi

STAMP=".venv/.dapo-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    TARGET="."
    [ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
    echo "[setup] installing dapo-rl ${EXTRAS:+with extras [$EXTRAS]}"
    "${PIP[@]}" install -e "$TARGET"
    touch "$STAMP"
fi
