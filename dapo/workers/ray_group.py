"""The policy, reference and critic on data-parallel ranks of a Ray cluster (trainer.backend=ray).

One worker group: N Ray actors (`TrainRank`), one placement-group bundle each, forming one torch.distributed
process group (gloo on CPU, NCCL on GPU). Every rank runs the very workers of `dapo.workers.policy` and `.critic` with a
`TorchDistributed` data-parallel strategy (DDP or FSDP2): the math is written once. The driver trains no
model; it keeps the rollout engine's copy (or, with rollout workers, the template they were built from).

The driver puts a batch into the object store once; every rank reads the whole batch, computes its own whole
groups and joins the collectives. The row weights of the loss come from the whole mini-batch, so N ranks give
the single-process update up to float rounding. Checkpoints hold the single-process form (unsharded weights,
the optimiser's parameters numbered), so a run saved on N ranks resumes on M, or in one process.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dapo.cluster import ClusterError, connect, dead_actors, get_all, import_ray, in_bundle, release, reserve_bundles
from dapo.models.loading import save_pretrained_pair
from dapo.rollout.base import RolloutEngine, engine_logprobs_are_sampling_logprobs
from dapo.rollout.weight_sync import DEFAULT_BUCKET_MB, PackedBucket, SyncMeter, put_buckets
from dapo.workers.base import CriticSettings, PolicyLossParams, PolicySettings, PolicyUpdate
from dapo.workers.batch import TrainBatch


@dataclass(frozen=True)
class RaySettings:
    """The `ray` config section, as the worker group needs it."""

    address: str
    train_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    strategy: str
    collective_timeout_s: float
    startup_timeout_s: float
    bf16_compute: bool = False  # FSDP2's MixedPrecisionPolicy instead of autocast
    sequence_parallel: int = 1  # Ulysses: ranks a micro-batch's packed tokens are split over
    offload: str = "none"  # none | optimizer (between updates) | all (FSDP2's CPUOffloadPolicy)
    reserve_cpus: float = 0.0  # for a cluster started here: CPUs beyond the ranks' (split rollout workers)


def process_group_backend(use_gpu: bool) -> str:
    """NCCL for CUDA tensors and gloo for CPU ones on GPUs: the metric sums, the micro-batch counts and the
    offloaded FSDP2 shards are CPU tensors, which an NCCL-only group refuses. Gloo alone on CPUs."""
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"


class TrainRank:
    """One data-parallel rank (a Ray actor): its part of the process group and its local workers."""

    def __init__(self, rank: int, world_size: int, num_threads: int):
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(max(1, num_threads))
        self.workers: dict[str, Any] = {}

    def address(self) -> tuple[str, int, str]:
        """(IP to reach this rank at, a free port there, node id): rank 0 hosts the rendezvous."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        return ip, port, ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def join(self, host: str, port: int, timeout_s: float, use_gpu: bool) -> None:
        import torch.distributed as dist

        dist.init_process_group(
            process_group_backend(use_gpu),
            init_method=f"tcp://{host}:{port}",
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=timeout_s),
        )

    def build(
        self, model: nn.Module, policy: PolicySettings, critic: CriticSettings | None, settings: RaySettings
    ) -> str | None:
        """The workers over this rank's process group; why the shared-prefix forward is not used (None if it is)."""
        from dapo.workers.critic import CriticWorker
        from dapo.workers.parallel import TorchDistributed
        from dapo.workers.policy import PolicyWorker

        if settings.gpus_per_worker > 0:
            model = model.to("cuda")
        dp = TorchDistributed(
            settings.strategy,
            settings.bf16_compute,
            settings.sequence_parallel,
            "cuda" if settings.gpus_per_worker else "cpu",
        )
        if critic is not None:  # first: its body is a copy of the decoder, before FSDP2 shards it
            self.workers["critic"] = CriticWorker(model, critic, parallel=dp)
        self.workers["policy"] = PolicyWorker(model, policy, parallel=dp)
        return self.workers["policy"].fallback_reason

    def put_weight_buckets(self, bucket_bytes: int, dtype: str) -> tuple[list, SyncMeter] | None:
        """Every rank gathers the policy's tensors one at a time (FSDP2: an all-gather each); rank 0 casts each to
        `dtype`, packs it into a host bucket of `bucket_bytes` (`weight_sync.packed`) and puts each bucket into the
        object store as it fills, so it holds one bucket plus one tensor. Rank 0 returns (the buckets' references,
        what it held at most)."""
        named = self.workers["policy"].full_weight_stream()
        if self.rank != 0:
            for _ in named:  # take part in every all-gather, in the same order
                pass
            return None
        return put_buckets(named, bucket_bytes, dtype)

    def call(self, role: str, method: str, *args, reply: bool = True, **kwargs):
        """Run a worker method on this rank; with reply=False only rank 0 sends its result back (the others
        hold the same one, e.g. gathered weights)."""
        result = getattr(self.workers[role], method)(*args, **kwargs)
        return result if reply or self.rank == 0 else None

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class RayTrainGroup:
    """The driver's handle on the ranks: one placement group, N `TrainRank` actors, one process group."""

    def __init__(
        self,
        settings: RaySettings,
        model: nn.Module,
        policy: PolicySettings,
        critic: CriticSettings | None,
        say: Callable[[str], None] = print,
    ):
        ray = import_ray()
        self.ray, self.settings = ray, settings
        n = settings.train_workers
        self.started_cluster = connect(settings.address, n * settings.cpus_per_worker + settings.reserve_cpus)
        self.ranks, self.nodes = [], []
        try:
            self.pg = reserve_bundles(
                n, settings.cpus_per_worker, settings.gpus_per_worker, settings.startup_timeout_s, "training ranks",
                "lower ray.train_workers or ray.cpus_per_worker/gpus_per_worker, or add nodes",
            )  # fmt: skip
        except ClusterError:
            self.pg = None
            self.close()
            raise
        actor = ray.remote(TrainRank)
        self.ranks = [
            actor.options(
                num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker, **in_bundle(self.pg, i)
            ).remote(i, n, int(settings.cpus_per_worker))
            for i in range(n)
        ]
        addresses = self._get([r.address.remote() for r in self.ranks], "connect")
        self.nodes = [node for _, _, node in addresses]
        host, port, _ = addresses[0]  # rank 0 hosts the rendezvous
        self._get([r.join.remote(host, port, settings.collective_timeout_s, settings.gpus_per_worker > 0)
                   for r in self.ranks], "join the process group")  # fmt: skip
        model_ref = ray.put(model)
        self.fallback_reason = self._get(
            [r.build.remote(model_ref, policy, critic, settings) for r in self.ranks], "build"
        )[0]
        per_rank = f"{settings.cpus_per_worker:g} CPU / {settings.gpus_per_worker:g} GPU"
        sp = f" ({n // settings.sequence_parallel} data x {settings.sequence_parallel} sequence)" \
            if settings.sequence_parallel > 1 else ""  # fmt: skip
        say(f"ray: {n} training rank(s){sp}, {settings.strategy}, {per_rank} each, on {len(set(self.nodes))} node(s)")

    def _get(self, refs, what: str):
        """The ranks' results. A lost rank (its process or node died) becomes one ClusterError naming it, also
        when a surviving rank's collective failed first; a rank's own exception is raised again as itself."""
        ray = self.ray
        try:
            return get_all(refs) if isinstance(refs, list) else ray.get(refs)
        except ray.exceptions.RayError as e:
            lost = dead_actors(self.ranks)
            if lost:
                where = ", ".join(f"rank {i} (node {self.nodes[i][:12]})" for i in lost)
                raise ClusterError(
                    f"training {where} died during {what}. The last checkpoint is untouched; "
                    "restart the run with trainer.resume=auto"
                ) from None
            if isinstance(e, ray.exceptions.RayTaskError) and _is_collective_timeout(e.cause):
                raise ClusterError(
                    f"a training rank waited more than ray.collective_timeout_s="
                    f"{self.settings.collective_timeout_s:g} s in a collective during {what}: a peer hangs "
                    f"or is far slower ({e.cause}). The last checkpoint is untouched; restart the run with "
                    "trainer.resume=auto"
                ) from None
            if isinstance(e, ray.exceptions.RayTaskError):
                raise e.as_instanceof_cause() from None
            raise ClusterError(f"the training ranks failed during {what}: {type(e).__name__}: {e}") from None

    def put_weight_buckets(self, bucket_bytes: int, dtype: str) -> tuple[list, SyncMeter]:
        """The policy's weights as buckets in the object store, put by rank 0 (`TrainRank.put_weight_buckets`)."""
        refs = [r.put_weight_buckets.remote(bucket_bytes, dtype) for r in self.ranks]
        return self._get(refs, "the weight push")[0]

    def submit(self, role: str, method: str, *args, reply: bool = True, **kwargs) -> list:
        """Start `method` of `role` on every rank at once (they meet in collectives); the result refs."""
        return [r.call.remote(role, method, *args, reply=reply, **kwargs) for r in self.ranks]

    def wait(self, refs: list, what: str) -> list:
        return self._get(refs, what)

    def run(self, role: str, method: str, *args, reply: bool = True, **kwargs) -> list:
        """`submit`, then the ranks' results."""
        return self._get(self.submit(role, method, *args, reply=reply, **kwargs), f"{role}.{method}")

    def put(self, value: Any):
        return self.ray.put(value)

    def one_per_sequence_group(self, results: list) -> list:
        """The results of one rank of each sequence-parallel group (its ranks return the same rows)."""
        return results[:: self.settings.sequence_parallel]

    def close(self) -> None:
        for rank in self.ranks:
            with contextlib.suppress(Exception):
                self.ray.get(rank.shutdown.remote(), timeout=2)  # a rank stuck in a collective is killed
        release(self.ranks, self.pg)
        self.ranks, self.pg = [], None
        if self.started_cluster and self.ray.is_initialized():
            self.ray.shutdown()
            self.started_cluster = False


