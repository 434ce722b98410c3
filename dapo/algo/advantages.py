"""Advantage estimators: group-relative (GRPO/DAPO), Dr. GRPO, RLOO, and GAE (PPO).

Pure functions: tensors in, tensors out. No config objects, logging, `.item()` or collectives.
Equation numbers refer to the DAPO paper (arXiv:2503.14476), which restates PPO/GAE (Eqs. 1-3) and
GRPO (Eqs. 4-6) before introducing DAPO (Eqs. 8-13).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_groups(rewards: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G): one row per prompt group, got shape {tuple(rewards.shape)}")


def group_relative_advantages(rewards: Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantage of each response (GRPO, DAPO Eq. 4; used unchanged by DAPO Eq. 9).

        Â_i = (R_i − mean_g(R)) / (std_g(R) + ε)          (scale_by_std=True: GRPO / DAPO)
        Â_i =  R_i − mean_g(R)                            (scale_by_std=False: Dr. GRPO, arXiv:2503.20783)

    Args:
        rewards: (P, G) outcome reward of the G responses sampled for each of P prompts
            (the shaped reward: rule score plus overlong penalty, as verl does).
        scale_by_std: divide by the group standard deviation.
        eps: added to the std, ε = 1e-6 as in verl.
    Returns:
        (P, G) advantages; the caller broadcasts them over each response's tokens.

    Conventions (pinned by tests/algo/test_advantages.py):
        * std is the unbiased sample std (Bessel, N − 1), as torch.std, verl and TRL. The population std
          (np.std) would be smaller by √((G−1)/G), making |Â| larger by √(G/(G−1)).
        * a group whose rewards are all equal gets Â = 0 exactly (no signal; DAPO §3.2).
        * a group of one (G = 1) gets Â = 0. verl instead uses mean 0 and std 1 there, which turns the raw
          reward into the advantage; with no baseline that is not group-relative, so we return 0.
    """
    _check_groups(rewards)
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centered
    return centered / (rewards.std(dim=1, keepdim=True) + eps)


def grpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO/DAPO advantage: `group_relative_advantages` with std scaling (DAPO Eq. 4 and Eq. 9)."""
    return group_relative_advantages(rewards, scale_by_std=True, eps=eps)


def drgrpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO advantage (arXiv:2503.20783): the group mean is removed, the std is not divided out.

    `eps` is unused; it keeps the signature uniform with the other entries of `ADVANTAGES`.
    """
    del eps
    return group_relative_advantages(rewards, scale_by_std=False)


def rloo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """REINFORCE leave-one-out advantage (Ahmadian et al., arXiv:2402.14740, Eq. 5).

        Â_i = R_i − 1/(G−1) Σ_{j≠i} R_j  =  G/(G−1) · (R_i − mean_g(R))

    Args:
        rewards: (P, G) outcome rewards.
        eps: unused; uniform signature.
    Returns:
        (P, G) advantages; a group of one gets 0 (it has no other sample to form a baseline).
    """
    del eps
    _check_groups(rewards)
    group_size = rewards.shape[1]
    if group_size < 2:
        return torch.zeros_like(rewards)
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
    return rewards - baseline


def gae_advantages(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens (DAPO Eqs. 2-3, from Schulman et al. 2016).

        δ_t = r_t + γ V(s_{t+1}) − V(s_t)                                       (Eq. 3)
        Â_t = Σ_{l ≥ 0} (γλ)^l δ_{t+l}                                           (Eq. 2)
        R_t = Â_t + V(s_t)       (the value target, "returns")

    Args:
        token_rewards: (B, T) per-token rewards (an outcome reward sits on the last valid token; a KL
            penalty, if any, is spread over all tokens).
        values: (B, T) critic values V(s_t) at each response position.
        mask: (B, T) 1 where the token is a valid response token.
        gamma: discount γ (verl default 1.0).
        lam: GAE λ (verl default 1.0; 0.95 is common for PPO).
    Returns:
        (advantages, returns), each (B, T), zero at masked positions.

    Conventions (pinned by tests/algo/test_advantages.py):
        * masked positions are skipped, not treated as terminal: the recursion jumps over them, so
          garbage in masked rewards or values (NaN and ±inf included) changes nothing, in the outputs or in
          the gradient w.r.t. the values (same semantics as verl's masked GAE).
        * the value after the last valid token is 0 (the episode ends with the response).
        * no whitening here; `masked_whiten` is a separate step the caller may apply.
    """
    valid = mask.bool()
    # `where`, never `* mask`: NaN·0 = NaN and inf·0 = NaN, so a multiplied-away garbage value would still
    # reach `running` and from there every earlier token of its row (and, through whitening, the batch).
    rewards = torch.where(valid, token_rewards.to(values.dtype), 0.0)
    values = torch.where(valid, values, 0.0)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    # One Python step per token position, vectorised over the batch; the recursion is inherently sequential.
    for t in reversed(range(values.shape[1])):
        m = valid[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        running = torch.where(m, candidate, running)
        next_value = torch.where(m, values[:, t], next_value)
        advantages[:, t] = torch.where(m, candidate, 0.0)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise to zero mean and unit variance over the masked entries (PPO's advantage whitening).

        x̂ = (x − mean_m(x)) / sqrt(var_m(x) + ε)      (mean added back when shift_mean=False)

    Args:
        values: (B, T) tensor.
        mask: (B, T) 1 on entries that count.
    Returns:
        (B, T) whitened values, 0 at masked positions. The variance is Bessel-corrected, as verl.

    Conventions (pinned by tests/algo/test_advantages.py):
        * masked entries are replaced by 0 with `where` before any arithmetic, so garbage there (NaN, ±inf)
          changes nothing; multiplying by the mask would not do (NaN·0 = NaN enters the mean).
        * an empty mask gives all zeros, one valid entry gives 0 there (variance 0 with N − 1 clamped to 1).
    """
    valid = mask.bool()
    values = torch.where(valid, values, 0.0)
    count = valid.sum().to(values.dtype)
    mean = values.sum() / count.clamp(min=1.0)
    centered = torch.where(valid, values - mean, 0.0)
    var = centered.square().sum() / (count - 1).clamp(min=1.0)
    whitened = centered * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, 0.0)


def broadcast_to_tokens(sequence_values: Tensor, mask: Tensor) -> Tensor:
    """Give every valid token of response i the value of response i: (B,) × (B, T) -> (B, T), 0 elsewhere.

    `where`, not `* mask`: a NaN/inf value of a row with no valid token (e.g. a filtered response) must give
    zeros, not NaN·0 = NaN.
    """
    return torch.where(mask.bool(), sequence_values.unsqueeze(-1), 0.0)


def token_level_rewards(sequence_rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each response's outcome reward on its last valid token, zeros elsewhere (verl convention).

    Args:
        sequence_rewards: (B,) outcome rewards.
        mask: (B, T) valid-token mask; each row must be a contiguous prefix of ones (possibly empty).
    Returns:
        (B, T) per-token rewards. A row with no valid token gets no reward anywhere.
    """
    mask = mask.to(sequence_rewards.dtype)
    lengths = mask.sum(dim=1).long()
    out = torch.zeros_like(mask)
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    out[rows, lengths[rows] - 1] = sequence_rewards[rows]
    return out
