"""Masked-garbage injection shared by the property tests of every function in dapo.algo.

A test that takes the `garbage` fixture runs once per kind of garbage. The promise it checks: whatever sits at
masked positions (padding, filtered rows) changes nothing at unmasked positions, in values and in gradients.
`x * mask` breaks that promise for NaN and ±inf (NaN·0 = inf·0 = NaN), and huge finite values overflow to inf
inside the arithmetic, so all of them are tried.
"""

from __future__ import annotations

import pytest
import torch

GARBAGE_KINDS = ("nan", "+inf", "-inf", "huge", "random")


@pytest.fixture(params=GARBAGE_KINDS)
def garbage(request):
    """garbage(x, mask) -> x with every position where `mask` is 0 overwritten by this kind of garbage.

    `mask` broadcasts against x. "huge" alternates ±finfo.max (any product or square overflows); "random" is
    randn·1e4 (finite but large, what the original tests used). The result is a new tensor without grad
    history: call `.requires_grad_()` on it to test gradients.
    """
    kind = request.param

    def inject(x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        if kind == "nan":
            fill = torch.full_like(x, float("nan"))
        elif kind == "+inf":
            fill = torch.full_like(x, float("inf"))
        elif kind == "-inf":
            fill = torch.full_like(x, float("-inf"))
        elif kind == "huge":
            signs = torch.where(torch.arange(x.numel()) % 2 == 0, 1.0, -1.0).to(x.dtype).reshape(x.shape)
            fill = signs * torch.finfo(x.dtype).max
        else:
            fill = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) * 1e4
        return torch.where(mask.bool(), x, fill).detach()

    inject.kind = kind
    return inject
