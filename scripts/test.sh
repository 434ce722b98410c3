#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
# Two cores: keep torch from oversubscribing them when tests run alongside other work.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest "$@"
