"""Token log-probs and entropy from logits (forward + backward): ours against PyTorch's log-softmax path.

Ours: `dapo.algo.token_logprobs` and `entropy_from_logits` (max-shifted logits, per-chunk autograd functions
that keep nothing of (chunk, V) size between forward and backward). Baseline: the plain form most trainers use,
`log_softmax(z).gather(ids)` and `−(softmax(z) · log_softmax(z)).sum()` under autograd. Both see the same
float32 logits; each timed call is forward → sum → backward. Shapes: the tiny model's char vocabulary (80) at
the trainer benchmark's batch, and SmolLM2's 49,152-token vocabulary at 16 × 128 positions. One thread,
interleaved, medians of `--repeats`; also the worst error of each against a float64 reference.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_logits.py     # ~1 min
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dapo.algo import entropy_from_logits, token_logprobs

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((64, 24, 80), (64, 64, 80), (16, 128, 49152))


def plain_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def plain_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def _timed(fn, logits: torch.Tensor) -> float:
    z = logits.detach().clone().requires_grad_()
    start = time.perf_counter()
    fn(z).sum().backward()
    return time.perf_counter() - start


def bench(shape: tuple[int, int, int], repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g) * 3
    ids = torch.randint(0, shape[-1], shape[:-1], generator=g)
    cases = {
        "logprobs": (lambda z: token_logprobs(z, ids), lambda z: plain_logprobs(z, ids)),
        "logprobs+entropy": (
            lambda z: token_logprobs(z, ids) + entropy_from_logits(z),
            lambda z: plain_logprobs(z, ids) + plain_entropy(z),
        ),
    }
    reference = (plain_logprobs(logits.double(), ids), plain_entropy(logits.double()))
    out = {"shape": list(shape)}
    for name, (ours, baseline) in cases.items():
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        for i in range(repeats + 1):
            for label, fn in (("ours", ours), ("baseline", baseline)):
                elapsed = _timed(fn, logits)
                if i > 0:  # the first round is the warm-up
                    times[label].append(elapsed)
        mine, theirs = statistics.median(times["ours"]), statistics.median(times["baseline"])
        out[name] = {"ours_median_s": mine, "baseline_median_s": theirs, "speedup": theirs / mine, "times": times}
    with torch.no_grad():
        out["max_abs_error_vs_float64"] = {
            "ours_logprobs": float((token_logprobs(logits, ids).double() - reference[0]).abs().max()),
            "baseline_logprobs": float((plain_logprobs(logits, ids).double() - reference[0]).abs().max()),
            "ours_entropy": float((entropy_from_logits(logits).double() - reference[1]).abs().max()),
            "baseline_entropy": float((plain_entropy(logits).double() - reference[1]).abs().max()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [bench(shape, args.repeats) for shape in SHAPES]
    print("| B × T × V | pass | ours s | log-softmax s | speed-up |")
    print("|---|---|---|---|---|")
    for r in results:
        for name in ("logprobs", "logprobs+entropy"):
            case = r[name]
            print(
                f"| {' × '.join(map(str, r['shape']))} | {name} | {case['ours_median_s']:.4f} | "
                f"{case['baseline_median_s']:.4f} | {case['speedup']:.2f}x |"
            )
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": 1}
    args.out.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "results": results}, indent=1))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
