"""bf16-mixed against fp32 training: the policy worker's log-prob pass and update, the trainer's own calls.

Workload (`bench_forward.py`'s): 8 prompts × 8 responses of 15-64 tokens after 21-token prompts, a random-init
tiny Llama, GRPO advantages of random 0/1 rewards, two optimiser steps (mini-batches of 4 groups), one thread.
The two precisions alternate after a warm-up call, each with its own copy of the same model; medians of
`--repeats` calls. The baseline is fp32 in the same run.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_precision.py      # ~2 min
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from _record import write_record
from bench_forward import update_batch

from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.workers.base import OptimParams, PolicyLossParams, PolicySettings
from dapo.workers.policy import PolicyWorker

ROOT = Path(__file__).resolve().parents[1]
LOSS = PolicyLossParams(0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0)
OPTIM = OptimParams(1e-5, (0.9, 0.999), 0.0, 1.0, 0, "constant", 10, 0.0)
PRECISIONS = ("fp32", "bf16-mixed")


def bench(size: str, repeats: int) -> dict:
    model = build_tiny_model(build_char_tokenizer(), size, arch="llama")
    batch = update_batch(model.config.vocab_size)
    workers = {
        p: PolicyWorker(copy.deepcopy(model), PolicySettings(OPTIM, micro_batch_max_tokens=4096, precision=p))
        for p in PRECISIONS
    }
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(repeats + 1):
        for p, worker in workers.items():
            start = time.perf_counter()
            old = worker.compute_logprobs(batch)
            worker.update(batch.replace(old_logprobs=old), LOSS, 4, 1, None)
            if i > 0:  # the first round is the warm-up
                times[p].append(time.perf_counter() - start)
    fp32, mixed = (statistics.median(times[p]) for p in PRECISIONS)
    return {"size": size, "fp32_median_s": fp32, "bf16_mixed_median_s": mixed, "speedup": fp32 / mixed, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["5m", "20m"])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for size in args.sizes:
        results.append(bench(size, args.repeats))
        r = results[-1]
        print(
            f"{size}: fp32 {r['fp32_median_s']:.3f} s, bf16-mixed {r['bf16_mixed_median_s']:.3f} s: {r['speedup']:.2f}x"
        )
    write_record("bench_precision.py", results, args.out)


if __name__ == "__main__":
    main()
