"""Loss aggregation: turn a (B, T) per-token loss into the scalar the optimiser minimises.

Pure functions. Every mode is a weighted token sum

    L = Σ_i w_i Σ_t m_{i,t} ℓ_{i,t}

whose per-row weights w_i are computed ONCE on the whole mini-batch (all micro-batches, all data-parallel
ranks) by `loss_row_weights`. Summing `weighted_token_sum` over any split of the mini-batch into
micro-batches therefore gives exactly the full-batch value: the split changes nothing. (Under DDP, which
AVERAGES gradients over ranks, the worker multiplies its loss by world_size; that belongs in workers/.)

Modes (B = responses in the mini-batch with at least one valid token, |o_i| = valid tokens of response i):

| mode                      | formula                                   | used by                           |
|---------------------------|-------------------------------------------|-----------------------------------|
| token-mean                | Σ_i Σ_t ℓ / Σ_i |o_i|                     | DAPO Eq. 12 (verl default)        |
| seq-mean-token-mean       | 1/B Σ_i (1/|o_i|) Σ_t ℓ                   | GRPO Eq. 5 (sample-level)         |
| seq-mean-token-sum        | 1/B Σ_i Σ_t ℓ                             | verl option                       |
| seq-mean-token-sum-norm   | 1/(B·L) Σ_i Σ_t ℓ, L a constant           | Dr. GRPO (arXiv:2503.20783)       |
| group-token-mean          | 1/P Σ_g (1/Σ_{i∈g}|o_i|) Σ_{i∈g} Σ_t ℓ    | DAPO Eq. 8 read literally         |
| token-mean-legacy         | Σ_m (n_m/N) · Σ_{t∈m} ℓ / Σ_{t∈m} 1       | verl's legacy path (the 50 AIME run) |

The last is the exception: verl's legacy actor (dp_actor with dynamic batch sizes) takes each micro-batch's own
token mean and weighs it by the micro-batch's share n_m/N of the mini-batch's responses, on each rank, and
DDP averages the ranks. That depends on the micro-batch split (and the rank split) by construction; it is
what produced the paper's reproductions, and some peers went back to it because it favours longer responses
(docs/algorithms.md). Its weights come from `micro_batch_token_mean_weights`, once the split is known.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The modes whose value is the same for any micro-batch and rank split (the weights of the whole mini-batch).
EXACT_AGGREGATION_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "group-token-mean",
)
LEGACY_TOKEN_MEAN = "token-mean-legacy"
AGGREGATION_MODES = (*EXACT_AGGREGATION_MODES, LEGACY_TOKEN_MEAN)


def zero_masked(values: Tensor, mask: Tensor) -> Tensor:
    """Zero out masked entries with `where`, so that inf/NaN garbage there cannot leak (inf·0 = NaN).

    Applied to a loss's INPUTS (not only its output), it also keeps the garbage out of the backward, which
    would otherwise compute 0·(garbage) = NaN at masked positions and pass it to every shared weight."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def token_mean(loss: Tensor, mask: Tensor, num_tokens: Tensor | float) -> Tensor:
    """Token-level loss, DAPO §3.3 (Eq. 12):  Σ_i Σ_t m_{i,t} ℓ_{i,t} / num_tokens.

    Args:
        loss: (B, T) per-token loss.
        mask: (B, T) 1 where the token counts.
        num_tokens: number of valid tokens of the WHOLE mini-batch (all micro-batches and ranks), supplied
            by the caller, so the sum of this function over micro-batches equals the full-batch value.
    Returns:
        0-dim loss.
    """
    return zero_masked(loss, mask).sum() / num_tokens


def seq_mean_token_mean(loss: Tensor, mask: Tensor, num_sequences: Tensor | float) -> Tensor:
    """Sample-level loss of GRPO (DAPO Eq. 5): the token mean inside each response, then a mean over responses.

    Rows with no valid token contribute 0 and must not be counted in `num_sequences` (verl HEAD excludes
    them too), e.g. responses masked out by overlong filtering.
    """
    per_sequence = zero_masked(loss, mask).sum(dim=1) / mask.to(loss.dtype).sum(dim=1).clamp(min=1.0)
    return per_sequence.sum() / num_sequences


def seq_mean_token_sum(loss: Tensor, mask: Tensor, num_sequences: Tensor | float) -> Tensor:
    """Token sum inside each response, mean over responses: Σ_i Σ_t m ℓ / num_sequences."""
    return zero_masked(loss, mask).sum() / num_sequences


def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, num_sequences: Tensor | float, norm_length: float) -> Tensor:
    """Dr. GRPO's constant normaliser (arXiv:2503.20783):  Σ_i Σ_t m ℓ / (num_sequences · L).

    L is a constant (Dr. GRPO uses the generation budget, the max response length), so a response's
    tokens are weighted the same whatever its length and whatever else is in the batch.

    Convention: we divide by the number of sequences as the mode's name says (and as Dr. GRPO's own code
    does). verl's mode of the same name divides by L only, so its value scales with the batch size.
    """
    return zero_masked(loss, mask).sum() / (num_sequences * norm_length)


