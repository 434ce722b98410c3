"""Activation checkpointing (`actor.activation_checkpointing`) against keeping every block's activations: the
policy worker's log-prob pass and update, and the memory its update's forward keeps and peaks at.

Workload (`bench_forward.py`'s): 8 prompts x 8 responses of 15-64 tokens after 21-token prompts, a random-init
tiny Llama, GRPO advantages of random 0/1 rewards, two optimiser steps (mini-batches of 4 groups), one thread,
the shared-prefix forward in float32. The two settings alternate (ABBA) after a warm-up call, each with its own
copy of the same model; medians of `--repeats` calls. The baseline is the update without checkpointing, in the
same run. Memory: `dapo.metrics.measure_activation_memory` on one micro-batch of the whole batch (profiler
allocation events; parameter gradients excluded), against the plan's `activation_bytes` + `head_bytes`.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_checkpointing.py      # ~2 min
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

from dapo.metrics import measure_activation_memory
from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.plan import activation_bytes, head_bytes
from dapo.workers.base import OptimParams, PolicyLossParams, PolicySettings
from dapo.workers.batch import forward_tokens
from dapo.workers.policy import PolicyWorker

ROOT = Path(__file__).resolve().parents[1]
LOSS = PolicyLossParams(0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0)
OPTIM = OptimParams(1e-5, (0.9, 0.999), 0.0, 1.0, 0, "constant", 10, 0.0)
SETTINGS = ("kept", "checkpointed")


def _memory(worker: PolicyWorker, batch) -> tuple[float, float]:
    def run():
        logprobs, _entropy = worker.forward.logprobs(batch)  # as the update computes them
        return (logprobs * batch.response_mask).sum()

    worker.model.train()
    try:
        return measure_activation_memory(worker.model.parameters(), run)
    finally:
        worker.model.eval()


def bench(size: str, repeats: int) -> dict:
    model = build_tiny_model(build_char_tokenizer(), size, arch="llama")
    c = model.config
    batch = update_batch(c.vocab_size)
    workers = {
        name: PolicyWorker(
            copy.deepcopy(model),
            PolicySettings(OPTIM, micro_batch_max_tokens=4096, activation_checkpointing=name == "checkpointed"),
        )
        for name in SETTINGS
    }
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for i in range(repeats + 1):
        order = SETTINGS if i % 2 == 0 else SETTINGS[::-1]  # ABBA
        for name in order:
            worker = workers[name]
            start = time.perf_counter()
            old = worker.compute_logprobs(batch)
            worker.update(batch.replace(old_logprobs=old), LOSS, 4, 1, None)
            if i > 0:  # the first round is the warm-up
                times[name].append(time.perf_counter() - start)
    tokens = forward_tokens(batch, torch.arange(batch.num_rows), True)
    memory = {}
    for name, worker in workers.items():
        kept, peak = _memory(worker, batch)
        body = activation_bytes(
            tokens, c.num_hidden_layers, c.hidden_size, c.intermediate_size, 4, name == "checkpointed"
        )
        head = head_bytes(batch.response_mask.numel(), c.vocab_size, c.hidden_size)
        memory[name] = {
            "kept_mb": kept / 1e6,
            "peak_mb": peak / 1e6,
            "planned_kept_mb": (body[0] + head[0]) / 1e6,
            "planned_peak_mb": (sum(body) + sum(head)) / 1e6,
        }
    kept_s, ckpt_s = (statistics.median(times[name]) for name in SETTINGS)
    return {
        "size": size,
        "tokens_a_pass": tokens,
        "kept_median_s": kept_s,
        "checkpointed_median_s": ckpt_s,
        "time_ratio": ckpt_s / kept_s,
        "memory": memory,
        "kept_bytes_factor": memory["kept"]["kept_mb"] / memory["checkpointed"]["kept_mb"],
        "peak_bytes_factor": memory["kept"]["peak_mb"] / memory["checkpointed"]["peak_mb"],
        "times": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["5m", "20m"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "activation-checkpointing.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for size in args.sizes:
        results.append(bench(size, args.repeats))
        r, m = results[-1], results[-1]["memory"]
        print(
            f"{size}: log-prob pass + update {r['kept_median_s']:.3f} s -> {r['checkpointed_median_s']:.3f} s "
            f"checkpointed ({r['time_ratio']:.2f}x); kept for the backward {m['kept']['kept_mb']:.1f} -> "
            f"{m['checkpointed']['kept_mb']:.1f} MB ({r['kept_bytes_factor']:.1f}x less), peak "
            f"{m['kept']['peak_mb']:.1f} -> {m['checkpointed']['peak_mb']:.1f} MB (plan: "
            f"{m['kept']['planned_peak_mb']:.1f} -> {m['checkpointed']['planned_peak_mb']:.1f} MB)"
        )
    write_record("bench_checkpointing.py", results, args.out)


if __name__ == "__main__":
    main()
