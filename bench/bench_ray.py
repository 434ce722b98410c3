"""The training side of an RL step on Ray ranks against one process: what the ranks cost and what Ray adds.

Workload: the trainer benchmark's batch (8 prompts × 8 responses, prompts ~20 tokens, responses up to 64) on a
random-init tiny model. A "step" is the worker calls of one DAPO step that recomputes π_old: old log-probs, the
policy update (1 mini-batch, 1 epoch), and the weights back to the rollout engine. Configurations, kept alive
together and interleaved, medians of `--repeats`:

- local, 1 thread and 2 threads: `PolicyWorker` in this process (the baseline);
- Ray, 1 rank; Ray, 2 ranks DDP; Ray, 2 ranks FSDP2: the same calls through `RayPolicyWorkers`, each rank one
  CPU and one thread.

Ray's own overhead is measured beside them: a no-op call on every rank, putting the batch into the object
store, and gathering the weights to the driver.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_ray.py     # ~2 min
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dapo import algo
from dapo.cluster import connect
from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.workers.base import OptimParams, PolicyLossParams, PolicySettings
from dapo.workers.batch import TrainBatch
from dapo.workers.policy import PolicyWorker
from dapo.workers.ray_group import RayPolicyWorkers, RaySettings, RayTrainGroup

ROOT = Path(__file__).resolve().parents[1]
OPTIM = OptimParams(1e-4, (0.9, 0.999), 0.0, 1.0, 0, "constant", 100, 0.0)
LOSS = PolicyLossParams(0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0)
OPTIONS = PolicySettings(OPTIM, micro_batch_max_tokens=4096, share_prompt_forward=True)


def workload(vocab: int, prompts: int = 8, group: int = 8, seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    tp, t = 24, 64
    rows = prompts * group
    prompt_len = torch.randint(16, tp + 1, (prompts,), generator=g).repeat_interleave(group)
    response_len = torch.randint(8, t + 1, (rows,), generator=g)
    ids = torch.randint(3, vocab, (rows, tp + t), generator=g)
    ids[:, :tp] = ids[::group, :tp].repeat_interleave(group, dim=0)
    cols = torch.arange(tp + t)
    in_prompt = (cols < tp) & (cols >= tp - prompt_len[:, None])
    attention = in_prompt | ((cols >= tp) & (cols < tp + response_len[:, None]))
    response_mask = attention[:, tp:].float()
    rewards = torch.randint(0, 2, (prompts, group), generator=g).float()
    adv = algo.broadcast_to_tokens(algo.grpo_advantages(rewards).reshape(-1), response_mask)
    old = torch.randn(response_mask.shape, generator=g) * 0.1 - 2
    return TrainBatch(
        torch.where(attention, ids, 0), attention, response_mask, tp,
        torch.arange(prompts).repeat_interleave(group), advantages=adv, old_logprobs=old,
    )  # fmt: skip


def timed_step(policy, batch) -> dict[str, float]:
    """Seconds of each worker call of the step, for any `PolicyWorkers` (the local one or the Ray ranks)."""
    calls = {
        "old_log_prob": lambda: policy.compute_logprobs(batch),
        "update_actor": lambda: policy.update(batch, LOSS, 8, 1, None),
        "update_weights": policy.full_weights,
    }
    times = {}
    for phase, call in calls.items():
        start = time.perf_counter()
        call()
        times[phase] = time.perf_counter() - start
    return times


class Local:
    def __init__(self, model, threads: int):
        self.worker, self.threads = PolicyWorker(copy.deepcopy(model), OPTIONS), threads

    def step(self, batch) -> dict[str, float]:
        torch.set_num_threads(self.threads)
        return timed_step(self.worker, batch)


class OnRay:
    def __init__(self, model, ranks: int, strategy: str):
        settings = RaySettings("", ranks, 1.0, 0.0, strategy, 120.0, 120.0)
        self.group = RayTrainGroup(settings, copy.deepcopy(model), OPTIONS, None, say=lambda _: None)
        self.policy = RayPolicyWorkers(self.group, copy.deepcopy(model), "fp32", has_reference=False)

    def step(self, batch) -> dict[str, float]:
        return timed_step(self.policy, batch)

    def overhead(self, batch) -> dict[str, float]:
        start = time.perf_counter()
        self.group.run("policy", "num_parameters")
        noop = time.perf_counter() - start
        start = time.perf_counter()
        self.group.put(batch)
        put = time.perf_counter() - start
        return {"noop_call": noop, "put_batch": put}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="5m", choices=["1m", "5m", "20m"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_tiny_model(build_char_tokenizer(), args.size, seed=0)
    batch = workload(model.config.vocab_size)
    start = time.perf_counter()
    connect("", 6)
    cluster_start = time.perf_counter() - start
    configs = {"local, 1 thread": Local(model, 1), "local, 2 threads": Local(model, 2)}
    group_start = {}
    for name, ranks, strategy in (("ray, 1 rank", 1, "ddp"), ("ray, 2 ranks, ddp", 2, "ddp"),
                                  ("ray, 2 ranks, fsdp2", 2, "fsdp2")):  # fmt: skip
        start = time.perf_counter()
        configs[name] = OnRay(model, ranks, strategy)
        group_start[name] = time.perf_counter() - start
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    overhead: dict[str, list[dict]] = {name: [] for name in configs if name.startswith("ray")}
    for config in configs.values():  # warm-up: lazy init, first FSDP2 all-gather, caches
        config.step(batch)
    for _ in range(args.repeats):
        for name, config in configs.items():
            samples[name].append(config.step(batch))
            if name in overhead:
                overhead[name].append(config.overhead(batch))
    results = []
    baseline = None
    for name, runs in samples.items():
        row = {"config": name}
        for phase in runs[0]:
            row[phase] = statistics.median(r[phase] for r in runs)
        row["step"] = statistics.median(sum(r.values()) for r in runs)
        if name in overhead:
            for key in overhead[name][0]:
                row[key] = statistics.median(o[key] for o in overhead[name])
            row["start_s"] = group_start[name]
        baseline = baseline or row["step"]
        row["step_vs_local_1_thread"] = row["step"] / baseline
        results.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    for config in configs.values():
        if isinstance(config, OnRay):
            config.group.close()
    out = {
        "machine": platform.processor() or platform.machine(),
        "model": args.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rows": batch.num_rows,
        "tokens": int(batch.attention_mask.sum()),
        "repeats": args.repeats,
        "cluster_start_s": cluster_start,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"cluster start {cluster_start:.1f} s; written to {args.out}")


if __name__ == "__main__":
    main()
