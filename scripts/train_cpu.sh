#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the main job: DAPO on the CPU default.
# Extra arguments go to `dapo train` (e.g. `trainer.total_steps=20`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/dapo train --preset cpu_dapo "$@"
