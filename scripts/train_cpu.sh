#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the main job: DAPO on the CPU default.
# Extra arguments go to `dapo train` (e.g. `trainer.total_steps=20`). With `trainer.backend=ray` the
# set-up also installs Ray (the optional extra), e.g.
#   scripts/train_cpu.sh trainer.backend=ray ray.train_workers=2
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=""
for arg in "$@"; do
    [ "$arg" = "trainer.backend=ray" ] && EXTRAS="ray"
done
scripts/setup.sh $EXTRAS
exec .venv/bin/dapo train --preset cpu_dapo "$@"
