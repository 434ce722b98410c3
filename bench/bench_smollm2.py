"""Where the time of a SmolLM2-135M-Instruct RL step goes, at the batch of `recipes/smollm2-cpu.yaml`, against
the machine's matmul peaks measured in the same run.

A `Trainer` on the recipe (no evaluation, no checkpoint, 2 threads) runs `--steps` steps; the last is run under
the torch profiler. Reported per phase (the trainer's own timers: generation, the update): seconds, and FLOP/s
against the fp32 and bf16 matmul peaks of 2 threads. Over the profiled step the profiler's self time is grouped
by operator kind: matmuls of the model body, the output head (its matmuls are the ones with the 49,152-wide
vocabulary), attention, log-softmax / entropy over the vocabulary, element-wise and copies. The FLOPs are
counted as 2·N per generated token (N with the head, prefill not counted) and 6·N per trained token (the
shared-prefix forward computes each prompt once per group), with the head's share given apart.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_smollm2.py           # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-cpu.yaml"
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUIET = [
    "trainer.test_freq=0", "trainer.val_before_train=false", "trainer.save_freq=0", "trainer.tensorboard=false",
    "trainer.progress=false", "trainer.resume=disable", "trainer.num_threads=2",
]  # fmt: skip


def op_kind(name: str, shapes: list) -> str | None:
    """The group an operator's self time counts in (None: not counted, e.g. a wrapper with no self time)."""
    flat = str(shapes)
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"):
        return "output head matmuls" if "49152" in flat else "body matmuls"
    if "attention" in name or "sdpa" in name or "flash" in name:
        return "attention"
    if any(k in name for k in ("log_softmax", "softmax", "logsumexp", "_Entropy", "exp", "log")):
        return "log-softmax / entropy"
    if any(k in name for k in ("copy", "cat", "index", "gather", "scatter", "clone", "contiguous", "to", "empty")):
        return "copies, gathers, casts"
    return "element-wise and other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "smollm2-step.json"))
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from dapo.config import load_config
    from dapo.metrics import measure_matmul_peak
    from dapo.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("cpu_dapo", RECIPE, [*QUIET, f"trainer.output_dir={tmp}", "trainer.run_name=bench"])
        trainer = Trainer(config, log_to_console=False)
        params = trainer.num_params
        try:
            for step in range(1, args.steps):
                trainer.train_step(step)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                metrics = trainer.train_step(args.steps)
        finally:
            trainer.close()
    peaks = {name: measure_matmul_peak(2, 2048, dtype=dtype) for name, dtype in PEAK_DTYPES.items()}
    head = 576 * 49_152  # SmolLM2's (tied) output head
    by_kind: dict[str, float] = defaultdict(float)
    update_total = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        kind = op_kind(event.key, event.input_shapes)
        if kind is not None:
            by_kind[kind] += event.self_cpu_time_total / 1e6
            update_total += event.self_cpu_time_total / 1e6
    gen_s, update_s = metrics["timing_s/gen"], metrics["timing_s/update_actor"]
    trained_tokens = metrics["perf/total_num_tokens"]
    generated = (
        metrics["response_length/mean"]
        * config.data.gen_batch_size
        * config.rollout.group_size
        * metrics["train/num_gen_batches"]
    )
    result = {
        "benchmark": "bench_smollm2.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "peaks_gflops_2_threads": {k: v / 1e9 for k, v in peaks.items()},
        "step_s": metrics["timing_s/step"],
        "generation": {
            "seconds": gen_s, "generated_tokens": generated, "tokens_per_s": generated / gen_s,
            "gflops": 2 * params * generated / gen_s / 1e9,
        },
        "update": {
            "seconds": update_s, "mfu_actor_reported": metrics.get("perf/mfu/actor"),
            "head_share_of_flops": head / params,
        },
        "profiled_self_seconds_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "profiled_self_seconds_total": update_total,
        "trained_tokens_reported": trained_tokens,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("timing_s/", "perf/"))},
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("peaks_gflops_2_threads", "step_s", "generation", "update")}, indent=1))
    for kind, seconds in result["profiled_self_seconds_by_kind"].items():
        print(f"  {kind:26s} {seconds:6.2f} s  ({seconds / update_total:.0%} of the profiled step)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
