"""Rollout/training mismatch: the importance weights at token and sequence level, hand-computed; masked garbage;
and the on-policy gradient restored on a constructed case."""

import math

import pytest
import torch

from dapo.algo import clipped_policy_loss, prob_abs_diff, rollout_is_weights

LOG = math.log
# One response of 3 tokens: ρ = π_old / π_rollout = 0.5/0.25, 0.2/0.4, 0.9/0.9 = 2, 0.5, 1
OLD = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.9)]])
ROLLOUT = torch.tensor([[LOG(0.25), LOG(0.4), LOG(0.9)]])
ALL = torch.ones(1, 3)


@pytest.mark.parametrize(
    "level, mode, cap, weights, capped",
    [
        ("token", "truncate", 1.5, [1.5, 0.5, 1.0], [True, False, False]),
        ("token", "mask", 1.5, [0.0, 0.5, 1.0], [True, False, False]),
        ("token", "truncate", 3.0, [2.0, 0.5, 1.0], [False, False, False]),
        # ρ_seq = 2 · 0.5 · 1 = 1 for every token
        ("sequence", "truncate", 1.5, [1.0, 1.0, 1.0], [False, False, False]),
        ("sequence", "truncate", 0.8, [0.8, 0.8, 0.8], [True, True, True]),
        ("sequence", "mask", 0.8, [0.0, 0.0, 0.0], [True, True, True]),
        ("off", "truncate", 0.8, [1.0, 1.0, 1.0], [False, False, False]),
    ],
)
def test_importance_weights_by_hand(level, mode, cap, weights, capped):
    w, c = rollout_is_weights(OLD, ROLLOUT, ALL, level, mode, cap)
    torch.testing.assert_close(w, torch.tensor([weights]))
    assert c.tolist() == [capped]


def test_masked_tokens_change_nothing_whatever_they_hold():
    """Row 2's second token is padding holding NaN and inf; row 3 has no token at all: weight 1."""
    old = torch.tensor([[LOG(0.5), LOG(0.2)], [LOG(0.5), float("nan")], [float("inf"), 0.0]])
    rollout = torch.tensor([[LOG(0.4), LOG(0.2)], [LOG(0.4), float("inf")], [float("-inf"), 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    expected = {"token": [[1.25, 1.0], [1.25, 1.0], [1.0, 1.0]], "sequence": [[1.25, 1.25], [1.25, 1.0], [1.0, 1.0]]}
    for level, weights in expected.items():
        w, capped = rollout_is_weights(old, rollout, mask, level, "truncate", 2.0)
        torch.testing.assert_close(w, torch.tensor(weights))
        assert not capped.any()
    diff = prob_abs_diff(old, rollout, mask)
    torch.testing.assert_close(diff, torch.tensor([[0.1, 0.0], [0.1, 0.0], [0.0, 0.0]]))


def test_the_weights_carry_no_gradient():
    old = OLD.clone().requires_grad_()
    w, _ = rollout_is_weights(old, ROLLOUT, ALL, "token", "truncate", 1.5)
    assert not w.requires_grad


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="level"):
        rollout_is_weights(OLD, ROLLOUT, ALL, "row", "truncate", 2.0)
    with pytest.raises(ValueError, match="mode"):
        rollout_is_weights(OLD, ROLLOUT, ALL, "token", "clip", 2.0)
    with pytest.raises(ValueError, match="cap"):
        rollout_is_weights(OLD, ROLLOUT, ALL, "token", "truncate", 0.0)


def _gradient(weight_fn):
    """∇θ of the surrogate summed over every one-token response y, each weighted by q(y), the rollout
    engine's probability of sampling it: the exact expectation of the loss over the engine's samples."""
    theta = torch.tensor([0.3, -1.0, 0.8, 0.0], requires_grad=True)
    rollout = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 0.4]), dim=0)  # q ≠ π_θ
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.0])
    logprobs = torch.log_softmax(theta, dim=0)
    loss, _ = clipped_policy_loss(logprobs, logprobs.detach(), advantages, 0.2, 0.28)  # π_old = π_θ
    weights = weight_fn(logprobs.detach().unsqueeze(1), rollout.unsqueeze(1)).squeeze(1)
    (torch.exp(rollout) * weights * loss).sum().backward()
    on_policy = torch.autograd.grad(-(torch.softmax(theta, 0) * advantages).sum(), theta)[0]  # −∇ E_π[A]
    return theta.grad, on_policy, torch.exp(logprobs.detach() - rollout)


def _tis(cap: float):
    return lambda old, rollout: rollout_is_weights(old, rollout, torch.ones_like(old), "token", "truncate", cap)[0]


def test_token_is_restores_the_on_policy_gradient_and_the_cap_truncates_it():
    uncorrected, on_policy, rho = _gradient(lambda old, rollout: torch.ones_like(old))
    assert (uncorrected - on_policy).abs().max() > 0.05  # the engine's samples bias the gradient
    full, on_policy, _ = _gradient(_tis(1e6))
    torch.testing.assert_close(full, on_policy, atol=1e-6, rtol=0)
    # with a cap below the largest ρ, the gradient is the one of weights min(ρ, C), exactly
    cap = float(rho.max()) * 0.9
    truncated, _, _ = _gradient(_tis(cap))
    expected, _, _ = _gradient(lambda o, r: torch.clamp(torch.exp(o - r), max=cap))
    torch.testing.assert_close(truncated, expected, atol=1e-7, rtol=0)
    assert (truncated - on_policy).abs().max() > 1e-3
