"""The Ray cluster a run uses: joining or starting it, and what its failures look like to the driver.

Ray is imported only here and in the modules that build actors (`dapo.workers.ray_group`,
`dapo.rollout.ray_engine`), only for `trainer.backend=ray`.
"""

from __future__ import annotations

import contextlib
import os

from dapo.errors import DapoError

# A cluster started for one run listens on loopback only and never reports usage (docs/distributed.md).
LOCAL_CLUSTER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP 127.0.0.1: every Ray socket binds loopback
    "GLOO_SOCKET_IFNAME": "lo",
    # a dead node is declared dead after ~1.5 s instead of ~13 s
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


class RayUnavailableError(DapoError, RuntimeError):
    """trainer.backend=ray without Ray installed."""


class ClusterError(DapoError, RuntimeError):
    """The cluster cannot hold the ranks, or a rank died: says which, where, and what to do."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "trainer.backend=ray needs Ray: run `scripts/setup.sh ray` (or `pip install 'dapo-rl[ray]'`), "
            "or set trainer.backend=local"
        ) from None
    return ray


def connect(address: str, num_cpus_needed: float) -> bool:
    """Join the cluster at `address`, or start a loopback one; True when this process started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    for key, value in LOCAL_CLUSTER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("RAY_ADDRESS", None)  # "local" means a new cluster even if one is advertised
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, int(num_cpus_needed + 0.999)),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 2**20,
    )
    return True


def get_all(refs: list):
    """ray.get of every ref, waiting for them as they finish rather than in order: an actor that raised
    is reported at once, not after a peer that is stuck in a collective waiting for it."""
    ray = import_ray()
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(refs)


def dead_actors(actors: list) -> list[int]:
    """Indices of the actors that are dead (a busy actor, e.g. one waiting in a collective, is alive). Every actor
    is asked at once and given 2 s in all, so the answer takes ~2 s whatever the number of actors."""
    ray = import_ray()
    probes = [actor.__ray_ready__.remote() for actor in actors]
    answered, _ = ray.wait(probes, num_returns=len(probes), timeout=2)
    answered = set(answered)
    dead = []
    for i, probe in enumerate(probes):
        if probe not in answered:
            continue  # busy: its task queue holds a running call (a collective waiting for the dead peer)
        try:
            ray.get(probe)
        except Exception:
            dead.append(i)
    return dead


def free_resources() -> dict[str, float]:
    """The cluster's unreserved CPUs and GPUs (what an error message should show)."""
    free = import_ray().available_resources()
    return {k: free[k] for k in ("CPU", "GPU") if k in free}


def reserve_bundles(count: int, cpus: float, gpus: float, timeout_s: float, what: str, advice: str):
    """A ready PACK placement group of `count` bundles of {CPU: cpus, GPU: gpus}; else a ClusterError that
    names the request, what is free and `advice`."""
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    pg = placement_group([bundle] * count, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        free = free_resources()
        remove_placement_group(pg)
        raise ClusterError(
            f"the cluster cannot place {count} {what} of {bundle} within {timeout_s:g} s (free now: {free}); {advice}"
        )
    return pg


def in_bundle(pg, index: int) -> dict:
    """Actor options that place it in bundle `index` of `pg`, with the environment the run's actors share."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    env = {k: os.environ[k] for k in ("GLOO_SOCKET_IFNAME",) if k in os.environ}
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        "runtime_env": {"env_vars": env},
    }


def release(actors: list, pg=None) -> None:
    """Kill `actors` and remove `pg`, whatever state they are in."""
    ray = import_ray()
    from ray.util.placement_group import remove_placement_group

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    if pg is not None:
        with contextlib.suppress(Exception):
            remove_placement_group(pg)
