"""Clipped surrogate (Clip-Higher, dual clip) and value loss: golden values, zero-gradient properties."""

import math

import pytest
import torch

from dapo.algo import clipped_policy_loss, clipped_value_loss, explained_variance, token_mean


def test_decoupled_clip_values_and_grads():
    # ε_low = 0.2, ε_high = 0.28
    # tok0: Â=+1, r=1.5 -> clipped at 1.28 -> ℓ=−1.28, dℓ/dlogπ = 0
    # tok1: Â=−1, r=0.5 -> clipped at 0.80 -> ℓ=+0.80, dℓ/dlogπ = 0
    # tok2: Â=+1, r=1.1 -> inside           -> ℓ=−1.10, dℓ/dlogπ = −r·Â = −1.1
    # tok3: Â=−1, r=1.5 -> inside (min picks the unclipped, larger loss) -> ℓ=+1.5, dℓ/dlogπ = +1.5
    # tok4: Â=+1, r=0.5 -> inside for a positive advantage -> ℓ=−0.5, dℓ/dlogπ = −0.5
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    loss, stats = clipped_policy_loss(logp, torch.zeros(5), adv, 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([-1.28, 0.80, -1.10, 1.5, -0.5]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 0.0, -1.1, 1.5, -0.5]))
    assert stats.clipped_high.tolist() == [True, False, False, False, False]
    assert stats.clipped_low.tolist() == [False, True, False, False, False]
    assert not stats.dual_clipped.any()
    torch.testing.assert_close(stats.approx_kl, -torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5])))


def test_clip_higher_lets_low_probability_tokens_rise_further():
    # DAPO §3.1: r = 1.25 is clipped by PPO's symmetric ε = 0.2 but not by ε_high = 0.28.
    logp = torch.tensor([math.log(1.25)])
    _, ppo = clipped_policy_loss(logp, torch.zeros(1), torch.ones(1), 0.2, 0.2)
    _, dapo = clipped_policy_loss(logp, torch.zeros(1), torch.ones(1), 0.2, 0.28)
    assert ppo.clipped_high.item() and not dapo.clipped_high.item()


def test_dual_clip_bounds_negative_advantage_loss():
    # c = 10, Â = −1: r = 20 -> max(20, 1.28·... ) = 20 > c -> ℓ = 10, zero grad, dual-clipped
    #                 r = 5  -> ℓ = 5 (< c), grad = r = 5
    # Â = +1, r = 20 -> upper clip: ℓ = −1.28, the dual clip never applies to positive advantages
    logp = torch.log(torch.tensor([20.0, 5.0, 20.0])).requires_grad_()
    adv = torch.tensor([-1.0, -1.0, 1.0])
    loss, stats = clipped_policy_loss(logp, torch.zeros(3), adv, 0.2, 0.28, dual_clip_c=10.0)
    torch.testing.assert_close(loss, torch.tensor([10.0, 5.0, -1.28]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 5.0, 0.0]))
    assert stats.dual_clipped.tolist() == [True, False, False]


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip_c"):
        clipped_policy_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), 0.2, 0.2, dual_clip_c=1.0)


def test_log_ratio_clamp_keeps_loss_finite():
    loss, stats = clipped_policy_loss(
        torch.tensor([200.0]), torch.zeros(1), -torch.ones(1), 0.2, 0.28, log_ratio_clamp=20.0
    )
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(stats.ratio, torch.tensor([math.exp(20.0)]))


@pytest.mark.parametrize("seed", range(4))
def test_clipped_tokens_get_exactly_zero_gradient_and_others_the_unclipped_one(seed):
    gen = torch.Generator().manual_seed(seed)
    old = torch.randn(64, generator=gen, dtype=torch.float64)
    logp = (old + 0.4 * torch.randn(64, generator=gen, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(64, generator=gen, dtype=torch.float64)
    loss, stats = clipped_policy_loss(logp, old, adv, 0.2, 0.28, dual_clip_c=3.0)
    loss.sum().backward()
    ratio = torch.exp(logp.detach() - old)
    clipped = stats.clipped_high | stats.clipped_low | stats.dual_clipped
    assert clipped.any() and (~clipped).any()
    assert torch.equal(logp.grad[clipped], torch.zeros(int(clipped.sum()), dtype=torch.float64))
    # inside: ℓ = −Â r, so dℓ/dlogπ = −Â r
    torch.testing.assert_close(logp.grad[~clipped], (-adv * ratio)[~clipped])


def test_on_policy_gradient_is_vanilla_policy_gradient():
    # r = 1 and any ε: dℓ/dlogπ = −Â (REINFORCE with the advantage as weight)
    adv = torch.tensor([0.5, -2.0, 1.5])
    logp = torch.tensor([-1.0, -0.3, -2.0], requires_grad=True)
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, 0.2, 0.28)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -adv)


