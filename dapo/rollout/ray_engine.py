"""Generation on K Ray actors (`ray.rollout_workers=K`), behind the same `RolloutEngine` interface.

Each `RolloutWorker` holds its own engine (built-in, or vLLM where it is installed) and its own copy of the
weights. A request is cut into waves of `rollout.max_rows_in_flight` rows, as the built-in engine cuts it, and
wave w (seeded `wave_seed(seed, w)`) goes to worker w mod K. The waves come back in wave order, so the batch
does not depend on which worker finished first. Since the waves and their seeds do not depend on K, a seeded
request gives the same tokens with any number of workers. (Without `max_rows_in_flight` the request is cut into
K even parts, and then the tokens depend on K.) `generate_waves` yields the waves in the same order as they
are ready, with two per worker in flight, for dynamic sampling that stops a round once its batch is full
(`algo.dynamic_sampling.stop_when_full`): the driver scores wave w while the workers generate the next ones.

Weights reach the workers through the object store, in buckets of `rollout.weight_sync_bucket_mb`
(`weight_sync`): put by the driver, or by training rank 0 as it gathers them from the FSDP2 shards, and read by
every worker one bucket at a time. Every push has a version (0: the weights the workers were built with), and
every request carries the current version and references to its buckets: a worker holding another version loads
them first. So a worker Ray brought back while it was idle (with its constructor's step-0 weights) can never sample from
stale weights unnoticed. A worker that dies, during a request or during a push, is restarted by Ray, up to
`ray.max_rollout_restarts` times for the run: it gets the current weights again and its waves are generated
again, with their seeds, so the tokens do not change. Every restart, and every reload a request forced on a
worker that came back on its own, counts in `rollout/worker_restarts`. Past the budget the run stops with a
`ClusterError`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dapo.cluster import ClusterError, import_ray, in_bundle, release, reserve_bundles
from dapo.rollout.base import RolloutBatch, SamplingParams, concat_rollouts, wave_seed
from dapo.rollout.weight_sync import DEFAULT_BUCKET_MB, SyncMeter, named_weights, put_buckets


@dataclass(frozen=True)
class RolloutSettings:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_restarts: int
    rows_per_wave: int | None  # rollout.max_rows_in_flight (None: K even parts)
    engine_kind: str = "builtin"
    dtype: str = "float32"  # rollout.dtype: the workers' copies
    vllm_options: tuple[tuple[str, Any], ...] = ()  # context, tensor parallelism, memory: see components.vllm_options
    startup_timeout_s: float = 120.0  # ray.startup_timeout_s: for the workers' resources, and for a restart
    bucket_bytes: int = DEFAULT_BUCKET_MB << 20  # rollout.weight_sync_bucket_mb


class RolloutWorker:
    """One generation actor: an engine over its own copy of the model."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        engine_kind: str,
        num_threads: int,
        use_gpu: bool,
        dtype: str,
        vllm_options: tuple[tuple[str, Any], ...] = (),
    ):
        from dapo.rollout import build_engine

        torch.set_num_threads(max(1, num_threads))
        if use_gpu:
            model = model.to("cuda")
        if engine_kind == "vllm":
            self.engine = build_engine(engine_kind, model, tokenizer, dtype=dtype, **dict(vllm_options))
        else:
            self.engine = build_engine(engine_kind, model.to(getattr(torch, dtype)), tokenizer)
        self.model = model
        self.version = 0  # the weights it was built with

    def generate(
        self, prompts, n: int, sampling: SamplingParams, seed: int, version: int = 0, weights: list | None = None
    ) -> tuple[RolloutBatch, bool]:
        """(the batch, whether the worker had to load the weights of `version` first). `weights`: the references
        to the buckets of that version (Ray passes references nested in a list as references: nothing is fetched
        unless the worker needs it)."""
        reloaded = version != self.version
        if reloaded:
            self.update_weights(weights or [], version)
        return self.engine.generate(prompts, n, sampling, seed), reloaded

    def update_weights(self, buckets: list, version: int = 0) -> None:
        """Load the weights of `version` from the object store, one bucket at a time (so this process holds one
        bucket beyond its engine's weights). No buckets: the constructor's weights, version 0."""
        if buckets:
            import ray

            self.engine.update_weights(ray.get(ref) for ref in buckets)
        self.version = version

    def call(self, method: str, *args) -> None:
        """An engine method without a result (sleep, wake_up)."""
        getattr(self.engine, method)(*args)

    def pid(self) -> int:
        return os.getpid()


