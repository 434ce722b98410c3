"""The wiring: a config turned into the components a `Trainer` drives.

The trainer talks to each through a small interface (`RolloutEngine`, `RewardFunction`, `PolicyWorkers`,
`CriticWorkers`, `DynamicSampler`); which implementation stands behind it is decided here, once: the local
backend (one process holding the model, shared by the built-in engine) or the Ray backend
(data-parallel ranks on a cluster, `dapo.workers.ray_group`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dapo.config import Config
from dapo.dynamic_sampling import DynamicSampler, SamplingSettings
from dapo.rewards import RewardFunction, build_reward_function
from dapo.rollout import RolloutEngine, build_engine
from dapo.runtime import RunData, load_policy, load_run_data
from dapo.workers.base import CriticWorkers, PolicyWorkers
from dapo.workers.local import CriticWorker, OptimParams, PolicyWorker
from dapo.workers.ray_group import RaySettings


@dataclass
class Components:
    tokenizer: Any
    data: RunData
    reward_fn: RewardFunction
    engine: RolloutEngine
    policy: PolicyWorkers
    critic: CriticWorkers | None
    sampling: DynamicSampler
    rollout_logprobs_are_policy_logprobs: bool
    """decided once: may the engine's log-probs stand for π_old (actor.reuse_rollout_logprobs)?"""


def optim_params(config: Config, lr: float, weight_decay: float, grad_clip: float) -> OptimParams:
    a = config.actor
    return OptimParams(
        lr, a.betas, weight_decay, grad_clip, a.lr_warmup_steps, a.lr_schedule, config.trainer.total_steps,
        a.min_lr_ratio,
    )  # fmt: skip


def reward_options(config: Config) -> dict[str, Any]:
    """`build_reward_function`'s arguments (the same in the driver and in every reward worker)."""
    return {
        "custom": config.reward.custom_function,
        "scorer_mode": config.reward.scorer_mode,
        "on_error": config.reward.on_error,
        "num_workers": config.reward.num_workers,
        "overlong_enable": config.algo.overlong.enable,
        "max_response_length": config.rollout.max_response_length,
        "overlong_buffer_length": config.algo.overlong.buffer_length,
        "overlong_penalty_factor": config.algo.overlong.penalty_factor,
    }


def build_reward(config: Config) -> RewardFunction:
    return build_reward_function(**reward_options(config))


def _ray_reward(config: Config, say) -> RewardFunction:
    from dapo.rewards.ray_pool import RayRewardFunction

    r = config.ray
    reward_fn = RayRewardFunction(
        reward_options(config), r.reward_workers, r.cpus_per_reward_worker, r.max_rollout_restarts, r.startup_timeout_s
    )
    say(f"ray: {r.reward_workers} reward worker(s)")
    return reward_fn


def build_sampler(config: Config) -> DynamicSampler:
    ds = config.algo.dynamic_sampling
    return DynamicSampler(
        SamplingSettings(
            config.data.train_batch_size, config.data.gen_batch_size, ds.enable, ds.metric, ds.max_gen_batches,
            ds.keep_surplus, ds.stop_when_full,
        )
    )  # fmt: skip


def policy_options(config: Config) -> dict[str, Any]:
    """The policy worker's settings (the same for the local worker and for every Ray rank)."""
    a = config.actor
    return {
        "optim": optim_params(config, a.lr, a.weight_decay, a.grad_clip),
        "with_reference": config.uses_reference,
        "micro_batch_max_tokens": a.micro_batch_max_tokens,
        "share_prompt_forward": a.share_prompt_forward,
        "temperature": config.rollout.temperature,
        "precision": _forward_precision(config),
        "lora_export": config.model.lora.export,
    }


def critic_options(config: Config) -> dict[str, Any] | None:
    if not config.uses_critic:
        return None
    a, c = config.actor, config.critic
    return {
        "optim": optim_params(config, c.lr, c.weight_decay, c.grad_clip),
        "value_clip": c.value_clip,
        "micro_batch_max_tokens": a.micro_batch_max_tokens,
        "share_prompt_forward": a.share_prompt_forward,
        "precision": _forward_precision(config),
    }


def _fsdp2_mixed_precision(config: Config) -> bool:
    return config.trainer.backend == "ray" and config.ray.strategy == "fsdp2" and config.actor.precision == "bf16-mixed"


def _forward_precision(config: Config) -> str:
    # Under FSDP2, bf16-mixed is its MixedPrecisionPolicy (bf16 gathered parameters, float32 reduction and
    # master weights) rather than autocast over float32 parameters.
    return "fp32" if _fsdp2_mixed_precision(config) else config.actor.precision


