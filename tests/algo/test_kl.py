"""KL estimators and controllers: hand-computed values, non-negativity, unbiasedness."""

import math

import pytest
import torch

from dapo.algo import KL_ESTIMATORS, adaptive_kl_coef, kl_estimate, kl_penalized_token_rewards, masked_mean


def test_estimators_hand_computed():
    # δ = log 2 = 0.693147 on token 1, 0 on token 0
    logp = torch.tensor([0.0, math.log(2.0)])
    ref = torch.zeros(2)
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([0.0, 0.693147]))
    torch.testing.assert_close(kl_estimate(-logp, ref, "abs"), torch.tensor([0.0, 0.693147]))
    # ½ δ² = 0.240227
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([0.0, 0.240227]))
    # e^{−δ} + δ − 1 = 0.5 + 0.693147 − 1 = 0.193147
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([0.0, 0.193147]))


def test_k3_is_nonnegative_and_zero_on_equal_policies():
    gen = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_estimate(logp, logp, "k3"), torch.zeros(100))


def test_k3_is_clamped_and_finite_for_extreme_ratios():
    out = kl_estimate(torch.tensor([-60.0, 60.0]), torch.zeros(2), "k3")
    assert torch.isfinite(out).all() and out.max().item() == 10.0


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_k1_and_k3_are_unbiased_estimates_of_kl(kind):
    # Tokens sampled from p; E_p[estimate] = KL(p ‖ q) = Σ p log(p/q).
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    estimate = kl_estimate(p.log()[samples], q.log()[samples], kind).mean()
    assert estimate.item() == pytest.approx(true_kl.item(), abs=5e-3)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")
    assert set(KL_ESTIMATORS) == {"k1", "abs", "k2", "k3"}


def test_kl_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(2)
    ref = torch.randn(6, generator=gen, dtype=torch.float64)
    logp = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    for kind in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x, k=kind: kl_estimate(x, ref, k), (logp,))


def test_in_reward_penalty_hand_computed():
    # r' = r − 0.5 · kl on valid tokens: [0 − 0.05, 0 − 0.1, 1 − 0.15, masked -> 0]
    out = kl_penalized_token_rewards(
        torch.tensor([[0.0, 0.0, 1.0, 0.0]]),
        torch.tensor([[0.1, 0.2, 0.3, 7.0]]),
        0.5,
        torch.tensor([[1, 1, 1, 0]]),
    )
    torch.testing.assert_close(out, torch.tensor([[-0.05, -0.1, 0.85, 0.0]]))


def test_adaptive_kl_controller_hand_computed():
    # KL twice the target: error clipped to +0.2; n/horizon = 100/1000 -> β · (1 + 0.02)
    assert adaptive_kl_coef(0.1, 0.2, 0.1, horizon=1000, num_steps=100) == pytest.approx(0.102)
    # KL half the target: error −0.5 clipped to −0.2 -> β · 0.98
    assert adaptive_kl_coef(0.1, 0.05, 0.1, horizon=1000, num_steps=100) == pytest.approx(0.098)
    # on target: unchanged
    assert adaptive_kl_coef(0.1, 0.1, 0.1, horizon=1000, num_steps=100) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        adaptive_kl_coef(0.1, 0.1, 0.0, horizon=1000, num_steps=1)


KL_MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("kind", KL_ESTIMATORS)
def test_masked_garbage_changes_nothing_in_kl_or_its_gradient(kind, garbage):
    # log π_θ = base + θ with ONE parameter θ shared by every position, as a model's weights are: a NaN gradient
    # at a single padded position would make θ.grad NaN. With mask=, the masked inputs never reach the
    # arithmetic, so the estimate there is 0 and its gradient exactly 0.
    base = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -0.2]])
    ref = torch.tensor([[-1.2, -1.5, -0.7], [-0.9, -0.4, -0.1]])

    def grad_and_kl(ref_logprobs, padding):
        theta = torch.zeros((), requires_grad=True)
        logprobs = torch.where(KL_MASK.bool(), base + theta, padding)
        kl = kl_estimate(logprobs, ref_logprobs, kind, mask=KL_MASK)
        masked_mean(kl, KL_MASK).backward()
        return theta.grad, kl

    clean_grad, clean_kl = grad_and_kl(ref, torch.zeros(()))
    dirty_grad, dirty_kl = grad_and_kl(garbage(ref, KL_MASK), garbage(base, KL_MASK, seed=1))
    torch.testing.assert_close(dirty_kl, clean_kl)
    assert torch.equal(dirty_kl[KL_MASK == 0], torch.zeros(3))
    torch.testing.assert_close(dirty_grad, clean_grad)
    # Without a mask the estimate is elementwise: valid positions are still exactly the clean ones.
    unmasked = kl_estimate(base, garbage(ref, KL_MASK), kind)
    torch.testing.assert_close(unmasked[KL_MASK.bool()], clean_kl[KL_MASK.bool()])


def test_in_reward_penalty_ignores_masked_garbage(garbage):
    # KL estimates at padding are often inf/NaN (log π of a pad token); they must not make the rewards NaN.
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards = garbage(torch.tensor([[0.0, 0.0, 1.0, 0.0]]), mask)
    kl = garbage(torch.tensor([[0.1, 0.2, 0.3, 0.0]]), mask, seed=1)
    out = kl_penalized_token_rewards(rewards, kl, 0.5, mask)
    torch.testing.assert_close(out, torch.tensor([[-0.05, -0.1, 0.85, 0.0]]))
    assert out[0, 3].item() == 0.0
