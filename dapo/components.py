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
from dapo.rewards import RewardFunction, RewardSettings
from dapo.rollout import RolloutEngine, SamplingParams, build_engine, engine_logprobs_are_sampling_logprobs
from dapo.runtime import RunData, load_policy, load_run_data
from dapo.step.advantages import AdvantageSettings, LogProbSettings
from dapo.step.dynamic_sampling import DynamicSampler, SamplingSettings
from dapo.step.rounds import GenerationRounds, RoundSettings
from dapo.workers.base import (
    CriticSettings,
    CriticWorkers,
    OptimParams,
    PolicyLossParams,
    PolicySettings,
    PolicyWorkers,
)
from dapo.workers.critic import CriticWorker
from dapo.workers.policy import PolicyWorker
from dapo.workers.ray_group import RaySettings


@dataclass
class Components:
    tokenizer: Any
    data: RunData
    reward_fn: RewardFunction
    engine: RolloutEngine
    policy: PolicyWorkers
    critic: CriticWorkers | None
    rounds: GenerationRounds
    """generation rounds and their scoring: what dynamic sampling draws from"""
    sampling: DynamicSampler
    logprobs: LogProbSettings
    """how π_old is obtained (reusing the engine's log-probs was decided once, from the workers' answer)"""
    advantages: AdvantageSettings
    loss: PolicyLossParams
    val_sampling: SamplingParams
    rollout_logprobs_usable: bool
    """the engine's log-probs are the sampling policy's (temperature 1): kept in the batch for the mismatch
    metrics and the rollout correction"""


def optim_params(config: Config, lr: float, weight_decay: float, grad_clip: float) -> OptimParams:
    a = config.actor
    return OptimParams(
        lr=lr,
        betas=a.betas,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        warmup_steps=a.lr_warmup_steps,
        schedule=a.lr_schedule,
        total_steps=config.trainer.total_steps,
        min_lr_ratio=a.min_lr_ratio,
    )


def reward_settings(config: Config) -> RewardSettings:
    """The reward step's settings (the same in the driver and in every reward worker)."""
    r, overlong = config.reward, config.algo.overlong
    return RewardSettings(
        custom=r.custom_function,
        scorer_mode=r.scorer_mode,
        on_error=r.on_error,
        num_workers=r.num_workers,
        overlong_enable=overlong.enable,
        max_response_length=config.rollout.max_response_length,
        overlong_buffer_length=overlong.buffer_length,
        overlong_penalty_factor=overlong.penalty_factor,
    )


def build_reward(config: Config) -> RewardFunction:
    return RewardFunction(reward_settings(config))


def _ray_reward(config: Config, say) -> RewardFunction:
    from dapo.rewards.ray_pool import RayRewardFunction

    r = config.ray
    reward_fn = RayRewardFunction(
        reward_settings(config),
        r.reward_workers,
        r.cpus_per_reward_worker,
        r.max_rollout_restarts,
        r.startup_timeout_s,
    )
    say(f"ray: {r.reward_workers} reward worker(s)")
    return reward_fn


def build_sampler(config: Config) -> DynamicSampler:
    ds = config.algo.dynamic_sampling
    return DynamicSampler(
        SamplingSettings(
            batch_size=config.data.train_batch_size,
            gen_batch_size=config.data.gen_batch_size,
            enable=ds.enable,
            metric=ds.metric,
            max_gen_batches=ds.max_gen_batches,
            keep_surplus=ds.keep_surplus,
            stop_when_full=ds.stop_when_full,
        )
    )


def policy_settings(config: Config) -> PolicySettings:
    """The policy worker's settings (the same for the local worker and for every Ray rank)."""
    a = config.actor
    return PolicySettings(
        optim=optim_params(config, a.lr, a.weight_decay, a.grad_clip),
        with_reference=config.uses_reference,
        micro_batch_max_tokens=a.micro_batch_max_tokens,
        share_prompt_forward=a.share_prompt_forward,
        temperature=config.rollout.temperature,
        precision=config.forward_precision,
        activation_checkpointing=a.activation_checkpointing,
        lora_export=config.model.lora.export,
        weight_sync_bucket_bytes=config.rollout.weight_sync_bucket_mb << 20,
    )


