"""Overlong shaping (DAPO Eq. 13), overlong filtering, and the dynamic-sampling criterion (Eq. 11)."""

import pytest
import torch

from dapo.algo import informative_groups, overlong_filter_mask, overlong_penalty


@pytest.mark.parametrize("length, expected", [(15, 0.0), (16, -0.2), (18, -0.6), (20, -1.0), (25, -1.0), (1, 0.0)])
def test_overlong_penalty_eq13(length, expected):  # L_max = 20, L_cache = 5 -> free up to 15 tokens
    assert overlong_penalty(torch.tensor([length]), 20, 5).item() == pytest.approx(expected)


def test_overlong_penalty_paper_setting():
    # L_max = 20480, L_cache = 4096: 16384 -> 0, 18432 -> (16384 − 18432) / 4096 = −0.5, 20480 -> −1
    out = overlong_penalty(torch.tensor([16384, 18432, 20480]), 20480, 4096)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.5, -1.0]))


def test_overlong_penalty_factor_scales():
    torch.testing.assert_close(overlong_penalty(torch.tensor([18]), 20, 5, penalty_factor=0.5), torch.tensor([-0.3]))


@pytest.mark.parametrize("buffer", [0, -1, 21])
def test_overlong_penalty_rejects_bad_buffer(buffer):
    with pytest.raises(ValueError, match="buffer_length"):
        overlong_penalty(torch.tensor([1]), 20, buffer)


def test_overlong_filter_masks_whole_truncated_rows():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    out = overlong_filter_mask(mask, torch.tensor([True, False, False]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0, 0], [1, 1, 0], [1, 1, 1]]))


def test_informative_groups():
    acc = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.bool)
    assert informative_groups(acc).tolist() == [True, False, False, True]
    assert informative_groups(acc.float()).tolist() == [True, False, False, True]
    assert informative_groups(torch.tensor([[1.0], [0.0]])).tolist() == [False, False]
    with pytest.raises(ValueError):
        informative_groups(torch.tensor([1, 0]))
