"""What stopping a generation round once the batch is full (`algo.dynamic_sampling.stop_when_full`) saves, on
the main job: prompts generated and generation time per step, against whole rounds.

The main job (`cpu_dapo`: 16 groups a step from rounds of 16 prompts × 8 responses) for `--steps` steps per
run, no evaluation, no checkpoints, 2 threads. Whole rounds (the default, one wave of 128 rows) are the
baseline; early stop needs waves, and smaller waves decode fewer rows at once, so it is measured at 64 and 32
rows per wave. Each with the surplus kept for the next step (`keep_surplus=true`, this project's default) and
discarded (`false`, verl's and the paper preset's). Runs are interleaved by seed; every number is the mean
over the steps of a run, then the median over seeds. The runs learn differently (other groups reach the
batch), so this measures cost, not accuracy.

`--ray`: the same on 2 DDP ranks with 2 Ray rollout workers (colocated, one thread each), where a round is
cut into waves anyway: whole rounds and early stop, both in waves of 64 rows.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_early_stop.py           # ~8 min
    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_early_stop.py --ray     # ~6 min
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from _main_job import run_main_job

ROOT = Path(__file__).resolve().parents[1]

# (name, rows per wave, stop when full)
MODES = [("whole rounds", 0, False), ("stop, waves of 64", 64, True), ("stop, waves of 32", 32, True)]
RAY_MODES = [("whole rounds, waves of 64", 64, False), ("stop, waves of 64", 64, True)]
RAY = {"trainer.backend": "ray", "ray.train_workers": 2, "ray.rollout_workers": 2, "trainer.num_threads": 1}


def run(out: Path, seed: int, steps: int, rows: int, stop: bool, keep: bool, ray: bool) -> dict[str, float]:
    overrides = {
        "trainer.seed": seed,
        "trainer.total_steps": steps,
        "trainer.output_dir": str(out),
        "trainer.run_name": f"s{seed}-r{rows}-stop{stop}-keep{keep}",
        "trainer.test_freq": 0,
        "trainer.val_before_train": False,
        "rollout.max_rows_in_flight": rows,
        "algo.dynamic_sampling.stop_when_full": stop,
        "algo.dynamic_sampling.keep_surplus": keep,
        **(RAY if ray else {}),
    }
    trainer, rows_ = run_main_job(overrides)
    gen_batch = trainer.cfg.data.gen_batch_size

    def mean(f) -> float:
        return statistics.fmean(f(r) for r in rows_)

    return {
        "prompts_generated": mean(lambda r: r["train/num_gen_batches"] * gen_batch - r["train/prompts_not_generated"]),
        "gen_s": mean(lambda r: r.get("timing_s/gen", 0.0)),
        "reward_s": mean(lambda r: r.get("timing_s/reward", 0.0)),
        "step_s": mean(lambda r: r["perf/time_per_step"]),
        "rounds": mean(lambda r: r["train/num_gen_batches"]),
        "groups_from_buffer": mean(lambda r: r["train/groups_from_buffer"]),
        "groups_discarded": mean(lambda r: r["train/groups_discarded"]),
        "train_acc": mean(lambda r: r["train/acc/mean"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ray", action="store_true", help="2 DDP ranks and 2 Ray rollout workers")
    parser.add_argument("--out", default=None, help="default: bench/results/early-stop[-ray].json")
    args = parser.parse_args()
    modes = RAY_MODES if args.ray else MODES
    out_path = args.out or str(ROOT / "bench" / "results" / ("early-stop-ray.json" if args.ray else "early-stop.json"))
    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for keep in (True, False):
                for name, rows, stop in modes:
                    got = run(Path(tmp), seed, args.steps, rows, stop, keep, args.ray)
                    results.setdefault((keep, name), []).append(got)
                    print(json.dumps({"seed": seed, "keep_surplus": keep, "mode": name, **got}), flush=True)
    table = []
    for (keep, name), runs in results.items():
        row = {"keep_surplus": keep, "mode": name}
        row.update({k: statistics.median(r[k] for r in runs) for k in runs[0]})
        table.append(row)
    for row in table:
        base = next(r for r in table if r["keep_surplus"] == row["keep_surplus"] and r["mode"] == modes[0][0])
        row["gen_s_vs_whole_rounds"] = row["gen_s"] / base["gen_s"]
        row["prompts_vs_whole_rounds"] = row["prompts_generated"] / base["prompts_generated"]
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    out = {
        "machine": platform.processor() or platform.machine(), "steps": args.steps, "seeds": args.seeds,
        "preset": "cpu_dapo", "threads": 1 if args.ray else 2, "ray": args.ray, "rows": table,
    }  # fmt: skip
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