def test_policy_loss_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(11)
    old = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    # keep ratios strictly away from the clip kinks so finite differences are well defined
    offsets = torch.tensor([0.05, -0.05, 0.5, -0.5, 0.1], dtype=torch.float64).repeat(3, 1)
    adv = torch.randn(3, 1, generator=gen, dtype=torch.float64)

    def f(logp):
        return clipped_policy_loss(logp, old, adv, 0.2, 0.28, dual_clip_c=3.0)[0]

    assert torch.autograd.gradcheck(f, ((old + offsets).requires_grad_(),))


def test_clipped_value_loss_hand_computed():
    # V_old = 1.0, R = 2.0, clip 0.2
    # V = 1.5: unclipped (1.5−2)² = 0.25, V_clip = 1.2 -> (1.2−2)² = 0.64 -> ℓ = ½·0.64 = 0.32, clipped, grad 0
    # V = 1.1: V_clip = 1.1 -> both 0.81 -> ℓ = 0.405, not clipped, grad = V − R = −0.9
    values = torch.tensor([1.5, 1.1], requires_grad=True)
    loss, clipped = clipped_value_loss(values, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), 0.2)
    torch.testing.assert_close(loss, torch.tensor([0.32, 0.405]))
    assert clipped.tolist() == [True, False]
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([0.0, -0.9]))


def test_values_inside_the_clip_range_are_never_counted_as_clipped():
    """old + (V − old) is not always V in float32; a token the clip never touched must not count (nor change
    the loss), else vf_clipfrac counts rounding steps and depends on the order of a sum."""
    gen = torch.Generator().manual_seed(0)
    values, old = torch.randn(2, 100_000, generator=gen) * 3
    inside = (values - old).abs() < 0.5
    values, old = values[inside], old[inside]
    returns = torch.randn(len(values), generator=gen)
    assert ((old + (values - old)) != values).any()  # the rounding this guards against occurs here
    loss, clipped = clipped_value_loss(values, old, returns, 0.5)
    assert not clipped.any()
    torch.testing.assert_close(loss, 0.5 * (values - returns) ** 2, atol=0, rtol=0)


def test_unclipped_value_loss():
    loss, clipped = clipped_value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]), None)
    torch.testing.assert_close(loss, torch.tensor([2.0]))
    assert not clipped.any()


def test_explained_variance_hand_computed():
    # R = [1, 2, 3], V = [1, 2, 2]: residual [0, 0, 1], Var_pop = 2/9; Var_pop(R) = 2/3 -> EV = 1 − 1/3 = 2/3
    mask = torch.tensor([1, 1, 1, 0])
    ev = explained_variance(torch.tensor([1.0, 2.0, 2.0, 99.0]), torch.tensor([1.0, 2.0, 3.0, -5.0]), mask)
    torch.testing.assert_close(ev, torch.tensor(2 / 3))
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(explained_variance(returns, returns, torch.ones(4)), torch.tensor(1.0))
    torch.testing.assert_close(explained_variance(torch.full((4,), 2.5), returns, torch.ones(4)), torch.tensor(0.0))


# ---------------------------------------------------------------- masked garbage

LOSS_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def _shared_theta_grad(loss_fn, padding):
    """θ.grad for inputs base + θ, with ONE parameter θ shared by all positions (as a model's weights are):
    a NaN gradient at a single masked position would make it NaN. `padding` fills the masked positions."""
    theta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    base = -torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2
    out = loss_fn(torch.where(LOSS_MASK.bool(), base + theta, padding))
    token_mean(out, LOSS_MASK, int(LOSS_MASK.sum())).backward()
    return theta.grad, out