def _is_collective_timeout(error: BaseException | None) -> bool:
    # gloo: "Timed out waiting 5000ms for recv operation to complete"; NCCL's watchdog: "... timed out"
    return isinstance(error, RuntimeError) and "timed out" in str(error).lower()


def _sum_of_parts(parts: list[Tensor]) -> Tensor:
    # Each rank filled its own rows and left zeros elsewhere: adding zeros is exact.
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total


class RankWeights:
    """The ranks' weights for one push, as buckets that rank 0 put into the object store while gathering them
    (no process holds the whole model for it). A Ray rollout engine passes `bucket_refs()` on to its workers; an
    engine in this process iterates the buckets, fetching one at a time."""

    def __init__(self, group: RayTrainGroup, bucket_bytes: int, dtype: str):
        self.group, self.bucket_bytes, self.dtype = group, bucket_bytes, dtype
        self._refs: list | None = None
        self.meter: SyncMeter | None = None

    def bucket_refs(self) -> list:
        if self._refs is None:
            self._refs, self.meter = self.group.put_weight_buckets(self.bucket_bytes, self.dtype)
        return self._refs

    def __iter__(self) -> Iterator[PackedBucket]:
        for ref in self.bucket_refs():
            yield self.group.ray.get(ref)


class RayPolicyWorkers:
    """`PolicyWorkers` on the ranks of a `RayTrainGroup`."""

    def __init__(
        self,
        group: RayTrainGroup,
        rollout_model: nn.Module,
        precision: str,
        has_reference: bool,
        bucket_bytes: int = DEFAULT_BUCKET_MB << 20,
        sync_dtype: str = "float32",
    ):
        self.group = group
        self.rollout_model = rollout_model  # the engine's copy, refreshed by push_weights
        self.precision = precision
        self._has_reference = has_reference
        self.bucket_bytes, self.sync_dtype = bucket_bytes, sync_dtype  # rollout.weight_sync_bucket_mb, rollout.dtype

    @property
    def has_reference(self) -> bool:
        return self._has_reference

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> Tensor:
        parts = self.group.run("policy", "compute_logprobs", self.group.put(batch), reference=reference)
        return _sum_of_parts(self.group.one_per_sequence_group(parts))

    @property
    def fallback_reason(self) -> str | None:
        return self.group.fallback_reason

    def update(
        self, batch: TrainBatch, loss: PolicyLossParams, groups_per_mini_batch, epochs, shuffle_seed
    ) -> PolicyUpdate:
        ref = self.group.put(batch)
        args = (ref, loss, groups_per_mini_batch, epochs, shuffle_seed)
        return self.group.run("policy", "update", *args, reply=False)[0]

    def full_weights(self) -> dict[str, Tensor]:
        return self.group.run("policy", "full_weights", reply=False)[0]

    def push_weights(self, engine: RolloutEngine) -> None:
        engine.update_weights(RankWeights(self.group, self.bucket_bytes, self.sync_dtype))

    def engine_logprobs_are_policy_logprobs(self, engine: RolloutEngine, temperature: float) -> bool:
        # The engine's copy holds the ranks' float32 weights bitwise after every push: its log-probs are the
        # policy's up to float rounding, as in one process.
        return (
            engine_logprobs_are_sampling_logprobs(temperature)
            and self.precision == "fp32"
            and engine.reports_logprobs_of(self.rollout_model)
        )

    def matmul_peak_flops(self, dtype: torch.dtype) -> float:
        # Measured on the ranks at once, each with its own threads (ray.cpus_per_worker): the driver's
        # trainer.num_threads says nothing of where the update runs.
        return self.group.run("policy", "matmul_peak_flops", dtype, reply=False)[0]

    def release_cached_memory(self) -> None:
        self.group.run("policy", "release_cached_memory")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.rollout_model.parameters())

    def state_dict(self, sharded: bool = False) -> dict[str, Any]:
        return self.group.run("policy", "state_dict", sharded, reply=False)[0]

    def save_shards(self, directory: Path) -> None:
        self.group.run("policy", "save_shards", directory)

    def load_state_dict(self, state: dict[str, Any], shards: Path | None = None) -> None:
        self.group.run("policy", "load_state_dict", self.group.put(state), shards)

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        self.group.run("policy", "load_weights", self.group.put(weights))

    def load_weights_from_shards(self, shards: Path) -> None:
        self.group.run("policy", "load_weights_from_shards", shards)

    def save_pretrained(self, path: Path, tokenizer) -> Path:
        self.rollout_model.load_state_dict(self.full_weights())
        return save_pretrained_pair(self.rollout_model, tokenizer, path)

    def close(self) -> None:
        self.group.close()


class RayCriticWorkers:
    """`CriticWorkers` on the same ranks (colocated with the policy)."""

    def __init__(self, group: RayTrainGroup):
        self.group = group

    def compute_values(self, batch: TrainBatch) -> Tensor:
        parts = self.group.run("critic", "compute_values", self.group.put(batch))
        return _sum_of_parts(self.group.one_per_sequence_group(parts))

    def update(self, batch: TrainBatch, groups_per_mini_batch: int, epochs: int) -> dict[str, float]:
        ref = self.group.put(batch)
        return self.group.run("critic", "update", ref, groups_per_mini_batch, epochs, reply=False)[0]

    def state_dict(self, sharded: bool = False) -> dict[str, Any]:
        return self.group.run("critic", "state_dict", sharded, reply=False)[0]

    def save_shards(self, directory: Path) -> None:
        self.group.run("critic", "save_shards", directory)

    def load_state_dict(self, state: dict[str, Any], shards: Path | None = None) -> None:
        self.group.run("critic", "load_state_dict", self.group.put(state), shards)

    def close(self) -> None:
        self.group.close()
