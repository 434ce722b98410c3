"""Responses scored per second by the reward step, on this machine's 2 cores.

Workload: a realistic mix of response lengths (log-uniform 200..16,000 characters of reasoning text,
the final answer on the last line), half correct, built from the shared data sets:
  * DAPO scorer: DAPO-Math-17K ground truths, "Answer: N" responses (default and verl modes);
  * symbolic path: MATH-500 ground truths in \\boxed{}, where one third are written in an equivalent but
    different form (needs math-verify), one third verbatim (fast path), one third wrong.
Serial = in-process scoring (the symbolic path still needs its pool: serial = 1 worker); pool = 2 workers.
Each configuration is timed `--repeats` times after a warm-up call; the median is reported.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_rewards.py
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from dapo.data import read_dataset
from dapo.rewards import RewardSample, build_reward_function

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILLER = "We consider the cases one at a time and simplify each expression carefully. "

EQUIVALENT_FORMS = {  # ground truth -> an equivalent answer in another form, for the symbolic path
    "\\frac{14}{3}": "4\\frac{2}{3}",
    "3\\sqrt{13}": "\\sqrt{117}",
    "\\frac{3}{56}": "\\frac{6}{112}",
}


def _length(rng: random.Random) -> int:
    return int(math.exp(rng.uniform(math.log(200), math.log(16_000))))


def _body(rng: random.Random) -> str:
    n = _length(rng)
    return (FILLER * (n // len(FILLER) + 1))[:n]


def dapo_samples(n: int, rng: random.Random) -> list[RewardSample]:
    records = read_dataset(DATA / "dapo-math-17k.parquet", limit=n).records
    out = []
    for k, r in enumerate(records):
        answer = r.ground_truth if k % 2 == 0 else str(int(r.ground_truth) + 1)
        body = _body(rng)
        out.append(RewardSample("", f"{body}\nAnswer: {answer}", 500, False, r.ground_truth, "math_dapo", {}))
    return out


def math_samples(n: int, rng: random.Random) -> list[RewardSample]:
    records = list(read_dataset(DATA / "math-500.jsonl").records)
    out = []
    for k in range(n):
        r = records[k % len(records)]
        kind = k % 3
        if kind == 0:  # equivalent, different form: the symbolic worker decides
            answer = EQUIVALENT_FORMS.get(r.ground_truth, f"{r.ground_truth} + 0")
        elif kind == 1:
            answer = r.ground_truth
        else:
            answer = f"{r.ground_truth} + 1"
        body = _body(rng)
        out.append(
            RewardSample(
                "", f"{body}\nSo the answer is $\\boxed{{{answer}}}$.", 500, False, r.ground_truth, "math500", {}
            )
        )
    return out


def time_config(samples, repeats: int, **kwargs) -> dict:
    fn = build_reward_function(
        overlong_enable=True, max_response_length=20480, overlong_buffer_length=4096, overlong_penalty_factor=1.0,
        **kwargs,
    )  # fmt: skip
    try:
        fn(samples[:64])  # warm-up: starts the pool, imports math-verify in the workers
        times, acc = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            batch = fn(samples)
            times.append(time.perf_counter() - start)
            acc = batch.metrics["reward/acc_mean"]
        median = statistics.median(times)
        return {"n": len(samples), "median_s": median, "responses_per_s": len(samples) / median,
                "times_s": times, "acc_mean": acc}  # fmt: skip
    finally:
        fn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-dapo", type=int, default=4096)
    parser.add_argument("--n-math", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rewards.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    dapo = dapo_samples(args.n_dapo, rng)
    math_set = math_samples(args.n_math, rng)
    results = {
        "dapo_default_serial": time_config(dapo, args.repeats),
        "dapo_verl_serial": time_config(dapo, args.repeats, scorer_mode="verl"),
        "dapo_default_pool2": time_config(dapo, args.repeats, num_workers=2, parallel_min_batch=1),
        "math_symbolic_pool1": time_config(math_set, args.repeats, num_workers=1),
        "math_symbolic_pool2": time_config(math_set, args.repeats, num_workers=2),
    }
    base_dapo = results["dapo_default_serial"]["responses_per_s"]
    base_math = results["math_symbolic_pool1"]["responses_per_s"]
    for name, r in results.items():
        r["ratio_to_serial"] = r["responses_per_s"] / (base_dapo if name.startswith("dapo") else base_math)
    mean_chars = statistics.mean(len(s.response) for s in dapo)
    mean_chars_math = statistics.mean(len(s.response) for s in math_set)
    report = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "workload": {
            "mean_response_chars_dapo": mean_chars,
            "mean_response_chars_math": mean_chars_math,
            "repeats": args.repeats,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'config':<24}{'n':>6}{'median s':>10}{'resp/s':>10}{'ratio':>8}")
    for name, r in results.items():
        print(f"{name:<24}{r['n']:>6}{r['median_s']:>10.3f}{r['responses_per_s']:>10.0f}{r['ratio_to_serial']:>8.2f}")


if __name__ == "__main__":
    main()
