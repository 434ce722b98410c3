"""The rollout/training mismatch: how far the engine's log-probs are from the trainer's, and the importance
weights that correct for it.

The engine that sampled a response (vLLM, a bf16 copy, other kernels) computes log π_rollout(o_t); the trainer
computes log π_old(o_t) for the same weights with its own numerics. PPO's ratio r_t = π_θ / π_old assumes the
tokens were drawn from π_old. They were drawn from π_rollout, so the unbiased surrogate weighs each token by
ρ_t = π_old(o_t) / π_rollout(o_t) as well (decoupled PPO; Yao et al. 2025, "Your efficient RL framework
secretly brings you off-policy RL training", who cap it: truncated importance sampling, TIS). With the cap C:

    token, truncate:     w_t = min(ρ_t, C)
    token, mask:         w_t = ρ_t · 1[ρ_t ≤ C]
    sequence, truncate:  w_t = min(ρ_seq, C)           ρ_seq = exp(Σ_t log ρ_t) over the response's tokens
    sequence, mask:      w_t = ρ_seq · 1[ρ_seq ≤ C]

The weight multiplies the per-token surrogate loss and carries no gradient. Pure functions, as the rest of
`dapo.algo`: masked positions (any garbage, NaN and inf) change nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dapo.algo.aggregate import zero_masked

LEVELS = ("off", "token", "sequence")
MODES = ("truncate", "mask")


def rollout_is_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str, mode: str, cap: float
) -> tuple[Tensor, Tensor]:
    """(weights, capped): (B, T) float importance weights w_t (1 where masked, and everywhere at level "off")
    and the bool (B, T) tokens whose ρ exceeded the cap (truncated or masked). No gradient flows through them.

    Args:
        old_logprobs: (B, T) log π_old, the trainer's.
        rollout_logprobs: (B, T) log π_rollout, the engine's, for the same tokens.
        mask: (B, T) 1 on the tokens that have both; rows of all zeros get weight 1.
        level: "off" | "token" | "sequence".
        mode: "truncate" (w = min(ρ, C)) | "mask" (w = ρ below the cap, 0 above).
        cap: C > 0.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap!r}")
    keep = mask.bool()
    ones = torch.ones(old_logprobs.shape, dtype=torch.float32, device=old_logprobs.device)
    if level == "off":
        return ones, torch.zeros_like(keep)
    log_rho = zero_masked(old_logprobs.detach().float() - rollout_logprobs.detach().float(), keep)
    if level == "sequence":
        log_rho = log_rho.sum(dim=1, keepdim=True).expand_as(log_rho)
    # exp of a clamped log: ρ beyond e^40 is capped anyway, and exp must not overflow to inf (inf·0 = NaN)
    rho = torch.exp(log_rho.clamp(max=40.0))
    capped = (rho > cap) & keep
    if mode == "truncate":
        weights = torch.minimum(rho, torch.tensor(cap, dtype=rho.dtype))
    else:
        weights = torch.where(rho > cap, 0.0, rho)
    return torch.where(keep, weights, ones), capped


def prob_abs_diff(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(B, T) |π_old(o_t) − π_rollout(o_t)|, 0 where masked: verl's `training/rollout_probs_diff_*`."""
    keep = mask.bool()
    old = zero_masked(old_logprobs.detach().float(), keep)
    rollout = zero_masked(rollout_logprobs.detach().float(), keep)
    return zero_masked((torch.exp(old) - torch.exp(rollout)).abs(), keep)
