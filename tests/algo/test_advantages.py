"""Advantage estimators: hand-computed values and the properties that make them trustworthy."""

import math

import pytest
import torch

from dapo.algo import (
    broadcast_to_tokens,
    drgrpo_advantages,
    gae_advantages,
    group_relative_advantages,
    grpo_advantages,
    masked_whiten,
    rloo_advantages,
    token_level_rewards,
)


def test_grpo_advantages_hand_computed():
    # group 0: one of three correct. mean = 1/3, unbiased std = sqrt((4/9 + 1/9 + 1/9) / 2) = 1/sqrt(3)
    #   Â = (2/3)·sqrt(3) = 1.1547,  (−1/3)·sqrt(3) = −0.5774
    # group 1: all correct -> all-equal group -> Â = 0 (DAPO §3.2)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = torch.tensor([[1.1547, -0.5774, -0.5774], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(grpo_advantages(rewards), expected, atol=1e-4, rtol=0)


def test_grpo_std_is_bessel_corrected():
    # G = 2, rewards ±1: mean 0, unbiased std = sqrt((1 + 1) / 1) = sqrt(2); population std would be 1.
    adv = grpo_advantages(torch.tensor([[1.0, -1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1 / (math.sqrt(2) + 1e-6), -1 / (math.sqrt(2) + 1e-6)]]))


def test_dapo_scores_plus_minus_one_hand_computed():
    # DAPO's rule reward is ±1. Group [1, −1, −1, −1]: mean −0.5, deviations [1.5, −.5, −.5, −.5],
    # unbiased var = (2.25 + 3·0.25) / 3 = 1, std 1 -> Â = [1.5, −0.5, −0.5, −0.5] (up to eps).
    adv = grpo_advantages(torch.tensor([[1.0, -1.0, -1.0, -1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.5, -0.5, -0.5, -0.5]]), atol=1e-5, rtol=0)


def test_drgrpo_removes_mean_only():
    torch.testing.assert_close(
        drgrpo_advantages(torch.tensor([[1.0, 0.0, 0.0]])), torch.tensor([[2 / 3, -1 / 3, -1 / 3]])
    )


def test_rloo_leave_one_out_hand_computed():
    # i=0: baseline (0 + 0)/2 = 0 -> 1; i=1: (1 + 0)/2 = 0.5 -> −0.5; i=2 likewise.
    torch.testing.assert_close(rloo_advantages(torch.tensor([[1.0, 0.0, 0.0]])), torch.tensor([[1.0, -0.5, -0.5]]))


@pytest.mark.parametrize("estimator", [grpo_advantages, drgrpo_advantages, rloo_advantages])
def test_equal_rewards_give_exactly_zero_advantage(estimator):
    rewards = torch.tensor([[0.7, 0.7, 0.7, 0.7], [-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(estimator(rewards), torch.zeros_like(rewards))


@pytest.mark.parametrize("estimator", [grpo_advantages, drgrpo_advantages, rloo_advantages])
def test_group_of_one_gets_zero_advantage(estimator):
    assert torch.equal(estimator(torch.tensor([[3.0], [-2.0]])), torch.zeros(2, 1))


def test_grpo_is_invariant_to_affine_reward_changes():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    base = group_relative_advantages(rewards, eps=0.0)
    torch.testing.assert_close(group_relative_advantages(3.0 * rewards - 7.0, eps=0.0), base)


def test_advantages_sum_to_zero_per_group():
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    for estimator in (grpo_advantages, drgrpo_advantages, rloo_advantages):
        torch.testing.assert_close(estimator(rewards).sum(dim=1), torch.zeros(6, dtype=torch.float64))


def test_group_advantages_reject_flat_input():
    with pytest.raises(ValueError, match=r"\(P, G\)"):
        grpo_advantages(torch.zeros(8))


# ---------------------------------------------------------------- GAE


def test_gae_hand_computed_gamma1_lambda1():
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], value after the end = 0
    # δ2 = 1 − 0.7 = 0.3, δ1 = 0.7 − 0.6 = 0.1, δ0 = 0.6 − 0.5 = 0.1
    # Â = [0.5, 0.4, 0.3]; returns = Â + V = [1, 1, 1] (the undiscounted return)
    adv, ret = gae_advantages(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 1.0
    )
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_hand_computed_discounted():
    # γ = 0.9, λ = 0.5 (γλ = 0.45)
    # δ2 = 1 − 0.7 = 0.3; δ1 = 0.9·0.7 − 0.6 = 0.03; δ0 = 0.9·0.6 − 0.5 = 0.04
    # Â2 = 0.3; Â1 = 0.03 + 0.45·0.3 = 0.165; Â0 = 0.04 + 0.45·0.165 = 0.11425
    adv, ret = gae_advantages(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.5
    )
    torch.testing.assert_close(adv, torch.tensor([[0.11425, 0.165, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.61425, 0.765, 1.0]]))


def _gae_reference(rewards, values, mask, gamma, lam):
    """Slow, obviously-correct reference: per row, keep the valid positions, run textbook GAE on them."""
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        positions = [t for t in range(values.shape[1]) if mask[b, t] > 0]
        running, next_value = 0.0, 0.0
        for t in reversed(positions):
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            adv[b, t] = running
            next_value = float(values[b, t])
    return adv, (adv + values) * mask


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_loop_reference_with_holes_in_mask(seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    values = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 9, generator=gen) > 0.3).double()
    gamma, lam = 0.97, 0.9
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


GAE_MASK = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_gae_masked_positions_change_nothing(garbage):
    # Row 2 has holes, row 3 is fully masked (e.g. a filtered response); garbage in rewards AND values.
    gen = torch.Generator().manual_seed(7)
    rewards = torch.randn(4, 6, generator=gen)
    values = torch.randn(4, 6, generator=gen)
    adv, ret = gae_advantages(rewards, values, GAE_MASK, 0.99, 0.95)
    bad_values = garbage(values, GAE_MASK, seed=1).requires_grad_()
    adv2, ret2 = gae_advantages(garbage(rewards, GAE_MASK), bad_values, GAE_MASK, 0.99, 0.95)
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)
    masked = GAE_MASK == 0
    assert torch.equal(adv2[masked], torch.zeros(int(masked.sum()))) and torch.equal(ret2[masked], adv2[masked])
    # Gradient w.r.t. the values: as without garbage where valid, exactly 0 where masked (never 0·NaN).
    clean_values = values.clone().requires_grad_()
    gae_advantages(rewards, clean_values, GAE_MASK, 0.99, 0.95)[0].sum().backward()
    adv2.sum().backward()
    torch.testing.assert_close(bad_values.grad, clean_values.grad)
    assert torch.equal(bad_values.grad[masked], torch.zeros(int(masked.sum())))


