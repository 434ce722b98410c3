"""The wiring: a config turned into the components a `Trainer` drives.

The trainer talks to each through a small interface (`RolloutEngine`, `RewardFunction`, `PolicyWorkers`,
`CriticWorkers`, `DynamicSampler`); which implementation stands behind it is decided here, once. Today that is
the local backend: one process holding the model, shared by the built-in engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dapo.config import Config
from dapo.dynamic_sampling import DynamicSampler, SamplingSettings
from dapo.rewards import RewardFunction, build_reward_function
from dapo.rollout import RolloutEngine, build_engine
from dapo.runtime import RunData, load_policy, load_run_data
from dapo.workers.base import CriticWorkers, PolicyWorkers
from dapo.workers.local import CriticWorker, OptimParams, PolicyWorker


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


def build_reward(config: Config) -> RewardFunction:
    return build_reward_function(
        custom=config.reward.custom_function,
        scorer_mode=config.reward.scorer_mode,
        on_error=config.reward.on_error,
        num_workers=config.reward.num_workers,
        overlong_enable=config.algo.overlong.enable,
        max_response_length=config.rollout.max_response_length,
        overlong_buffer_length=config.algo.overlong.buffer_length,
        overlong_penalty_factor=config.algo.overlong.penalty_factor,
    )


def build_sampler(config: Config) -> DynamicSampler:
    ds = config.algo.dynamic_sampling
    return DynamicSampler(
        SamplingSettings(
            config.data.train_batch_size, config.data.gen_batch_size, ds.enable, ds.metric, ds.max_gen_batches,
            ds.keep_surplus,
        )
    )  # fmt: skip


def build_components(config: Config, say: Callable[[str], None] = print) -> Components:
    """Every component of a run, in a fixed order (seeded runs depend on it: building consumes RNG draws)."""
    model, tokenizer = load_policy(config, say=say)
    data = load_run_data(config, tokenizer, say=say)
    reward_fn = build_reward(config)
    builtin = config.rollout.engine == "builtin"
    engine_options = {"max_rows_in_flight": config.rollout.max_rows_in_flight or None} if builtin else {}
    engine = build_engine(config.rollout.engine, model, tokenizer, **engine_options)
    a = config.actor
    policy = PolicyWorker(
        model,
        optim_params(config, a.lr, a.weight_decay, a.grad_clip),
        with_reference=config.uses_reference,
        micro_batch_max_tokens=a.micro_batch_max_tokens,
        share_prompt_forward=a.share_prompt_forward,
        temperature=config.rollout.temperature,
        precision=a.precision,
    )
    if a.share_prompt_forward and policy.forward.shared is None:
        say(f"actor.share_prompt_forward: falling back to the model's own forward ({policy.forward.fallback_reason})")
    critic = None
    if config.uses_critic:
        c = config.critic
        critic = CriticWorker(
            model, optim_params(config, c.lr, c.weight_decay, c.grad_clip), c.value_clip, a.micro_batch_max_tokens,
            share_prompt_forward=a.share_prompt_forward, precision=a.precision,
        )  # fmt: skip
    reuse = a.reuse_rollout_logprobs and policy.engine_logprobs_are_policy_logprobs(engine, config.rollout.temperature)
    return Components(tokenizer, data, reward_fn, engine, policy, critic, build_sampler(config), reuse)
