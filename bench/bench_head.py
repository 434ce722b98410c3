"""The log-prob head of an update: `algo.head_token_logprobs` (the head's matmul, log-probs and entropy chunk by
chunk from the final hidden states, nothing of [tokens, vocab] kept) against the previous path, the whole logits
`h·Wᵀ` then `token_logprobs` + `entropy_from_logits` on them (which keep those float32 logits for the backward).

Both get the same float32 hidden states and head weight; each timed call is forward → log-prob sum → backward
(gradients of h and W), as the update uses them (the entropy computed for the metric, no entropy bonus). Shapes:
the tiny model's char vocabulary (104) at 2,048 tokens, hidden 128, and SmolLM2-135M's (49,152, hidden 576) at
16 x 128 tokens. One thread, interleaved (ABBA), medians of `--repeats`; memory from
`dapo.metrics.measure_activation_memory` (kept for the backward, and the peak over forward and backward).

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_head.py     # ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _record import write_record

from dapo import algo
from dapo.metrics import measure_activation_memory

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((2048, 128, 104), (2048, 576, 49152))  # tokens, hidden, vocab


def fused(hidden, weight, ids):
    logprobs, _entropy = algo.head_token_logprobs(hidden, weight, None, ids, with_entropy=True)
    return logprobs.sum()


def whole_logits(hidden, weight, ids):
    logits = torch.nn.functional.linear(hidden, weight)[None]
    with torch.no_grad():
        algo.entropy_from_logits(logits.detach())  # the metric, as the update computed it
    return algo.token_logprobs(logits, ids[None]).sum()


def bench(tokens: int, hidden_size: int, vocab: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=g).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.05).requires_grad_()
    ids = torch.randint(0, vocab, (tokens,), generator=g)
    paths = {"fused": fused, "whole_logits": whole_logits}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(repeats + 1):
        for name in paths if i % 2 == 0 else list(paths)[::-1]:
            hidden.grad = weight.grad = None
            start = time.perf_counter()
            paths[name](hidden, weight, ids).backward()
            if i > 0:
                times[name].append(time.perf_counter() - start)
    memory = {}
    for name, fn in paths.items():
        kept, peak = measure_activation_memory([hidden, weight], lambda fn=fn: fn(hidden, weight, ids))
        memory[name] = {"kept_mb": kept / 1e6, "peak_mb": peak / 1e6}
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "tokens": tokens, "hidden": hidden_size, "vocab": vocab, "median_s": medians,
        "time_ratio_fused_over_whole": medians["fused"] / medians["whole_logits"], "memory": memory,
        "logits_mb": tokens * vocab * 4 / 1e6, "times": times,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "head.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for shape in SHAPES:
        r = bench(*shape, args.repeats)
        results.append(r)
        m = r["memory"]
        print(
            f"{r['tokens']} tokens x vocab {r['vocab']:,}: fused {r['median_s']['fused'] * 1e3:.1f} ms, whole logits "
            f"{r['median_s']['whole_logits'] * 1e3:.1f} ms ({r['time_ratio_fused_over_whole']:.2f}x); kept "
            f"{m['fused']['kept_mb']:.1f} against {m['whole_logits']['kept_mb']:.1f} MB, "
            f"peak {m['fused']['peak_mb']:.1f} "
            f"against {m['whole_logits']['peak_mb']:.1f} MB (the logits: {r['logits_mb']:.1f} MB)"
        )
    write_record("bench_head.py", results, args.out)


if __name__ == "__main__":
    main()