def group_token_mean(loss: Tensor, mask: Tensor, group_num_tokens: Tensor, num_groups: Tensor | float) -> Tensor:
    """DAPO Eq. 8 read literally: a token mean within each prompt group, then a mean over groups.

        L = 1/P Σ_g  Σ_{i∈g} Σ_t m ℓ / Σ_{i∈g} |o_i|

    Args:
        loss, mask: (B, T).
        group_num_tokens: (B,) total valid tokens of the group that row i belongs to, counted over the
            whole mini-batch (so the function is exact on micro-batches too). Rows whose group has no
            valid token contribute 0.
        num_groups: number of groups P in the whole mini-batch that have at least one valid token.
    """
    per_row = zero_masked(loss, mask).sum(dim=1)
    return (per_row / group_num_tokens.to(loss.dtype).clamp(min=1.0)).sum() / num_groups


def loss_row_weights(
    mask: Tensor,
    mode: str,
    group_index: Tensor | None = None,
    norm_length: float | None = None,
) -> Tensor:
    """Per-row weights w_i of the WHOLE mini-batch such that Σ_i w_i Σ_t m ℓ is the `mode` aggregate.

    Args:
        mask: (B, T) valid-token mask of the whole mini-batch (every micro-batch, every rank).
        mode: one of AGGREGATION_MODES.
        group_index: (B,) prompt-group id of each row; needed for "group-token-mean".
        norm_length: the constant L; needed for "seq-mean-token-sum-norm".
    Returns:
        (B,) float64 weights (float64 so that splitting and re-summing is exact to rounding of the loss).
    """
    counts = mask.to(torch.float64).sum(dim=1)
    nonempty = counts > 0
    num_sequences = nonempty.sum().clamp(min=1)
    if mode == "token-mean":
        return torch.full_like(counts, 1.0) / counts.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        return torch.where(nonempty, 1.0 / (counts.clamp(min=1.0) * num_sequences), 0.0)
    if mode == "seq-mean-token-sum":
        return torch.full_like(counts, 1.0) / num_sequences
    if mode == "seq-mean-token-sum-norm":
        if norm_length is None or norm_length <= 0:
            raise ValueError(f"seq-mean-token-sum-norm needs norm_length > 0, got {norm_length}")
        return torch.full_like(counts, 1.0) / (num_sequences * norm_length)
    if mode == "group-token-mean":
        if group_index is None:
            raise ValueError("group-token-mean needs group_index")
        _, dense = torch.unique(group_index, return_inverse=True)
        group_tokens = torch.zeros(int(dense.max()) + 1, dtype=torch.float64).index_add_(0, dense, counts)
        num_groups = (group_tokens > 0).sum().clamp(min=1)
        row_group_tokens = group_tokens[dense]
        return torch.where(row_group_tokens > 0, 1.0 / (row_group_tokens.clamp(min=1.0) * num_groups), 0.0)
    if mode == LEGACY_TOKEN_MEAN:
        raise ValueError(f"{mode} depends on the micro-batch split: use micro_batch_token_mean_weights")
    raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {AGGREGATION_MODES}")


def micro_batch_token_mean_weights(mask: Tensor, micro_batches: list[Tensor], num_rows: int) -> Tensor:
    """Per-row weights of verl's legacy token mean: row i of micro-batch m gets (n_m / N) / T_m, with n_m its
    rows, T_m its valid tokens and N = `num_rows`, the responses of the (rank's) mini-batch; rows in no
    micro-batch get 0. Σ_i w_i Σ_t m ℓ is then Σ_m (n_m / N) · (token mean of micro-batch m).

    Args:
        mask: (B, T) valid-token mask.
        micro_batches: row indices of each micro-batch (disjoint).
        num_rows: N.
    Returns:
        (B,) float64 weights.
    """
    weights = torch.zeros(mask.shape[0], dtype=torch.float64)
    counts = mask.to(torch.float64).sum(dim=1)
    for rows in micro_batches:
        tokens = counts[rows].sum().clamp(min=1.0)
        weights[rows] = (len(rows) / max(1, num_rows)) / tokens
    return weights


def weighted_token_sum(loss: Tensor, mask: Tensor, row_weights: Tensor) -> Tensor:
    """Σ_i w_i Σ_t m_{i,t} ℓ_{i,t} for a micro-batch, with weights from `loss_row_weights` (sliced to it)."""
    per_row = zero_masked(loss, mask).sum(dim=1)
    return (per_row * row_weights.to(loss.dtype)).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over entries where mask is 1 (0-dim; NaN-free: 0 when the mask is empty)."""
    return zero_masked(values, mask).sum() / mask.to(values.dtype).sum().clamp(min=1.0)
