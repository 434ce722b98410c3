"""The seeded 3-step DAPO run of tests/e2e/test_vllm_training.py with its rollout worker on vLLM and on the built-in
engine, side by side: what a user sees change when they switch engines (the engines sample different tokens from
the same weights, so the rewards differ; the float32 mismatch metrics should be float rounding on both).

Run in .venv-vllm (scripts/setup_vllm.sh), one thread a process:

    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/bench_vllm_run.py      # ~3 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

KEYS = ("critic/score/mean", "response_length/mean", "training/rollout_probs_diff_max", "rollout_corr/kl",
        "train/prompts_generated", "timing_s/gen", "timing_s/step")  # fmt: skip


def run(engine: str, base: Path, out: Path) -> dict:
    from e2e_settings import _overrides

    from dapo.config import load_config
    from dapo.trainer import Trainer

    settings = {
        "trainer.total_steps": 3, "trainer.num_threads": 1, "rollout.max_rows_in_flight": 32,
        "data.gen_batch_size": 16, "algo.dynamic_sampling.stop_when_full": True, "trainer.backend": "ray",
        "ray.train_workers": 2, "ray.rollout_workers": 1, "rollout.engine": engine, "rollout.dtype": "float32",
        "rollout.kv_cache_gb": 0.06 if engine == "vllm" else 0.0,
    }  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(load_config("cpu_dapo", None, _overrides(base, out, engine, **settings)), log_to_console=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"engine": engine, "wall_s": time.perf_counter() - start,
            "steps": [{k: r.get(k) for k in ("step", *KEYS)} for r in rows]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vllm-rollout-run.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from _record import write_record
    from e2e_settings import E2E_LEVEL

    from dapo.sft import SftSettings, build_base_model

    out = Path(tempfile.mkdtemp(prefix="dapo-vllm-run-"))
    # the end-to-end tests' base (tests/e2e/conftest.py)
    settings = SftSettings(steps=300, batch_size=32, lr=3e-3, shortcut_rate=0.5)
    base = build_base_model("1m", E2E_LEVEL, out / "tiny-1m-arith-level1", settings, say=lambda _: None)
    results = [run(engine, base, out) for engine in ("builtin", "vllm")]
    for r in results:
        print(f"{r['engine']}: {r['wall_s']:.0f} s")
        for s in r["steps"]:
            print("  ", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()})
    write_record("bench_vllm_run.py", results, args.out)


if __name__ == "__main__":
    main()