class RayRolloutEngine:
    """`RolloutEngine` over K `RolloutWorker` actors; see the module docstring."""

    def __init__(
        self,
        settings: RolloutSettings,
        model: nn.Module,
        tokenizer: Any,
        placement: list[tuple[Any, int]] | None = None,
        num_threads: int = 1,
    ):
        """`placement`: (placement group, bundle index) per worker, e.g. the training ranks' bundles when
        colocated; None gives the workers a placement group of their own (split)."""
        ray = import_ray()
        self.ray, self.settings, self.template = ray, settings, model
        self.tokenizer = tokenizer
        self.restarts = 0
        self.own_pg = None
        if placement is None:
            self.own_pg = reserve_bundles(
                settings.workers, settings.cpus_per_worker, settings.gpus_per_worker, settings.startup_timeout_s,
                "rollout workers",
                "lower ray.rollout_workers or use ray.placement=colocated",
            )  # fmt: skip
            placement = [(self.own_pg, i) for i in range(settings.workers)]
            cpus, gpus = settings.cpus_per_worker, settings.gpus_per_worker
        else:
            cpus, gpus = 0, 0  # colocated: the bundle's resources belong to the training rank; they alternate
        actor = ray.remote(RolloutWorker)
        model_ref = ray.put(model)
        self.workers = [
            actor.options(
                num_cpus=cpus, num_gpus=gpus, max_restarts=settings.max_restarts, **in_bundle(pg, index)
            ).remote(
                model_ref,
                tokenizer,
                settings.engine_kind,
                num_threads,
                settings.gpus_per_worker > 0,
                settings.dtype,
                settings.vllm_options,
            )
            for pg, index in placement[: settings.workers]
        ]
        self._model_ref = model_ref  # the constructor's argument: a restart needs it alive
        self._weights: list = []  # the buckets of the last push ([]: the constructor's weights)
        self.version = 0  # of the weights pushed last (0: the constructor's)
        self.last_sync: SyncMeter | None = None  # what the last push held at once, where it was put
        self._lives = [0] * len(self.workers)  # restarts so far, per worker
        self._get_all([w.pid.remote() for w in self.workers], "start")

    # ------------------------------------------------------------------ RolloutEngine
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        k = len(self.workers)
        rows = self.settings.rows_per_wave or math.ceil(len(prompts) * n / k)
        parts = list(self._waves(prompts, n, sampling, seed, max(1, rows // n), window=None))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return parts[0] if len(parts) == 1 else concat_rollouts(parts, pad)

    def generate_waves(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int, prompts_per_wave: int
    ) -> Iterator[RolloutBatch]:
        """The waves in order, at most two per worker in flight (one running, one queued, so that no worker
        idles while the driver scores). Closing the iterator cancels the queued waves; a running one
        finishes and is dropped (Ray does not interrupt a running actor task)."""
        return self._waves(prompts, n, sampling, seed, prompts_per_wave, window=2 * len(self.workers))

    def _waves(self, prompts, n, sampling, seed, prompts_per_wave: int, window: int | None) -> Iterator[RolloutBatch]:
        if prompts_per_wave < 1:
            raise ValueError(f"prompts_per_wave must be >= 1, got {prompts_per_wave!r}")
        prompts = [list(p) for p in prompts]
        waves = [prompts[i : i + prompts_per_wave] for i in range(0, len(prompts), prompts_per_wave)]
        window = len(waves) if window is None else window
        in_flight: dict[int, tuple[Any, int]] = {}
        try:
            for w in range(len(waves)):
                for ahead in range(w, min(len(waves), w + window)):
                    if ahead not in in_flight:
                        in_flight[ahead] = self._submit(ahead, waves[ahead], n, sampling, seed)
                yield self._result(w, *in_flight.pop(w), waves[w], n, sampling, seed)
        finally:
            for ref, _ in in_flight.values():
                self.ray.cancel(ref)

    def update_weights(self, model_or_state_dict: Any) -> None:
        """Push new weights to every worker through the object store, in buckets of
        `rollout.weight_sync_bucket_mb`. A module or a state dict is cut into buckets here; the training ranks'
        stream (`bucket_refs()`: rank 0 put each bucket as it gathered it) is passed on as references, so the
        weights never pass through this process. The buckets stay in the object store until the next push: a
        restarted worker loads them again."""
        stream = getattr(model_or_state_dict, "bucket_refs", None)
        if stream is not None:
            refs = stream()
            self.last_sync = model_or_state_dict.meter
        else:  # in the workers' dtype: halves a bfloat16 push
            named = named_weights(model_or_state_dict)
            refs, self.last_sync = put_buckets(named, self.settings.bucket_bytes, self.settings.dtype)
        self._weights, self.version = refs, self.version + 1
        pushes = [(index, w.update_weights.remote(refs, self.version), self._lives[index])
                  for index, w in enumerate(self.workers)]  # fmt: skip
        for index, push, life in pushes:
            try:
                self.ray.get(push)
            except self.ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            except (self.ray.exceptions.ActorDiedError, self.ray.exceptions.ActorUnavailableError) as e:
                self._restart(index, life, e, "during the weight push")  # it comes back with these weights

    def reports_logprobs_of(self, module: Any) -> bool:
        """For the module the engine was built from, in float32, on built-in engines: the workers hold its weights
        bit for bit after every push and compute float32 log-probs with the trainer's code (up to float rounding).
        vLLM workers compute them with vLLM's kernels: close (1e-5), but not the trainer's, so π_old is recomputed."""
        float32 = self.settings.dtype == "float32" and all(p.dtype == torch.float32 for p in module.parameters())
        return module is self.template and float32 and self.settings.engine_kind == "builtin"

    def counters(self) -> dict[str, float]:
        counters = {"rollout/worker_restarts": float(self.restarts)}
        if self.last_sync is not None:
            sync = self.last_sync.as_dict()
            counters["rollout/weight_sync_peak_mb"] = sync["peak_mb"]
            counters["rollout/weight_sync_buckets"] = sync["buckets"]
        return counters

    def sleep(self, level: int) -> None:
        self._get_all([w.call.remote("sleep", level) for w in self.workers], "sleep")

    def wake_up(self, tags) -> None:
        self._get_all([w.call.remote("wake_up", tuple(tags)) for w in self.workers], "wake_up")

    def close(self) -> None:
        release(self.workers, self.own_pg)
        self.workers, self.own_pg = [], None

    # ------------------------------------------------------------------ failures
    def _submit(self, wave: int, prompts, n, sampling, seed):
        """(ref, the worker's restart count when submitted)."""
        index = wave % len(self.workers)
        ref = self.workers[index].generate.remote(
            prompts, n, sampling, wave_seed(seed, wave), self.version, self._weights
        )
        return ref, self._lives[index]

    def _result(self, wave: int, ref, life: int, prompts, n, sampling, seed) -> RolloutBatch:
        """Wave `wave`'s batch; if its worker died, the restarted worker (given the current weights first)
        generates the wave again, while the restart budget lasts. A death counts once, however many of the
        worker's waves it took with it."""
        ray = self.ray
        index = wave % len(self.workers)
        while True:
            try:
                batch, reloaded = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as e:
                self._restart(index, life, e, "during a request")
                ref, life = self._submit(wave, prompts, n, sampling, seed)
                continue
            if reloaded:  # it came back on its own (Ray restarted it while idle) and had to load the weights
                self._count_restart(index, f"rollout worker {index} held stale weights")
            return batch

    def _restart(self, index: int, life: int, error: BaseException, when: str) -> None:
        """Worker `index` died (`life`: its restart count when the failed call was made): once per death, count it
        against the budget and wait until Ray has brought it back with the current weights."""
        if life != self._lives[index]:
            return  # a death already handled (it took several calls with it)
        self._count_restart(index, f"rollout worker {index} died {when} ({type(error).__name__})")
        self._wait_restarted(index)

    def _count_restart(self, index: int, what: str) -> None:
        if self.restarts >= self.settings.max_restarts:
            raise ClusterError(
                f"{what} and the restart budget (ray.max_rollout_restarts={self.settings.max_restarts}) is spent. "
                "The last checkpoint is untouched; restart the run with trainer.resume=auto"
            ) from None
        self.restarts += 1
        self._lives[index] += 1

    def _wait_restarted(self, index: int) -> None:
        ray, worker, timeout_s = self.ray, self.workers[index], self.settings.startup_timeout_s
        until = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(worker.update_weights.remote(self._weights, self.version), timeout=timeout_s)
                return
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > until:
                    break
                time.sleep(0.2)
            except ray.exceptions.ActorDiedError:
                break
        raise ClusterError(f"rollout worker {index} did not come back within {timeout_s:g} s after dying")

    def _get_all(self, refs: list, what: str):
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as e:
            raise ClusterError(f"a rollout worker died during {what} ({type(e).__name__})") from None