def test_inf_reward_in_a_masked_row_does_not_reach_the_whitened_batch(garbage):
    # The PPO path: GAE then whitening over the whole batch. Garbage in one fully masked row used to turn
    # every advantage of the batch into NaN (inf·0 = NaN in the recursion, then in the batch mean).
    gen = torch.Generator().manual_seed(4)
    rewards = torch.randn(4, 6, generator=gen)
    values = torch.randn(4, 6, generator=gen)
    clean = masked_whiten(gae_advantages(rewards, values, GAE_MASK, 1.0, 1.0)[0], GAE_MASK)
    dirty_rewards = garbage(rewards, GAE_MASK)
    out = masked_whiten(gae_advantages(dirty_rewards, values, GAE_MASK, 1.0, 1.0)[0], GAE_MASK)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean)


def test_gae_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    values = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: gae_advantages(rewards, v, mask, 0.9, 0.8)[0], (values,))


def test_masked_whiten_hand_computed():
    # valid [1, 2, 3]: mean 2, unbiased var (1 + 0 + 1) / 2 = 1 -> [−1, 0, 1]; masked entry -> 0
    out = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    # shift_mean=False keeps the mean: [−1, 0, 1] + 2 = [1, 2, 3]
    out = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]), shift_mean=False)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-6, rtol=0)


def test_masked_whiten_nan_at_a_masked_position():
    # Two valid values a = −148.01, b = 754169.33: x − mean = ∓(b − a)/2, unbiased var = 2·((b − a)/2)² / 1,
    # so std = (b − a)/√2 and x̂ = ∓1/√2 = ∓0.70711, whatever a and b are. The masked NaN used to make all NaN.
    out = masked_whiten(torch.tensor([[-148.01], [754169.33], [float("nan")]]), torch.tensor([[1], [1], [0]]))
    torch.testing.assert_close(out, torch.tensor([[-(0.5**0.5)], [0.5**0.5], [0.0]]))


def test_masked_whiten_garbage_changes_nothing_in_values_or_gradients(garbage):
    gen = torch.Generator().manual_seed(5)
    values = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    weights = torch.randn(3, 5, generator=gen, dtype=torch.float64)  # a generic downstream use
    clean = values.clone().requires_grad_()
    expected = masked_whiten(clean, mask)
    (expected * weights).sum().backward()
    dirty = garbage(values, mask).requires_grad_()
    out = masked_whiten(dirty, mask)
    (out * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(dirty.grad, clean.grad)
    assert torch.equal(dirty.grad[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=torch.float64))


def test_masked_whiten_degenerate_masks_give_zeros():
    # empty mask: no mean to remove -> zeros (was 0/0 = NaN); one valid entry: x − mean = 0 -> 0
    assert torch.equal(masked_whiten(torch.tensor([[3.0, float("nan")]]), torch.tensor([[0, 0]])), torch.zeros(1, 2))
    assert torch.equal(masked_whiten(torch.tensor([[3.0, float("inf")]]), torch.tensor([[1, 0]])), torch.zeros(1, 2))


def test_broadcast_to_tokens_garbage_in_an_empty_row(garbage):
    # Row 1 has no valid token (filtered): its value may be anything and the row stays 0.
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    values = garbage(torch.tensor([2.0, 5.0, -1.0]), torch.tensor([1, 0, 1]))
    out = broadcast_to_tokens(values, mask)
    assert torch.equal(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_token_level_rewards_garbage_in_an_empty_row(garbage):
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    rewards = garbage(torch.tensor([2.0, 3.0]), torch.tensor([1, 0]))
    assert torch.equal(token_level_rewards(rewards, mask), torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))


def test_token_level_rewards_on_last_valid_token():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    out = token_level_rewards(torch.tensor([2.0, 3.0, 4.0]), mask)
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]))