def critic_settings(config: Config) -> CriticSettings | None:
    if not config.uses_critic:
        return None
    a, c = config.actor, config.critic
    return CriticSettings(
        optim=optim_params(config, c.lr, c.weight_decay, c.grad_clip),
        value_clip=c.value_clip,
        micro_batch_max_tokens=a.micro_batch_max_tokens,
        share_prompt_forward=a.share_prompt_forward,
        precision=config.forward_precision,
        activation_checkpointing=a.activation_checkpointing,
    )


def loss_params(config: Config) -> PolicyLossParams:
    a, r = config.algo, config.rollout
    return PolicyLossParams(
        clip_eps_low=a.clip_eps_low,
        clip_eps_high=a.clip_eps_high,
        dual_clip_c=a.dual_clip_c,
        log_ratio_clamp=a.log_ratio_clamp,
        loss_agg_mode=a.loss_agg_mode,
        loss_norm_length=float(a.loss_norm_length or r.max_response_length),
        kl_loss_coef=a.kl_loss_coef if a.use_kl_loss else 0.0,
        kl_loss_type=a.kl_loss_type,
        entropy_coeff=a.entropy_coeff,
        skip_zero_advantage_rows=config.actor.skip_zero_advantage_rows,
        rollout_is_level=a.rollout_correction.level,
        rollout_is_mode=a.rollout_correction.mode,
        rollout_is_cap=a.rollout_correction.cap,
    )


def advantage_settings(config: Config) -> AdvantageSettings:
    a = config.algo
    return AdvantageSettings(
        estimator=a.adv_estimator,
        eps=a.adv_eps,
        gamma=a.gamma,
        lam=a.lam,
        whiten=a.whiten_advantages,
        in_reward_kl=a.use_kl_in_reward,
        kl_type=a.kl_reward_type,
        adaptive_kl=a.kl_ctrl == "adaptive",
        kl_target=a.kl_target,
        kl_horizon=a.kl_horizon,
    )


def generation_rounds(config: Config, data: RunData, engine: RolloutEngine, reward_fn, tokenizer) -> GenerationRounds:
    r = config.rollout
    sampling = SamplingParams(
        temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_response_length
    )
    settings = RoundSettings(
        group_size=r.group_size,
        sampling=sampling,
        seed=config.trainer.seed,
        stop_when_full=config.algo.dynamic_sampling.stop_when_full,
        rows_per_wave=r.max_rows_in_flight,
    )

    def decode(token_ids) -> str:
        return tokenizer.decode(token_ids, skip_special_tokens=True)

    return GenerationRounds(data.sampler, data.prompt_ids, data.prompt_text, engine, reward_fn, decode, settings)


def ray_settings(config: Config) -> RaySettings:
    r = config.ray
    return RaySettings(
        r.address,
        r.train_workers,
        r.cpus_per_worker,
        r.gpus_per_worker,
        r.strategy,
        r.collective_timeout_s,
        r.startup_timeout_s,
        bf16_compute=config.fsdp2_mixed_precision,
        sequence_parallel=r.sequence_parallel,
        offload=r.offload,
        reserve_cpus=(r.rollout_workers * r.cpus_per_rollout_worker if r.placement == "split" else 0.0)
        + r.reward_workers * r.cpus_per_reward_worker,
    )


def _local_workers(config: Config, model, say) -> tuple[PolicyWorkers, CriticWorkers | None]:
    policy = PolicyWorker(model, policy_settings(config))
    critic = CriticWorker(model, critic_settings(config)) if config.uses_critic else None
    return policy, critic