@pytest.mark.parametrize("dual_clip_c", [None, 3.0])
def test_policy_loss_masked_garbage_changes_nothing_in_loss_or_gradient(dual_clip_c, garbage):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2
    adv = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def loss_fn(old, adv):
        return lambda logp: clipped_policy_loss(logp, old, adv, 0.2, 0.28, dual_clip_c, mask=LOSS_MASK)[0]

    clean_grad, clean = _shared_theta_grad(loss_fn(old, adv), torch.zeros((), dtype=torch.float64))
    dirty_grad, dirty = _shared_theta_grad(
        loss_fn(garbage(old, LOSS_MASK), garbage(adv, LOSS_MASK, seed=1)), garbage(old, LOSS_MASK, seed=2)
    )
    assert torch.isfinite(dirty_grad)
    torch.testing.assert_close(dirty_grad, clean_grad)
    torch.testing.assert_close(dirty, clean)
    assert torch.equal(dirty[LOSS_MASK == 0], torch.zeros(int((LOSS_MASK == 0).sum()), dtype=torch.float64))


def test_policy_loss_mask_gives_neutral_stats_at_padding(garbage):
    # Â broadcast from (B, 1); the fully masked row 2 holds garbage everywhere.
    logp = garbage(torch.zeros(3, 4), LOSS_MASK)
    adv = garbage(torch.tensor([[1.0], [-1.0], [1.0]]), torch.tensor([[1], [1], [0]]))
    _, stats = clipped_policy_loss(logp, torch.log(torch.full((3, 4), 0.5)), adv, 0.2, 0.28, 3.0, mask=LOSS_MASK)
    masked = LOSS_MASK == 0
    assert not (stats.clipped_high | stats.clipped_low | stats.dual_clipped)[masked].any()
    assert torch.equal(stats.ratio[masked], torch.ones(int(masked.sum())))
    assert torch.equal(stats.approx_kl[masked], torch.zeros(int(masked.sum())))
    # valid tokens: r = 1/0.5 = 2 -> Â = +1 clipped high (row 0), Â = −1 inside (row 1)
    assert stats.clipped_high[0, :3].all() and not stats.clipped_low[1, :2].any()


def test_policy_loss_without_mask_is_elementwise():
    # No mask: garbage at a position can only affect that position's loss and gradient.
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, float("nan")])
    loss, _ = clipped_policy_loss(logp, torch.zeros(3), adv, 0.2, 0.28)
    loss[:2].sum().backward()
    torch.testing.assert_close(loss[:2], torch.tensor([-1.28, 0.80]))
    torch.testing.assert_close(logp.grad[:2], torch.zeros(2))


@pytest.mark.parametrize("clip_range", [None, 0.2])
def test_value_loss_masked_garbage_changes_nothing_in_loss_or_gradient(clip_range, garbage):
    gen = torch.Generator().manual_seed(1)
    old_values = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    returns = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def loss_fn(old_values, returns):
        return lambda values: clipped_value_loss(values, old_values, returns, clip_range, mask=LOSS_MASK)[0]

    clean_grad, clean = _shared_theta_grad(loss_fn(old_values, returns), torch.zeros((), dtype=torch.float64))
    dirty_grad, dirty = _shared_theta_grad(
        loss_fn(garbage(old_values, LOSS_MASK), garbage(returns, LOSS_MASK, seed=1)), garbage(returns, LOSS_MASK, 2)
    )
    assert torch.isfinite(dirty_grad)
    torch.testing.assert_close(dirty_grad, clean_grad)
    torch.testing.assert_close(dirty, clean)
    assert torch.equal(dirty[LOSS_MASK == 0], torch.zeros(int((LOSS_MASK == 0).sum()), dtype=torch.float64))


def test_explained_variance_ignores_masked_garbage(garbage):
    # Same hand-computed case as above: EV = 2/3 over the three valid entries.
    mask = torch.tensor([1, 1, 1, 0])
    values = garbage(torch.tensor([1.0, 2.0, 2.0, 0.0]), mask)
    returns = garbage(torch.tensor([1.0, 2.0, 3.0, 0.0]), mask, seed=1)
    torch.testing.assert_close(explained_variance(values, returns, mask), torch.tensor(2 / 3))
