"""The rollout/training mismatch on the main job: a float32 engine against a bfloat16 one, and what truncated
importance sampling does about the latter.

The main job (`cpu_dapo`, 100 steps, held-out accuracy before and after) per seed in three settings, 2 threads:
  - fp32 engine, π_old recomputed by the trainer (`actor.reuse_rollout_logprobs=false`): the float rounding
    between the engine's incremental decode and the training forward;
  - bf16 engine (`rollout.dtype=bfloat16`): its own bf16 copy of the weights, refreshed after every update;
  - bf16 engine + token-level TIS (`algo.rollout_correction.level=token`, cap 2).
Per run: the mismatch metrics (the mean over steps of each step's mean; the largest per-step max), the
generation and step time, and the held-out accuracy. Runs interleaved by seed.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_mismatch.py     # ~15 min
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
from pathlib import Path

from _main_job import run_main_job

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "fp32 engine, pi_old recomputed": {"actor.reuse_rollout_logprobs": False},
    "bf16 engine": {"rollout.dtype": "bfloat16"},
    "bf16 engine + token TIS (cap 2)": {"rollout.dtype": "bfloat16", "algo.rollout_correction.level": "token"},
}
MEANS = (
    "training/rollout_probs_diff_mean", "training/rollout_probs_diff_std", "rollout_corr/ratio_std",
    "rollout_corr/kl", "rollout_corr/k3_kl", "rollout_corr/is_capped_frac", "timing_s/gen", "timing_s/step",
)  # fmt: skip
MAXES = ("training/rollout_probs_diff_max", "rollout_corr/ratio_max")


def run(out: Path, seed: int, steps: int, name: str) -> dict[str, float]:
    overrides = {
        "trainer.seed": seed, "trainer.total_steps": steps, "trainer.output_dir": str(out),
        "trainer.run_name": f"bench-mismatch-{re.sub(r'[^a-z0-9]+', '-', name.lower())}-s{seed}",
        "trainer.test_freq": steps, **SETTINGS[name],
    }  # fmt: skip
    _, rows = run_main_job(overrides)
    steps_ = [r for r in rows if r["step"] > 0 and "timing_s/step" in r]
    accuracy = [r["val-core/arith/acc/mean@4"] for r in rows if "val-core/arith/acc/mean@4" in r]
    got = {k: statistics.fmean(r[k] for r in steps_ if k in r) if any(k in r for r in steps_) else None for k in MEANS}
    got.update({k: max(r[k] for r in steps_ if k in r) for k in MAXES})
    got.update({"val_before": accuracy[0], "val_after": accuracy[-1]})
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out-dir", default=str(ROOT / "runs"), help="run directories (and the warm-started base)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mismatch.json"))
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in args.settings}
    for seed in args.seeds:
        for name in args.settings:
            got = run(Path(args.out_dir), seed, args.steps, name)
            results[name].append(got)
            print(json.dumps({"seed": seed, "setting": name, **got}), flush=True)
    out = {
        "machine": platform.processor() or platform.machine(), "preset": "cpu_dapo", "steps": args.steps,
        "seeds": args.seeds, "threads": 2, "runs": results,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
