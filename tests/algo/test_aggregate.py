"""Loss aggregation: hand-computed modes and exact invariance to micro-batch and data-parallel splits."""

import pytest
import torch

from dapo.algo import (
    EXACT_AGGREGATION_MODES,
    LEGACY_TOKEN_MEAN,
    group_token_mean,
    loss_row_weights,
    masked_mean,
    micro_batch_token_mean_weights,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
    weighted_token_sum,
)

LOSS = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0], [6.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
GROUPS = torch.tensor([0, 0, 1])


def test_hand_computed_modes():
    # valid tokens: row0 [1, 2], row1 [3, 4, 5], row2 [6]; 6 tokens, sum 21, 3 sequences
    assert token_mean(LOSS, MASK, 6).item() == pytest.approx(21 / 6)  # 3.5
    # per-sequence means 1.5, 4, 6 -> 11.5 / 3
    assert seq_mean_token_mean(LOSS, MASK, 3).item() == pytest.approx(11.5 / 3)
    # per-sequence sums 3, 12, 6 -> 21 / 3 = 7
    assert seq_mean_token_sum(LOSS, MASK, 3).item() == pytest.approx(7.0)
    # Dr. GRPO with L = 3: 21 / (3 · 3)
    assert seq_mean_token_sum_norm(LOSS, MASK, 3, 3.0).item() == pytest.approx(21 / 9)
    # Eq. 8: group 0 = rows 0-1: 15 / 5 = 3; group 1 = row 2: 6 / 1 = 6; mean over groups = 4.5
    group_tokens = torch.tensor([5.0, 5.0, 1.0])
    assert group_token_mean(LOSS, MASK, group_tokens, 2).item() == pytest.approx(4.5)


def test_token_mean_over_micro_batches_is_not_the_mean_of_means():
    # The pitfall: averaging per-micro-batch token means (2 halves) gives 2.75, the true value is 3.0.
    loss = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    whole = token_mean(loss, mask, 5)
    parts = token_mean(loss[:1], mask[:1], 5) + token_mean(loss[1:], mask[1:], 5)
    naive = (token_mean(loss[:1], mask[:1], 2) + token_mean(loss[1:], mask[1:], 3)) / 2
    assert whole.item() == pytest.approx(3.0) and parts.item() == pytest.approx(3.0)
    assert naive.item() == pytest.approx(2.75)


@pytest.mark.parametrize("mode", EXACT_AGGREGATION_MODES)
def test_row_weights_reproduce_each_mode(mode):
    direct = {
        "token-mean": lambda: token_mean(LOSS, MASK, 6),
        "seq-mean-token-mean": lambda: seq_mean_token_mean(LOSS, MASK, 3),
        "seq-mean-token-sum": lambda: seq_mean_token_sum(LOSS, MASK, 3),
        "seq-mean-token-sum-norm": lambda: seq_mean_token_sum_norm(LOSS, MASK, 3, 3.0),
        "group-token-mean": lambda: group_token_mean(LOSS, MASK, torch.tensor([5.0, 5.0, 1.0]), 2),
    }[mode]()
    weights = loss_row_weights(MASK, mode, group_index=GROUPS, norm_length=3.0)
    torch.testing.assert_close(weighted_token_sum(LOSS, MASK, weights), direct)


def test_legacy_token_mean_weighs_each_micro_batch_mean_by_its_share_of_rows():
    """verl's legacy path, by hand. Rows of 2, 3 and 1 tokens (LOSS, MASK); micro-batches {0, 1} and {2}:
    (2/3) · (1+2+3+4+5)/5 + (1/3) · 6/1 = 2 + 2 = 4, where the exact token mean is 21/6 = 3.5."""
    weights = micro_batch_token_mean_weights(MASK, [torch.tensor([0, 1]), torch.tensor([2])], 3)
    torch.testing.assert_close(weights, torch.tensor([2 / 15, 2 / 15, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(weighted_token_sum(LOSS, MASK, weights), torch.tensor(4.0))
    # the split is the point: one micro-batch is the token mean, one row per micro-batch the sample mean
    whole = micro_batch_token_mean_weights(MASK, [torch.arange(3)], 3)
    torch.testing.assert_close(weighted_token_sum(LOSS, MASK, whole), token_mean(LOSS, MASK, 6))
    single = micro_batch_token_mean_weights(MASK, [torch.tensor([i]) for i in range(3)], 3)
    torch.testing.assert_close(weighted_token_sum(LOSS, MASK, single), seq_mean_token_mean(LOSS, MASK, 3))
    with pytest.raises(ValueError, match="depends on the micro-batch split"):
        loss_row_weights(MASK, LEGACY_TOKEN_MEAN)


def _random_batch(seed, rows=12, cols=7):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, cols + 1, (rows,), generator=gen)
    mask = (torch.arange(cols).unsqueeze(0) < lengths.unsqueeze(1)).long()
    groups = torch.arange(rows) // 3
    return gen, loss, mask, groups


@pytest.mark.parametrize("mode", EXACT_AGGREGATION_MODES)
@pytest.mark.parametrize("seed", range(5))
def test_any_micro_batch_split_sums_to_the_whole(mode, seed):
    gen, loss, mask, groups = _random_batch(seed)
    weights = loss_row_weights(mask, mode, group_index=groups, norm_length=7.0)
    whole = weighted_token_sum(loss, mask, weights)
    permutation = torch.randperm(loss.shape[0], generator=gen)  # micro-batches need not be contiguous
    cuts = sorted(torch.randint(1, loss.shape[0], (3,), generator=gen).tolist())
    parts = [permutation[a:b] for a, b in zip([0, *cuts], [*cuts, loss.shape[0]], strict=True)]
    total = sum(weighted_token_sum(loss[p], mask[p], weights[p]) for p in parts)
    torch.testing.assert_close(total, whole)


@pytest.mark.parametrize("mode", EXACT_AGGREGATION_MODES)
def test_gradients_accumulated_over_micro_batches_equal_full_batch(mode):
    _, loss, mask, groups = _random_batch(42)
    weights = loss_row_weights(mask, mode, group_index=groups, norm_length=7.0)
    full = loss.clone().requires_grad_()
    weighted_token_sum(full, mask, weights).backward()
    accumulated = loss.clone().requires_grad_()
    for rows in (slice(0, 5), slice(5, 6), slice(6, 12)):
        weighted_token_sum(accumulated[rows], mask[rows], weights[rows]).backward()
    torch.testing.assert_close(accumulated.grad, full.grad)


@pytest.mark.parametrize("mode", EXACT_AGGREGATION_MODES)
def test_data_parallel_average_times_world_size_equals_whole(mode):
    # DDP averages gradients over ranks, so each rank scales its loss by world_size.
    _, loss, mask, groups = _random_batch(5)
    weights = loss_row_weights(mask, mode, group_index=groups, norm_length=7.0)
    world_size = 3
    rank_losses = [
        world_size * weighted_token_sum(loss[r::world_size], mask[r::world_size], weights[r::world_size])
        for r in range(world_size)
    ]
    torch.testing.assert_close(sum(rank_losses) / world_size, weighted_token_sum(loss, mask, weights))


@pytest.mark.parametrize("mode", EXACT_AGGREGATION_MODES)
def test_masked_positions_change_nothing_in_value_or_gradient(mode, garbage):
    _, loss, mask, groups = _random_batch(9)
    weights = loss_row_weights(mask, mode, group_index=groups, norm_length=7.0)
    clean = loss.clone().requires_grad_()
    expected = weighted_token_sum(clean, mask, weights)
    expected.backward()
    dirty = garbage(loss, mask).requires_grad_()
    out = weighted_token_sum(dirty, mask, weights)
    out.backward()
    torch.testing.assert_close(out, expected)
    # ∂L/∂ℓ = w_i where valid, exactly 0 where masked (the where's backward, not 0·garbage)
    torch.testing.assert_close(dirty.grad, clean.grad)
    assert torch.equal(dirty.grad[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=loss.dtype))


@pytest.mark.parametrize(
    "reduce",
    [
        lambda loss, mask: token_mean(loss, mask, 6),
        lambda loss, mask: seq_mean_token_mean(loss, mask, 3),
        lambda loss, mask: seq_mean_token_sum(loss, mask, 3),
        lambda loss, mask: seq_mean_token_sum_norm(loss, mask, 3, 3.0),
        lambda loss, mask: group_token_mean(loss, mask, torch.tensor([5.0, 5.0, 1.0]), 2),
        masked_mean,
    ],
    ids=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "group", "mean"],
)
def test_direct_reductions_ignore_masked_garbage(reduce, garbage):
    clean = LOSS.clone().requires_grad_()
    expected = reduce(clean, MASK)
    expected.backward()
    dirty = garbage(LOSS, MASK).requires_grad_()
    out = reduce(dirty, MASK)
    out.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(dirty.grad, clean.grad)


def test_empty_rows_are_not_counted_as_sequences():
    # Row 1 is masked out entirely (e.g. overlong filtering): seq-mean over the 2 remaining rows.
    loss = torch.tensor([[2.0, 4.0], [9.0, 9.0], [6.0, 0.0]])
    mask = torch.tensor([[1, 1], [0, 0], [1, 0]])
    weights = loss_row_weights(mask, "seq-mean-token-mean")
    # row means 3 and 6 -> 4.5
    assert weighted_token_sum(loss, mask, weights).item() == pytest.approx(4.5)


def test_unknown_mode_and_missing_arguments_are_errors():
    with pytest.raises(ValueError, match="unknown loss aggregation mode"):
        loss_row_weights(MASK, "sum")
    with pytest.raises(ValueError, match="norm_length"):
        loss_row_weights(MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="group_index"):
        loss_row_weights(MASK, "group-token-mean")


def test_masked_mean():
    assert masked_mean(torch.tensor([1.0, 3.0, float("nan")]), torch.tensor([1, 1, 0])).item() == 2.0
    assert masked_mean(torch.tensor([5.0]), torch.tensor([0])).item() == 0.0
