"""The batch's log-probs under π_old and π_ref, and its advantages (Algorithm 1, "compute advantages"): the
two stages between sampling and the update, as typed functions that return their metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dapo import algo
from dapo.metrics import Timer, stats_dict
from dapo.workers.base import CriticWorkers, PolicyWorkers
from dapo.workers.batch import TrainBatch


@dataclass(frozen=True)
class LogProbSettings:
    on_policy: bool
    """one mini-batch and one epoch: π_old = π_θ exactly, and the worker uses its own detached log-probs"""
    in_reward_kl: bool
    """algo.use_kl_in_reward: the KL penalty in the reward needs π_old even on-policy"""
    reuse_rollout_logprobs: bool
    """decided once at start: the engine's log-probs are the policy's own up to float rounding"""


def behaviour_logprobs(
    policy: PolicyWorkers, batch: TrainBatch, settings: LogProbSettings, timer: Timer
) -> tuple[TrainBatch, Tensor | None, dict[str, float]]:
    """π_old and π_ref of every generated token (Algorithm 1: "update the old policy model π_old ← π_θ").

    π_old, in this order of preference:
      1. not computed when the update is exactly on-policy and no in-reward KL needs it (the worker then uses
         its own detached log-probs, which equal π_old);
      2. the engine's log-probs, when they are the policy's own (`reuse_rollout_logprobs`) and every group of
         the batch still has them (groups carried over from an earlier step do not: the weights changed);
      3. a forward pass of the policy.
    π_ref: a forward pass of the frozen reference, whenever the workers hold one (a KL term is on).

    Returns (the batch with `old_logprobs` unless on-policy and `ref_logprobs` when there is a reference,
    π_old's (B, T) log-probs when computed (for the in-reward KL), metrics).
    """
    metrics: dict[str, float] = {}
    old_logprobs = None
    if not settings.on_policy or settings.in_reward_kl:
        with timer("old_log_prob"):
            reusable = settings.reuse_rollout_logprobs and batch.rollout_rows is not None
            if reusable and bool(batch.rollout_rows.all()):
                old_logprobs = batch.rollout_logprobs  # already zero off the generated tokens
            metrics["train/old_logprobs_from_rollout"] = float(old_logprobs is not None)
            if old_logprobs is None:
                old_logprobs = policy.compute_logprobs(batch)
    if not settings.on_policy:
        batch = batch.replace(old_logprobs=old_logprobs)
    if policy.has_reference:
        with timer("ref"):
            batch = batch.replace(ref_logprobs=policy.compute_logprobs(batch, reference=True))
    return batch, old_logprobs, metrics


@dataclass(frozen=True)
class AdvantageSettings:
    """`algo`'s advantage and in-reward KL fields."""

    estimator: str
    """gae | one of algo.GROUP_ADVANTAGES"""
    eps: float = 1e-6
    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = False
    """GAE only: whiten the advantages over the batch's generated tokens"""
    in_reward_kl: bool = False
    kl_type: str = "k1"
    adaptive_kl: bool = False
    kl_target: float = 0.1
    kl_horizon: float = 10000.0


def with_advantages(
    batch: TrainBatch,
    rewards: Tensor,
    old_logprobs: Tensor | None,
    kl_coef: float,
    critic: CriticWorkers | None,
    settings: AdvantageSettings,
    timer: Timer,
) -> tuple[TrainBatch, float, dict[str, float]]:
    """The batch with its advantages (and, for GAE, `old_values` and `returns`).

    rewards: (P, G) shaped rewards of the batch's groups, in row order. GAE (DAPO Eqs. 2-3) reads them on each
    response's last token; the group estimators (Eq. 9) per response. With the in-reward KL (InstructGPT-style)
    −β·KL_t(π_old ‖ π_ref) is added on every token first: GAE sees it per token, the group estimators its sum
    per response (the same total); an adaptive β is updated from the KL observed.

    Returns (batch, the KL coefficient for the next step, metrics).
    """
    generated = batch.generated_mask  # (B, T) every generated token, truncated ones included
    token_rewards = algo.token_level_rewards(rewards.reshape(-1), generated)  # (B, T), reward on the last token
    metrics: dict[str, float] = {}
    if settings.in_reward_kl and batch.ref_logprobs is not None:
        token_kl = algo.kl_estimate(old_logprobs, batch.ref_logprobs, settings.kl_type, mask=generated)
        token_rewards = algo.kl_penalized_token_rewards(token_rewards, token_kl, kl_coef, generated)
        rewards = token_rewards.sum(dim=1).reshape(rewards.shape)
        observed = float(algo.masked_mean(token_kl, generated))
        metrics["actor/reward_kl_penalty"] = observed
        metrics["actor/reward_kl_penalty_coeff"] = kl_coef
        if settings.adaptive_kl:
            kl_coef = algo.adaptive_kl_coef(kl_coef, observed, settings.kl_target, settings.kl_horizon, len(generated))
    metrics.update(stats_dict("critic/rewards", rewards.reshape(-1)))
    if settings.estimator == "gae":
        with timer("values"):
            values = critic.compute_values(batch)
        advantages, returns = algo.gae_advantages(token_rewards, values, generated, settings.gamma, settings.lam)
        if settings.whiten:
            advantages = algo.masked_whiten(advantages, generated)
        metrics.update(stats_dict("critic/values", values, generated.bool()))
        metrics.update(stats_dict("critic/returns", returns, generated.bool()))
        metrics["critic/vf_explained_var"] = float(algo.explained_variance(values, returns, generated))
        batch = batch.replace(old_values=values, returns=returns)
    else:
        per_response = algo.GROUP_ADVANTAGES[settings.estimator](rewards, settings.eps).reshape(-1)
        advantages = algo.broadcast_to_tokens(per_response, generated)
    metrics.update(stats_dict("critic/advantages", advantages, generated.bool()))
    return batch.replace(advantages=advantages), kl_coef, metrics
