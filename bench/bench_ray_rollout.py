"""Generation on 1 vs 2 Ray rollout workers against the built-in engine in this process, and the cost of a
weight push through the object store against a torch.distributed (gloo) broadcast.

Generation: 32 prompts × 8 responses, up to 32 new tokens, waves of 64 rows. The waves and seeds are the
same everywhere, so every configuration samples the same tokens (the same work; tokens/s counts the generated
ones). The random-init 5M model. Configurations kept alive together and interleaved, medians of `--repeats`:
the local engine at 1 and 2 threads, and `RayRolloutEngine` with 1 and 2 split workers (one CPU, one thread
each).

Weight push of the model's state dict (`--push-sizes`): from one actor to 2 others, (a) through the object store
(the sender puts once, both receivers get and load) and (b) by `torch.distributed.broadcast` over a gloo
group of the 3 actors (one flat float32 buffer). Timed from the sender's start to the last receiver's end.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_ray_rollout.py     # ~3 min
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from datetime import timedelta
from pathlib import Path

import torch

from dapo.cluster import connect, import_ray
from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.rollout import SamplingParams, build_engine
from dapo.rollout.ray_engine import RayRolloutEngine, RolloutSettings

ROOT = Path(__file__).resolve().parents[1]


class LocalEngine:
    def __init__(self, model, tok, threads: int, rows: int):
        self.engine, self.threads = build_engine("builtin", copy.deepcopy(model), tok, max_rows_in_flight=rows), threads

    def generate(self, *args):
        torch.set_num_threads(self.threads)
        return self.engine.generate(*args)


class Peer:
    """One end of the weight-push comparison (a Ray actor)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def address(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def join(self, port: int):
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=self.rank, world_size=self.world,
            timeout=timedelta(seconds=60),
        )  # fmt: skip

    def make(self, state: dict):
        self.state = {k: v.clone() for k, v in state.items()}

    def put(self):
        import ray

        return ray.put(self.state)

    def load(self, state: dict) -> int:
        for k, v in state.items():
            self.state[k].copy_(v)
        return len(state)

    def broadcast(self) -> float:
        import torch.distributed as dist

        flat = torch.cat([v.reshape(-1) for v in self.state.values()]) if self.rank == 0 else torch.empty(
            sum(v.numel() for v in self.state.values())
        )  # fmt: skip
        dist.broadcast(flat, src=0)
        if self.rank:
            offset = 0
            for v in self.state.values():
                v.copy_(flat[offset : offset + v.numel()].view_as(v))
                offset += v.numel()
        return time.perf_counter()


def bench_generation(model, tok, repeats: int) -> list[dict]:
    prompts = [tok(f"{a}*{b}+{a}=")["input_ids"] for a in range(8) for b in range(4)]
    sampling = SamplingParams(max_new_tokens=32, temperature=1.0)
    configs = {
        "local, 1 thread": LocalEngine(model, tok, 1, 64),
        "local, 2 threads": LocalEngine(model, tok, 2, 64),
        "ray, 1 worker": RayRolloutEngine(RolloutSettings(1, 1.0, 0.0, 0, 64), copy.deepcopy(model), tok),
        "ray, 2 workers": RayRolloutEngine(RolloutSettings(2, 1.0, 0.0, 0, 64), copy.deepcopy(model), tok),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for engine in configs.values():
        engine.generate(prompts, 8, sampling, 0)  # warm-up
    for r in range(repeats):
        for name, engine in configs.items():
            start = time.perf_counter()
            engine.generate(prompts, 8, sampling, r)
            times[name].append(time.perf_counter() - start)
    tokens = int(configs["local, 1 thread"].generate(prompts, 8, sampling, 0).response_lengths.sum())
    base = statistics.median(times["local, 1 thread"])
    rows = []
    for name, t in times.items():
        median = statistics.median(t)
        rows.append({"config": name, "median_s": median, "tokens_per_s": tokens / median, "speedup": base / median})
    for engine in configs.values():
        if isinstance(engine, RayRolloutEngine):
            engine.close()
    return rows


def bench_push(size: str, repeats: int) -> dict:
    ray = import_ray()
    state = build_tiny_model(build_char_tokenizer(), size, seed=0).state_dict()
    megabytes = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    peer = ray.remote(num_cpus=0)(Peer)
    peers = [peer.remote(i, 3) for i in range(3)]
    port = ray.get(peers[0].address.remote())
    ray.get([p.join.remote(port) for p in peers])
    ray.get([p.make.remote(state) for p in peers])
    store, collective = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        ref = ray.get(peers[0].put.remote())  # the ref of the sender's put (the object stays in its store)
        ray.get([p.load.remote(ref) for p in peers[1:]])
        store.append(time.perf_counter() - start)
        start = time.perf_counter()
        ray.get([p.broadcast.remote() for p in peers])
        collective.append(time.perf_counter() - start)
    for p in peers:
        ray.kill(p)
    return {
        "size": size, "megabytes": megabytes, "receivers": 2,
        "object_store_s": statistics.median(store[1:]), "gloo_broadcast_s": statistics.median(collective[1:]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="5m", choices=["1m", "5m", "20m"])
    parser.add_argument("--push-sizes", nargs="+", default=["5m", "20m"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray-rollout.json"))
    args = parser.parse_args()
    connect("", 6)
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, args.size, seed=0)
    generation = bench_generation(model, tok, args.repeats)
    for row in generation:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    pushes = [bench_push(size, args.repeats) for size in args.push_sizes]
    for row in pushes:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    out = {
        "machine": platform.processor() or platform.machine(), "model": args.size, "repeats": args.repeats,
        "generation": generation, "weight_push": pushes,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
