"""The reward step on K Ray actors (`ray.reward_workers=K`), behind the same `RewardFunction` interface.

Scoring is where user code runs: a custom function may call a sandbox, a compiler or a judge model and take
seconds per sample. Each `RewardScorer` actor builds the run's reward function itself (same scorers, same
mode, its own killable pool for the symbolic checks), a batch is cut into K contiguous chunks scored at the
same time, and the results are put back in order. Shaping (the overlong punishment) and the batch metrics
stay in the driver, computed on the whole batch, so a batch scores the same with any K (tested).

Scoring is a pure function of the sample, so a failure costs only time: a chunk whose worker died is scored
again in the driver (counted in `reward/worker_failures`), and Ray restarts the worker for the next batch, up
to `ray.max_rollout_restarts` times. A scorer's own exception (on_error=raise) reaches the driver as itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dapo.cluster import ClusterError, import_ray
from dapo.rewards.reward_fn import RewardFunction, RewardSample, RewardSettings
from dapo.rewards.types import ScoreResult


class RewardScorer:
    """One scoring actor: the run's reward function, built in this process."""

    def __init__(self, settings: RewardSettings):
        self.reward_fn = RewardFunction(settings)

    def score(self, samples: Sequence[RewardSample], first_index: int) -> tuple[list[ScoreResult], int]:
        self.reward_fn.index_offset = first_index  # errors name the sample's index in the whole batch
        return self.reward_fn.score_results(samples)

    def pid(self) -> int:
        return os.getpid()


def portable_reference(custom: Any) -> Any:
    """A "path/file.py:function" reference made absolute: an actor's working directory is not the driver's."""
    if isinstance(custom, str):
        module_ref, sep, name = custom.rpartition(":")
        if sep and module_ref.endswith(".py"):
            return f"{Path(module_ref).expanduser().resolve()}:{name}"
    return custom


class RayRewardFunction(RewardFunction):
    """`RewardFunction` whose scoring runs on K `RewardScorer` actors; see the module docstring."""

    def __init__(
        self,
        settings: RewardSettings,
        workers: int,
        cpus_per_worker: float,
        max_restarts: int,
        startup_timeout_s: float,
    ):
        settings = dataclasses.replace(settings, custom=portable_reference(settings.custom))
        super().__init__(settings)  # the driver's own copy: validates the settings, scores what a dead worker lost
        ray = import_ray()
        self.ray = ray
        self.worker_failures = 0
        actor = ray.remote(RewardScorer).options(num_cpus=cpus_per_worker, max_restarts=max_restarts)
        self.workers = [actor.remote(settings) for _ in range(workers)]
        try:
            ray.get([w.pid.remote() for w in self.workers], timeout=startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ClusterError(
                f"the cluster cannot start {workers} reward workers of {cpus_per_worker:g} CPU within "
                f"{startup_timeout_s:g} s: lower ray.reward_workers or ray.cpus_per_reward_worker, or add nodes"
            ) from None
        except ray.exceptions.RayTaskError as e:
            self.close()
            raise e.as_instanceof_cause() from None

    def score_results(self, samples: Sequence[RewardSample]) -> tuple[list[ScoreResult], int]:
        if not samples:
            return [], 0
        k = min(len(self.workers), len(samples))
        bounds = [len(samples) * i // k for i in range(k + 1)]
        chunks = [list(samples[bounds[i] : bounds[i + 1]]) for i in range(k)]
        refs = [self.workers[i].score.remote(chunk, bounds[i]) for i, chunk in enumerate(chunks)]
        results: list[ScoreResult] = []
        symbolic = 0
        for ref, chunk, first in zip(refs, chunks, bounds, strict=False):
            chunk_results, chunk_symbolic = self._chunk(ref, chunk, first)
            results += chunk_results
            symbolic += chunk_symbolic
        return results, symbolic

    def _chunk(self, ref, chunk: list[RewardSample], first_index: int) -> tuple[list[ScoreResult], int]:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
            self.worker_failures += 1
            self.index_offset = first_index
            try:
                return super().score_results(chunk)
            finally:
                self.index_offset = 0

    def _extra_metrics(self) -> dict[str, float]:
        return {"reward/worker_failures": float(self.worker_failures)}

    def close(self) -> None:
        for worker in getattr(self, "workers", []):
            self.ray.kill(worker, no_restart=True)
        self.workers = []
        super().close()
