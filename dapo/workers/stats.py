"""The metrics of an update: per-token diagnostics summed over micro-batches and ranks into exact means."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from dapo.workers.parallel import DataParallel


class Accumulator:
    """Token-weighted sums of per-token diagnostics across micro-batches (exact masked means at the end)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.per_token: set[str] = set()
        self.maxes: dict[str, float] = {}

    def add_masked(self, name: str, values: Tensor, mask: Tensor) -> None:
        """Sums in float32 at least (bf16 values are widened), in float64 for float64 values."""
        mask = mask.bool()
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        self.sums[name] += float(torch.where(mask, values, 0.0).sum())
        self.counts[name] += float(mask.sum())
        self.per_token.add(name)

    def add_spread(self, name: str, values: Tensor, mask: Tensor) -> None:
        """`{name}_mean`, `{name}_std` and `{name}_max` of the masked values. The sums are float64: the std
        comes from E[x²] − E[x]², which float32 cannot resolve for ratios within 1e-4 of 1."""
        values = values.double()
        self.add_masked(f"{name}_mean", values, mask)
        self.add_masked(f"{name}{_SQUARES}", values * values, mask)
        largest = float(torch.where(mask.bool(), values, -math.inf).max()) if values.numel() else -math.inf
        self.maxes[f"{name}_max"] = max(self.maxes.get(f"{name}_max", -math.inf), largest)

    def reduce_per_token(self, dp: DataParallel) -> None:
        """Add up the per-token sums and counts of all ranks (each computed its own rows), and take the
        maxima over ranks; the scalars are already global. Every rank registers the same names (weight-0
        passes add zeros)."""
        names = sorted(self.per_token)
        totals = dp.sum([self.sums[n] for n in names] + [self.counts[n] for n in names])
        for i, name in enumerate(names):
            self.sums[name], self.counts[name] = totals[i], totals[len(names) + i]
        max_names = sorted(self.maxes)
        for name, value in zip(max_names, dp.max([self.maxes[n] for n in max_names]), strict=True):
            self.maxes[name] = value

    def add_scalar(self, name: str, value: float) -> None:
        self.sums[name] += value
        self.counts[name] += 1.0

    def means(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}
        for key in [k for k in out if k.endswith(_SQUARES)]:
            name = key.removesuffix(_SQUARES)
            out[f"{name}_std"] = math.sqrt(max(0.0, out.pop(key) - out[f"{name}_mean"] ** 2))
        out.update({k: v for k, v in self.maxes.items() if math.isfinite(v)})
        return out


_SQUARES = "/__squares"  # the hidden mean of squares behind a `_std` (never logged)