def _ray_workers(config: Config, model, say):
    from dapo.workers.ray_group import RayCriticWorkers, RayPolicyWorkers, RayTrainGroup

    group = RayTrainGroup(ray_settings(config), model, policy_settings(config), critic_settings(config), say=say)
    policy = RayPolicyWorkers(
        group, model, config.actor.precision, config.uses_reference,
        bucket_bytes=config.rollout.weight_sync_bucket_mb << 20, sync_dtype=config.rollout.dtype,
    )  # fmt: skip
    return policy, RayCriticWorkers(group) if config.uses_critic else None, group


def _ray_rollout(config: Config, model, tokenizer, group, say) -> RolloutEngine:
    from dapo.rollout.ray_engine import RayRolloutEngine, RolloutSettings

    r = config.ray
    settings = RolloutSettings(
        r.rollout_workers,
        r.cpus_per_rollout_worker,
        r.gpus_per_rollout_worker,
        r.max_rollout_restarts,
        config.rollout.max_rows_in_flight or None,
        config.rollout.engine,
        config.rollout.dtype,
        tuple(vllm_options(config).items()),
        r.startup_timeout_s,
        config.rollout.weight_sync_bucket_mb << 20,
    )
    colocated = r.placement == "colocated"
    placement = [(group.pg, i) for i in range(r.rollout_workers)] if colocated else None
    threads = int(r.cpus_per_worker if colocated else r.cpus_per_rollout_worker)
    engine = RayRolloutEngine(settings, model, tokenizer, placement=placement, num_threads=threads)
    say(f"ray: {r.rollout_workers} rollout worker(s) ({config.rollout.engine}), {r.placement}")
    return engine


def vllm_options(config: Config) -> dict:
    """What a vLLM engine is built with besides its dtype: the run's context (prompt + response), CUDA graphs or
    not, chunked prefill, its tensor parallelism, its memory (an explicit KV-cache size, or the share of the GPU)
    and the weight push's bucket size."""
    ro = config.rollout
    batched = {"max_num_batched_tokens": ro.max_num_batched_tokens} if ro.max_num_batched_tokens else {}
    return {
        "max_model_len": config.data.max_prompt_length + ro.max_response_length,
        "enforce_eager": ro.enforce_eager,
        "enable_chunked_prefill": ro.enable_chunked_prefill,
        **batched,
        "tensor_parallel_size": ro.tensor_parallel_size,
        "gpu_memory_utilization": ro.gpu_memory_utilization,
        "kv_cache_memory_bytes": int(ro.kv_cache_gb * 1e9) or None,
        "sleep_mode": ro.sleep_level > 0,
        "weight_sync_bucket_mb": ro.weight_sync_bucket_mb,
    }


def _local_engine(config: Config, model, tokenizer) -> RolloutEngine:
    """The engine in this process: the built-in one shares `model` (float32) or holds a bfloat16 copy of it;
    vLLM loads its own copy in `rollout.dtype`."""
    if config.rollout.engine == "vllm":
        return build_engine("vllm", model, tokenizer, dtype=config.rollout.dtype, **vllm_options(config))
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
    if config.actor.share_prompt_forward and policy.fallback_reason is not None:
        say(f"actor.share_prompt_forward: falling back to the model's own forward ({policy.fallback_reason})")
    reuse = config.actor.reuse_rollout_logprobs and policy.engine_logprobs_are_policy_logprobs(
        engine, config.rollout.temperature
    )
    r = config.rollout
    return Components(
        tokenizer=tokenizer,
        data=data,
        reward_fn=reward_fn,
        engine=engine,
        policy=policy,
        critic=critic,
        rounds=generation_rounds(config, data, engine, reward_fn, tokenizer),
        sampling=build_sampler(config),
        logprobs=LogProbSettings(
            on_policy=config.on_policy_update, in_reward_kl=config.algo.use_kl_in_reward, reuse_rollout_logprobs=reuse
        ),
        advantages=advantage_settings(config),
        loss=loss_params(config),
        val_sampling=SamplingParams(
            temperature=r.val_temperature, top_p=r.val_top_p, max_new_tokens=r.max_response_length
        ),
        rollout_logprobs_usable=engine_logprobs_are_sampling_logprobs(r.temperature),
    )
