"""The large-model mechanisms one by one: the policy update's time and memory with each on and off, in one
process and on 2 Ray ranks (issue 23: what each costs where it can run, here on CPU ranks with gloo).

Configurations (each compared with the 1-process update, in the same run):

    1 process                     the baseline: one process, one thread, every block's activations kept
    1 process + checkpointing     actor.activation_checkpointing
    2 ranks ddp                   ray.strategy=ddp (each rank the whole state, half the groups)
    2 ranks fsdp2                 one FSDP2 unit a decoder block and the root
    ... + checkpointing           and each block recomputed in the backward
    ... + sequence parallel 2     ray.sequence_parallel=2: both ranks on every row, half the tokens each
    ... + offload optimizer       ray.offload=optimizer: the moments moved out and back around the update
    ... + offload all             ray.offload=all: FSDP2's CPUOffloadPolicy

Workload: `bench_forward.py`'s batch (8 prompts x 8 responses of 15-64 tokens), GRPO advantages of random 0/1
rewards, one update of two optimiser steps (mini-batches of 4 groups), the shared-prefix forward in float32,
one thread a process. All configurations are built first and then called in turn, forward then reverse order
(ABBA), after a warm-up; medians of `--repeats`. Memory, per rank (the largest over ranks): the bytes the
process holds at rest (its parameters, or their shards, and its optimiser state); the bytes one forward of the
rank's first micro-batch keeps for its backward (saved-tensor hooks, distinct storages: activations and the
gathered weights the backward needs); and the peak of the bytes allocated during one update above the rest
(the profiler's allocation events: activations, gathered units, gradients, communication buffers, counted as
the main thread sees them). On CPU ranks host memory is the device's, so offload moves bytes without saving any;
a GPU is needed to show what it lends a colocated engine. Sequence parallelism and data parallelism both halve a
rank's tokens here; what SP adds is that the ranks share one micro-batch, so a sequence longer than a rank can
hold still trains (compare "1 process" with "sequence parallel 2": the same micro-batch, half of it a rank).

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_mechanisms.py      # ~6 min
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
from dapo.workers.batch import epochs_of_mini_batches, forward_tokens
from dapo.workers.forward import passes
from dapo.workers.policy import PolicyWorker

ROOT = Path(__file__).resolve().parents[1]
LOSS = PolicyLossParams(0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0)
OPTIM = OptimParams(1e-5, (0.9, 0.999), 0.0, 1.0, 0, "constant", 10, 0.0)
CONFIGS = {  # name: (ranks, strategy, checkpointing, sequence_parallel, offload)
    "1 process": (1, None, False, 1, "none"),
    "1 process + checkpointing": (1, None, True, 1, "none"),
    "2 ranks ddp": (2, "ddp", False, 1, "none"),
    "2 ranks fsdp2": (2, "fsdp2", False, 1, "none"),
    "2 ranks fsdp2 + checkpointing": (2, "fsdp2", True, 1, "none"),
    "2 ranks fsdp2 + sequence parallel 2": (2, "fsdp2", False, 2, "none"),
    "2 ranks fsdp2 + offload optimizer": (2, "fsdp2", False, 1, "optimizer"),
    "2 ranks fsdp2 + offload all": (2, "fsdp2", False, 1, "all"),
}


def _update_memory(policy: PolicyWorker, batch) -> tuple[int, int, int]:
    """(bytes held at rest, bytes one forward of this rank's first micro-batch keeps for its backward, peak bytes
    allocated during one update above the rest) in this process."""
    from torch.profiler import ProfilerActivity, profile

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    at_rest = sum(local(p).numel() * p.element_size() for p in policy.trainable.parameters())
    at_rest += sum(
        local(v).numel() * v.element_size()
        for state in policy.optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        policy.update(batch, LOSS, 4, 1, None)
    live, peak = 0, 0
    for event in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return at_rest, _kept_for_backward(policy, batch), peak


def _kept_for_backward(policy: PolicyWorker, batch) -> int:
    """Bytes of the distinct storages the policy's forward of this rank's first micro-batch saves for its backward
    (saved-tensor hooks): activations, and the gathered weights FSDP2 keeps for the backward. Every rank runs it
    together (the pass may hold collectives); the gradients are dropped after."""
    rows = next(iter(epochs_of_mini_batches(batch, 4, 1, None)))
    micro, _ = passes(policy.dp, policy.forward, batch, rows, 4096)[0]
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    policy.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs, _ = policy.trainable(batch.select(micro))
    logprobs.sum().backward()
    policy.optimizer.zero_grad(set_to_none=True)
    policy.model.eval()
    return sum(storages.values())


class OneProcess:
    def __init__(self, model, settings: PolicySettings):
        self.worker = PolicyWorker(copy.deepcopy(model), settings)

    def update(self, batch) -> None:
        self.worker.update(batch, LOSS, 4, 1, None)

    def memory(self, batch) -> tuple[int, int, int]:
        return _update_memory(self.worker, batch)

    def close(self) -> None:
        pass


class TwoRanks:
    def __init__(self, model, settings: PolicySettings, strategy: str, sequence_parallel: int, offload: str):
        from dapo.workers.ray_group import RaySettings, RayTrainGroup

        ray_settings = RaySettings(
            "", 2, 1.0, 0.0, strategy, 120.0, 120.0, sequence_parallel=sequence_parallel, offload=offload
        )
        self.group = RayTrainGroup(ray_settings, copy.deepcopy(model), settings, None, say=lambda _: None)

    def update(self, batch) -> None:
        self.group.run("policy", "update", batch, LOSS, 4, 1, None, reply=False)

    def memory(self, batch) -> tuple[int, int, int]:
        def measure(rank, batch):  # on a rank (defined here: shipped by value)
            return _update_memory(rank.workers["policy"], batch)

        per_rank = self.group.wait([r.__ray_call__.remote(measure, batch) for r in self.group.ranks], "memory")
        return tuple(max(m[i] for m in per_rank) for i in range(3))

    def close(self) -> None:
        self.group.close()


def bench(size: str, repeats: int) -> dict:
    model = build_tiny_model(build_char_tokenizer(), size, arch="llama")
    batch = update_batch(model.config.vocab_size)
    runners = {}
    for name, (ranks, strategy, checkpointing, sequence_parallel, offload) in CONFIGS.items():
        settings = PolicySettings(OPTIM, micro_batch_max_tokens=4096, activation_checkpointing=checkpointing)
        if ranks == 1:
            runners[name] = OneProcess(model, settings)
        else:
            runners[name] = TwoRanks(model, settings, strategy, sequence_parallel, offload)
    try:
        old = runners["1 process"].worker.compute_logprobs(batch)
        batch = batch.replace(old_logprobs=old)  # two optimiser steps: not on-policy, π_old given
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for i in range(repeats + 1):
            order = list(CONFIGS) if i % 2 == 0 else list(CONFIGS)[::-1]  # ABBA
            for name in order:
                start = time.perf_counter()
                runners[name].update(batch)
                if i > 0:  # the first round is the warm-up
                    times[name].append(time.perf_counter() - start)
        memory = {name: runner.memory(batch) for name, runner in runners.items()}
    finally:
        for runner in runners.values():
            runner.close()
    base = statistics.median(times["1 process"])
    rows = []
    for name in CONFIGS:
        median = statistics.median(times[name])
        at_rest, kept, peak = memory[name]
        rows.append(
            {
                "config": name,
                "median_s": median,
                "vs_one_process": median / base,
                "at_rest_mb": at_rest / 1e6,
                "kept_for_backward_mb": kept / 1e6,
                "update_peak_mb": peak / 1e6,
                "times": times[name],
            }
        )
    return {"size": size, "tokens_a_pass": forward_tokens(batch, torch.arange(batch.num_rows), True), "configs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["5m", "20m"])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mechanisms.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from dapo.cluster import connect

    connect("", 2 * (len(CONFIGS) - 2))  # every 2-rank configuration's group alive at once (logical CPUs)
    results = []
    for size in args.sizes:
        results.append(bench(size, args.repeats))
        print(f"\n{size} ({results[-1]['tokens_a_pass']} tokens a pass):")
        print(f"  {'config':38s} {'median s':>9s} {'x 1 proc':>9s} {'at rest MB':>11s} {'kept MB':>8s} {'peak MB':>8s}")
        for row in results[-1]["configs"]:
            print(
                f"  {row['config']:38s} {row['median_s']:9.3f} {row['vs_one_process']:9.2f} "
                f"{row['at_rest_mb']:11.1f} {row['kept_for_backward_mb']:8.1f} {row['update_peak_mb']:8.1f}"
            )
    write_record("bench_mechanisms.py", results, args.out)


if __name__ == "__main__":
    main()
