"""dapo.rollout.sampling: the filters keep exactly the right tokens; the race samples softmax."""

import math

import pytest
import torch

from dapo.rollout.sampling import sample_from_logits, sampling_logits

# probabilities 0.5, 0.3, 0.15, 0.05 (sorted descending at indices 2, 0, 3, 1)
PROBS = torch.tensor([[0.3, 0.05, 0.5, 0.15]])
LOGITS = PROBS.log()


def kept(x):
    return set(torch.isfinite(x[0]).nonzero().squeeze(1).tolist())


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (1.0, {0, 1, 2, 3}),
        (0.5, {2}),  # mass before token 0 is 0.5, not < 0.5
        (0.51, {2, 0}),
        (0.75, {2, 0}),  # mass before token 3 is 0.8
        (0.81, {2, 0, 3}),
        (0.01, {2}),  # the top token always survives
    ],
)
def test_top_p_keeps_smallest_prefix_reaching_mass(top_p, expected):
    assert kept(sampling_logits(LOGITS, 1.0, 0, top_p, 0.0)) == expected


@pytest.mark.parametrize(
    "top_k, expected", [(0, {0, 1, 2, 3}), (-1, {0, 1, 2, 3}), (1, {2}), (2, {2, 0}), (3, {2, 0, 3})]
)
def test_top_k(top_k, expected):
    assert kept(sampling_logits(LOGITS, 1.0, top_k, 1.0, 0.0)) == expected


def test_min_p_relative_to_top_token():
    # threshold 0.5 * 0.5 = 0.25: keeps 0.5 and 0.3
    assert kept(sampling_logits(LOGITS, 1.0, 0, 1.0, 0.5)) == {2, 0}


def test_filters_compose_in_order_and_temperature_scales():
    # top_k=3 leaves {0.5, 0.3, 0.15} renormalised to {0.526, 0.316, 0.158}; top_p=0.6 then keeps 2 tokens.
    assert kept(sampling_logits(LOGITS, 1.0, 3, 0.6, 0.0)) == {2, 0}
    x = sampling_logits(LOGITS, 2.0, 0, 1.0, 0.0)
    torch.testing.assert_close(torch.softmax(x, -1), torch.softmax(LOGITS / 2.0, -1))


def test_exponential_race_matches_softmax_chi_square():
    # 40k draws from a fixed 4-way distribution: Pearson chi-square with 3 dof must be below the
    # p = 0.001 critical value 16.27 (deterministic with the fixed seed).
    g = torch.Generator().manual_seed(0)
    draws = sample_from_logits(LOGITS.expand(40_000, 4), g)
    counts = torch.bincount(draws, minlength=4).double()
    expected = PROBS[0].double() * 40_000
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.27, (counts, expected)
    # Removed tokens are never drawn.
    x = sampling_logits(LOGITS, 1.0, 2, 1.0, 0.0).expand(10_000, 4)
    assert set(sample_from_logits(x, g).tolist()) == {0, 2}
    assert not math.isnan(chi2)
