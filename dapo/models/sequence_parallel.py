"""Ulysses sequence parallelism for the packed shared-prefix forward (DeepSpeed-Ulysses; verl's `ulysses_sp`).

The ranks of a sequence-parallel (SP) group compute the same micro-batch together. Its packed tokens (prompts,
then the fed response tokens) are padded to a multiple of the group size N and cut into N equal slices; every
token-wise operation (embedding, norms, projections, MLP: nearly all FLOPs and activations) runs on a rank's own
slice. Attention needs every token, so around it two all-to-alls trade sequence for heads:

    before:  (tokens/N, heads, d)   --all-to-all-->   (tokens, heads/N, d)   attention over the whole packing
    after:   (tokens, heads/N, d)   --all-to-all-->   (tokens/N, heads, d)

Key/value heads are repeated up to N first when there are fewer than N of them (N must then be a multiple of
their count); otherwise N must divide both head counts.

What comes out are per-token values (log-probs, entropies, critic values) computed by the rank that holds each
predicting position; `sum_over_group` adds the ranks' parts so that every rank holds the whole (b, T) result and
computes the same loss. Its backward passes the gradient through unchanged: each rank's part depends only on its
own slice, and the loss it differentiates is the same on every rank, so the sum over the group of the weights'
gradients is the one-process gradient (the data-parallel reduction then adds the groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dapo.errors import DapoError


class SequenceParallelError(DapoError, ValueError):
    """A model and group size that Ulysses cannot split (one line for the user: what to change)."""


@dataclass(frozen=True)
class SequenceParallel:
    """One rank's place in its sequence-parallel group (a torch.distributed process group of `size` ranks)."""

    group: object
    rank: int
    size: int

    def check_heads(self, num_heads: int, num_kv_heads: int) -> None:
        """Refuse head counts this group size cannot split (one line naming what to change)."""
        if num_heads % self.size or (num_kv_heads % self.size and self.size % num_kv_heads):
            raise SequenceParallelError(
                f"ray.sequence_parallel={self.size} does not split this model's attention heads ({num_heads} query, "
                f"{num_kv_heads} key/value): it must divide the query heads, and divide the key/value heads or be a "
                "multiple of them"
            )

    def kv_repeats(self, num_kv_heads: int) -> int:
        """How many times each key/value head is repeated so that the group can split them."""
        return 1 if num_kv_heads % self.size == 0 else self.size // num_kv_heads

    def bounds(self, num_tokens: int) -> tuple[int, int, int]:
        """(start, stop, padded length): this rank's slice of `num_tokens` packed tokens padded to a multiple of
        the group size."""
        per_rank = max(1, math.ceil(num_tokens / self.size))
        return self.rank * per_rank, (self.rank + 1) * per_rank, per_rank * self.size

    def sequence_to_heads(self, x: Tensor) -> Tensor:
        """(tokens/N, heads, d) on each rank -> (tokens, heads/N, d): this rank's heads over the whole sequence."""
        n, heads, d = x.shape
        send = x.reshape(n, self.size, heads // self.size, d).transpose(0, 1).contiguous()  # chunk s goes to rank s
        received = _AllToAll.apply(send, self.group)  # chunk s: rank s's tokens, this rank's heads
        return received.reshape(self.size * n, heads // self.size, d)

    def heads_to_sequence(self, x: Tensor) -> Tensor:
        """The inverse: (tokens, heads/N, d) -> (tokens/N, heads, d)."""
        tokens, local_heads, d = x.shape
        send = x.reshape(self.size, tokens // self.size, local_heads, d).contiguous()  # chunk s: rank s's tokens
        received = _AllToAll.apply(send, self.group)  # chunk s: this rank's tokens, rank s's heads
        return received.transpose(0, 1).reshape(tokens // self.size, self.size * local_heads, d)

    def sum_over_group(self, x: Tensor) -> Tensor:
        """The sum of every rank's `x` (each holds its own positions, zeros elsewhere), on every rank."""
        return _SumOverGroup.apply(x, self.group)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 (split into equal chunks, one per rank); its gradient goes back the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _AllToAll.apply(grad.contiguous(), ctx.group), None


class _SumOverGroup(torch.autograd.Function):
    """all_reduce(SUM) forward; identity backward (see the module docstring for why that is the exact gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        import torch.distributed as dist

        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None
