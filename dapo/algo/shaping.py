"""Reward shaping and group filtering (DAPO §3.2 and §3.4).

Pure functions: tensors in, tensors out. No config objects, logging, `.item()` or collectives.
Equation numbers refer to the DAPO paper (arXiv:2503.14476).
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(
    response_lengths: Tensor,
    max_response_length: int,
    buffer_length: int,
    penalty_factor: float = 1.0,
) -> Tensor:
    """Soft overlong punishment R_length(y), DAPO Eq. 13 (§3.4), scaled by a penalty factor.

        R_length(y) = 0                               if |y| ≤ L_max − L_cache
                      ((L_max − L_cache) − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max
                      −1                              if |y| > L_max

    and the returned value is `penalty_factor · R_length(y)`, added to the rule reward.

    Args:
        response_lengths: (B,) integer response lengths |y| in tokens, EOS included (as verl counts the
            attention mask of the response).
        max_response_length: L_max, the generation cap (paper: 20480).
        buffer_length: L_cache, the soft-punishment buffer (paper: 4096). 0 < L_cache ≤ L_max.
        penalty_factor: multiplies the penalty (verl `overlong_buffer.penalty_factor`, paper: 1.0).
    Returns:
        (B,) float32 penalties in [−penalty_factor, 0].

    Conventions (pinned by tests/algo/test_shaping.py):
        * |y| counts EOS, so a response that ends exactly at L_max with EOS still gets −1.
        * lengths above L_max (possible only if the caller's cap differs) clamp at −1, as Eq. 13 says.
    """
    if buffer_length <= 0 or buffer_length > max_response_length:
        raise ValueError(f"need 0 < buffer_length ≤ max_response_length, got {buffer_length}, {max_response_length}")
    expected_length = max_response_length - buffer_length
    penalty = (expected_length - response_lengths.to(torch.float32)) / buffer_length
    return penalty.clamp(min=-1.0, max=0.0) * penalty_factor


def overlong_filter_mask(response_mask: Tensor, truncated: Tensor) -> Tensor:
    """Overlong filtering (DAPO §3.4): truncated responses contribute nothing to the loss.

    A response is truncated when generation stopped at the length cap without EOS. Its reward still
    counts in its group's statistics (the paper masks the loss, not the sample), so this mask is applied
    to the loss only, after advantages are computed.

    Args:
        response_mask: (B, T) valid-token mask.
        truncated: (B,) bool, True for responses that ended without EOS at the length cap.
    Returns:
        (B, T) mask with the rows of truncated responses zeroed, same dtype as `response_mask`.
    """
    keep = (~truncated.bool()).to(response_mask.dtype).unsqueeze(-1)
    return response_mask * keep


def informative_groups(group_metric: Tensor) -> Tensor:
    """Dynamic-sampling criterion (DAPO Eq. 11, §3.2): which prompt groups carry a learning signal.

        keep group g  ⇔  0 < |{i : correct_i}| < G  ⇔  the metric is not the same for every response

    Args:
        group_metric: (P, G) per-response metric, binary accuracy by default (bool or float). Filter on
            accuracy, never on the length-shaped reward: an all-wrong group whose lengths differ would get
            different shaped rewards and slip through (a bug reported against other frameworks).
    Returns:
        (P,) bool mask, True for groups whose metric is not all equal. Equivalent to verl's
        "population std > 0". A group of one is never informative (its advantage is 0).
    """
    if group_metric.dim() != 2:
        raise ValueError(f"group_metric must be (P, G), got shape {tuple(group_metric.shape)}")
    return (group_metric != group_metric[:, :1]).any(dim=1)