def ray_settings(config: Config) -> RaySettings:
    r = config.ray
    return RaySettings(
        r.address, r.train_workers, r.cpus_per_worker, r.gpus_per_worker, r.strategy, r.collective_timeout_s,
        r.startup_timeout_s, bf16_compute=_fsdp2_mixed_precision(config),
        reserve_cpus=(r.rollout_workers * r.cpus_per_rollout_worker if r.placement == "split" else 0.0)
        + r.reward_workers * r.cpus_per_reward_worker,
    )  # fmt: skip


def _local_workers(config: Config, model, say) -> tuple[PolicyWorkers, CriticWorkers | None]:
    policy = PolicyWorker(model, **policy_options(config))
    if config.actor.share_prompt_forward and policy.forward.shared is None:
        say(f"actor.share_prompt_forward: falling back to the model's own forward ({policy.forward.fallback_reason})")
    critic = CriticWorker(model, **critic_options(config)) if config.uses_critic else None
    return policy, critic


def _ray_workers(config: Config, model, say):
    from dapo.workers.ray_group import RayCriticWorkers, RayPolicyWorkers, RayTrainGroup

    group = RayTrainGroup(ray_settings(config), model, policy_options(config), critic_options(config), say=say)
    if config.actor.share_prompt_forward and not group.shared_forward:
        say(f"actor.share_prompt_forward: falling back to the model's own forward ({group.fallback_reason})")
    policy = RayPolicyWorkers(group, model, config.actor.precision, config.uses_reference)
    return policy, RayCriticWorkers(group) if config.uses_critic else None, group


def _ray_rollout(config: Config, model, tokenizer, group, say) -> RolloutEngine:
    from dapo.rollout.ray_engine import RayRolloutEngine, RolloutSettings

    r = config.ray
    settings = RolloutSettings(
        r.rollout_workers, r.cpus_per_rollout_worker, r.gpus_per_rollout_worker, r.max_rollout_restarts,
        config.rollout.max_rows_in_flight or None, config.rollout.engine, config.rollout.dtype,
    )  # fmt: skip
    colocated = r.placement == "colocated"
    placement = [(group.pg, i) for i in range(r.rollout_workers)] if colocated else None
    threads = int(r.cpus_per_worker if colocated else r.cpus_per_rollout_worker)
    engine = RayRolloutEngine(settings, model, tokenizer, placement=placement, num_threads=threads)
    say(f"ray: {r.rollout_workers} rollout worker(s) ({config.rollout.engine}), {r.placement}")
    return engine


def _local_engine(config: Config, model, tokenizer) -> RolloutEngine:
    """The engine in this process: the built-in one shares `model` (float32) or holds a bfloat16 copy of it;
    vLLM loads its own copy in `rollout.dtype`."""
    if config.rollout.engine == "vllm":
        return build_engine("vllm", model, tokenizer, dtype=config.rollout.dtype)
    if config.model.lora.rank > 0:
        from dapo.models.lora import merged_model

        model = merged_model(model)  # the engine decodes plain weights; merged again after each update
    if config.rollout.dtype == "bfloat16":
        model = copy.deepcopy(model).to(torch.bfloat16)  # refreshed from the trained weights after each update
    return build_engine("builtin", model, tokenizer, max_rows_in_flight=config.rollout.max_rows_in_flight or None)


def build_components(config: Config, say: Callable[[str], None] = print) -> Components:
    """Every component of a run, in a fixed order (seeded runs depend on it: building consumes RNG draws).

    trainer.backend=local: the workers hold `model` and the built-in engine shares it. ray: the ranks get a
    copy of `model` each, and `model` stays in the driver as the engine's copy, refreshed after every update;
    with ray.rollout_workers > 0 the engine is K actors with a copy each (`model` is then only the template).
    """
    model, tokenizer = load_policy(config, say=say)
    data = load_run_data(config, tokenizer, say=say)
    reward_fn = build_reward(config)
    if config.trainer.backend == "ray":
        policy, critic, group = _ray_workers(config, model, say)
    else:
        policy, critic = _local_workers(config, model, say)
    if config.trainer.backend == "ray" and config.ray.reward_workers > 0:
        reward_fn.close()
        reward_fn = _ray_reward(config, say)
    if config.trainer.backend == "ray" and config.ray.rollout_workers > 0:
        engine = _ray_rollout(config, model, tokenizer, group, say)
    else:
        engine = _local_engine(config, model, tokenizer)
    reuse = config.actor.reuse_rollout_logprobs and policy.engine_logprobs_are_policy_logprobs(
        engine, config.rollout.temperature
    )
    return Components(tokenizer, data, reward_fn, engine, policy, critic, build_sampler(config), reuse)
