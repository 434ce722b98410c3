"""Policy and value losses: the clipped surrogate with Clip-Higher and dual clip, the clipped value loss.

Pure functions: tensors in, tensors out (unreduced, per token). No config objects, logging, `.item()` or
collectives; reduce with `dapo.algo.aggregate`. Losses are the NEGATED objectives (we minimise).
Equation numbers refer to the DAPO paper (arXiv:2503.14476).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dapo.algo.aggregate import zero_masked


@dataclass(frozen=True)
class PolicyLossStats:
    """Per-token diagnostics of `clipped_policy_loss`, all (B, T), no gradient.

    Reduce them with a masked mean for verl's metrics:
        actor/pg_clipfrac       = masked mean of (clipped_high | clipped_low)
        actor/pg_clipfrac_lower = masked mean of dual_clipped
        actor/ppo_kl            = masked mean of approx_kl
    """

    clipped_high: Tensor
    """bool: Â > 0 and r > 1 + ε_high: the upper clip is active and the token gets no gradient."""
    clipped_low: Tensor
    """bool: Â < 0 and r < 1 − ε_low: the lower clip is active and the token gets no gradient."""
    dual_clipped: Tensor
    """bool: Â < 0 and r > c: the dual clip is active and the token gets no gradient."""
    ratio: Tensor
    """float: r = π_θ / π_old (after the log-ratio clamp)."""
    approx_kl: Tensor
    """float: log π_old − log π_θ, the k1 estimate of KL(π_old ‖ π_θ) per token (verl `ppo_kl`)."""


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    *,
    mask: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Per-token clipped surrogate loss with a decoupled clip range (Clip-Higher, DAPO §3.1).

        r_t = exp(log π_θ(o_t) − log π_old(o_t))                                        (Eq. 9)
        ℓ_t = −min(r_t Â_t, clip(r_t, 1 − ε_low, 1 + ε_high) Â_t)                          (Eq. 10)
        ℓ_t ← min(ℓ_t, −c Â_t)   for Â_t < 0     (dual clip, Ye et al. 2020; verl `clip_ratio_c`)

    With ε_low = ε_high this is PPO's clipped objective (Eq. 1) and GRPO's (Eq. 5). The dual clip is not in
    the DAPO paper; verl's DAPO scripts use c = 10. It bounds the loss of a negative-advantage token whose
    ratio has exploded.

    Args:
        logprobs: (B, T) log π_θ of the sampled tokens, with gradient.
        old_logprobs: (B, T) log π_old of the same tokens (behaviour policy), no gradient.
        advantages: (B, T), or (B, 1) broadcast over tokens.
        clip_eps_low: ε_low ≥ 0 (paper: 0.2).
        clip_eps_high: ε_high ≥ 0 (paper: 0.28).
        dual_clip_c: c > 1, or None to disable the dual clip.
        log_ratio_clamp: clamp log r to ±this before exp() so that a large policy drift cannot overflow
            (verl HEAD uses 20; e^20 ≈ 4.9e8). None disables it. Outside the clamp the gradient is 0.
        mask: optional (B, T) valid-token mask. Where it is 0 the three inputs are replaced by 0 before any
            arithmetic, so the loss is exactly 0 there and so is the gradient, whatever the padding holds
            (NaN, ±inf). Pass it when the log-probs come from a model: reducing with a mask alone is not
            enough, because the backward of exp() and of the products multiplies the aggregator's zero
            gradient by the garbage (0·NaN = NaN), and a NaN at one padded position reaches every weight.
    Returns:
        (loss, stats): loss is (B, T) and UNREDUCED; stats holds the per-token indicators (no clip, ratio 1
        and approx_kl 0 at masked positions when `mask` is given).

    Conventions (pinned by tests/algo/test_policy_loss.py):
        * a token on the clipped branch has exactly zero gradient; inside the clip range the gradient is
          that of −r Â (so −Â when r = 1, the vanilla policy gradient).
        * a token with Â = 0 is neither clipped-high nor clipped-low.
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    advantages = advantages.expand_as(logprobs)
    if mask is not None:
        logprobs, old_logprobs, advantages = (zero_masked(t, mask) for t in (logprobs, old_logprobs, advantages))
    log_ratio = logprobs - old_logprobs
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped)
    negative = advantages < 0
    dual_clipped = torch.zeros_like(negative)
    if dual_clip_c is not None:
        dual_bound = -advantages * dual_clip_c
        dual_clipped = negative & (loss > dual_bound)
        loss = torch.where(dual_clipped, dual_bound, loss)
    with torch.no_grad():
        stats = PolicyLossStats(
            clipped_high=(advantages > 0) & (ratio > 1.0 + clip_eps_high),
            clipped_low=negative & (ratio < 1.0 - clip_eps_low),
            dual_clipped=dual_clipped,
            ratio=ratio.detach(),
            approx_kl=-log_ratio.detach(),
        )
    return loss, stats


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_range: float | None,
    *,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token clipped value loss of the PPO critic (as in PPO's reference code and verl).

        V_clip = V_old + clip(V − V_old, −c, c)
        ℓ_t = ½ · max((V − R)², (V_clip − R)²)

    Args:
        values: (B, T) current critic predictions, with gradient.
        old_values: (B, T) critic predictions when the rollout was scored, no gradient.
        returns: (B, T) value targets R_t (from `gae_advantages`).
        clip_range: c > 0, or None for the unclipped ½ (V − R)².
        mask: optional (B, T) valid-token mask: masked inputs are replaced by 0 first, so the loss and the
            gradient there are exactly 0 whatever they hold (see `clipped_policy_loss`).
    Returns:
        (loss, clipped): both (B, T); `clipped` is True where the clipped branch is larger
        (verl `critic/vf_clipfrac`). Reduce the loss with `dapo.algo.aggregate`.
    """
    if mask is not None:
        values, old_values, returns = (zero_masked(t, mask) for t in (values, old_values, returns))
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    change = values - old_values
    outside = change.abs() > clip_range
    # Inside the range the clipped value IS the value: old + (v − old) can differ from v by a rounding step,
    # which would count tokens the clip never touched (and make the count depend on the reduction order).
    clipped_values = torch.where(outside, old_values + change.clamp(-clip_range, clip_range), values)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (outside & (clipped > unclipped)).detach()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Fraction of the variance of the returns that the critic explains, over masked entries.

        EV = 1 − Var_m(R − V) / Var_m(R)

    1 is a perfect critic, 0 is as good as predicting the mean, negative is worse. Returns a 0-dim tensor
    (NaN when Var(R) = 0, including an empty mask). Population variances are used on both sides, so the
    choice cancels. Masked entries are dropped with `where`, so garbage there (NaN, ±inf) changes nothing.
    """
    values, returns = zero_masked(values, mask), zero_masked(returns, mask)
    valid = mask.bool()
    count = valid.sum().to(values.dtype)

    def masked_var(x: Tensor) -> Tensor:
        mean = x.sum() / count
        return torch.where(valid, x - mean, 0.0).square().sum() / count

    return 1.0 - masked_var(returns - values) / masked_var(returns)
