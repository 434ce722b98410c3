#!/usr/bin/env bash
# Create ./.venv (once) and install dapo into it. Idempotent: a second run only checks.
#
#   scripts/setup.sh            # runtime dependencies
#   scripts/setup.sh dev        # + test and lint tools (pytest, ruff, math-verify)
#
# torch is installed FIRST, and explicitly as the CPU build (torch==2.13.0+cpu): an unpinned torch requirement
# would make pip download a multi-gigabyte CUDA build. The CPU build is not on PyPI itself: pip finds it where a CPU
# wheel index or a local wheel directory is configured (PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS, or pip.conf), and the
# script stops with what to set where none is. DAPO_TORCH_SPEC overrides the choice (e.g. DAPO_TORCH_SPEC=torch==2.13.0
# on a GPU machine, for the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${DAPO_TORCH_SPEC:-torch==2.13.0+cpu}"

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC first"
    if ! "${PIP[@]}" install "$TORCH_SPEC"; then
        echo "[setup] pip found no $TORCH_SPEC: point pip at a CPU wheel index of PyTorch (PIP_EXTRA_INDEX_URL=...)" \
             "or a directory holding the wheel (PIP_FIND_LINKS=...), or choose another build with DAPO_TORCH_SPEC" >&2
        exit 1
    fi
fi

STAMP=".venv/.dapo-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    TARGET="."
    [ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
    echo "[setup] installing dapo-rl ${EXTRAS:+with extras [$EXTRAS]}"
    "${PIP[@]}" install -e "$TARGET"
    touch "$STAMP"
fi
