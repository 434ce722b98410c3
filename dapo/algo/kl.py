"""KL estimators and KL-coefficient controllers (for the PPO and GRPO baselines; DAPO removes KL, §2.3).

Pure functions. With δ_t = log π_θ(o_t) − log π_ref(o_t) on tokens sampled from π_θ (Schulman, "Approximating
KL divergence", 2020):

| kind       | estimate of KL(π_θ ‖ π_ref) per token | notes                                              |
|------------|---------------------------------------|----------------------------------------------------|
| k1         | δ                                     | unbiased, high variance, can be negative (verl kl) |
| abs        | |δ|                                   | verl "abs"                                         |
| k2         | ½ δ²                                  | verl "mse"                                         |
| k3         | exp(−δ) + δ − 1                       | unbiased, ≥ 0, low variance (GRPO, DeepSeekMath)   |
"""

from __future__ import annotations

import torch
from torch import Tensor

from dapo.algo.aggregate import zero_masked

KL_ESTIMATORS = ("k1", "abs", "k2", "k3")


def kl_estimate(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    kind: str,
    log_ratio_clamp: float = 20.0,
    k3_clamp: float = 10.0,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate: the D_KL of GRPO's penalty term −β·D_KL in its objective (DAPO Eq. 5,
    restating DeepSeekMath, arXiv:2402.03300; DAPO Eq. 4 is the group advantage). DeepSeekMath
    estimates it per token with k3, Schulman's unbiased non-negative approximation (2020).

    Args:
        logprobs: (B, T) log π_θ of the sampled tokens (may carry gradient).
        ref_logprobs: (B, T) log π_ref of the same tokens.
        kind: "k1", "abs", "k2" or "k3" (see the module table).
        log_ratio_clamp: for k3, δ is clamped to ±this before exp() so it cannot overflow (verl HEAD: 20).
        k3_clamp: k3 is clamped to [−k3_clamp, k3_clamp] (verl: 10): one runaway token cannot dominate.
        mask: optional (B, T) valid-token mask. Masked inputs are replaced by 0 with `where` before the
            subtraction, so the estimate there is 0 and its gradient exactly 0 whatever the padding holds:
            masking only the reduced sum would leave 0·NaN = NaN in the backward (e.g. k2's δ·grad).
    Returns:
        (B, T) per-token estimates, unreduced. Reduce with `dapo.algo.aggregate`.
    """
    if mask is not None:
        logprobs, ref_logprobs = zero_masked(logprobs, mask), zero_masked(ref_logprobs, mask)
    delta = logprobs - ref_logprobs
    if kind == "k1":
        return delta
    if kind == "abs":
        return delta.abs()
    if kind == "k2":
        return 0.5 * delta.square()
    if kind == "k3":
        neg_delta = (-delta).clamp(-log_ratio_clamp, log_ratio_clamp)
        return (torch.exp(neg_delta) - neg_delta - 1.0).clamp(-k3_clamp, k3_clamp)
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_ESTIMATORS}")


def kl_penalized_token_rewards(token_rewards: Tensor, token_kl: Tensor, kl_coef: float, mask: Tensor) -> Tensor:
    """In-reward KL penalty (InstructGPT-style PPO):  r'_t = r_t − β · KL_t on valid tokens.

    Args:
        token_rewards: (B, T) rewards (outcome reward on the last valid token).
        token_kl: (B, T) per-token KL estimate (no gradient: it is part of the reward).
        kl_coef: β ≥ 0.
        mask: (B, T) valid tokens.
    Returns:
        (B, T) penalised rewards, 0 at masked positions: selected with `where`, so NaN/inf in either input
        there gives 0 (multiplying by the mask would give NaN·0 = NaN).
    """
    return torch.where(mask.bool(), token_rewards - kl_coef * token_kl.detach(), 0.0)


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target_kl: float, horizon: int, num_steps: int) -> float:
    """Adaptive KL controller (Ziegler et al. 2019, arXiv:1909.08593 §2.2).

        e = clip(KL_observed / KL_target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    Plain floats in and out: the controller state is one number that the trainer carries (and checkpoints).
    `num_steps` is the number of samples (or steps) since the last update, as in the paper.
    """
    if target_kl <= 0 or horizon <= 0:
        raise ValueError(f"need target_kl > 0 and horizon > 0, got {target_kl}, {horizon}")
    error = min(max(observed_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * num_steps / horizon)
