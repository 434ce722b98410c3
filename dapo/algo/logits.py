"""Token log-probabilities and entropy from logits, computed in chunks with a hand-written backward.

Pure functions. A (B, T, V) logits tensor for a long response and a 150k vocabulary is already the largest
tensor of a step; a naive log_softmax would allocate a second one of the same size, and autograd would keep
it (and more) for the backward. Both functions below walk over the B·T positions in chunks and use a
`torch.autograd.Function` per chunk that saves only its input (a view of the logits, no copy) and per-row
scalars; the backward recomputes what it needs. Extra memory is at most two (chunk, V) float32 buffers at
any time, forward or backward, and never a full-size copy. The price is the recomputation: against a plain
`log_softmax(z).gather(ids)` under autograd, which keeps a float32 (B, T, V) copy for its backward, the
log-prob pass (forward + backward) takes 1.4x as long at a 49k vocabulary and 2x at the tiny model's 80
tokens (about 1 ms a micro-batch); log-probs and entropy together take the same time (bench/bench_logits.py).

The trainer does not even hold the logits: `head_token_logprobs` takes the final hidden states and the head's
weight and computes the logits, log-probs and entropies one chunk of rows at a time, forward and backward (the
head's matmul once more in the backward), so that no [tokens, vocab] tensor exists beyond a chunk; the two
functions above are its reference (tests/algo/test_logits.py) and serve callers that already hold logits.

Numerics. Everything is computed on max-shifted logits s = (z − max_v z)/τ, in float32 (bf16/fp16 logits
are upcast; float64 stays float64); torch's fused log_softmax and softmax do the shift themselves:

    log p_v = s_v − log S,   S = Σ_v exp(s_v)   (S ≥ 1: the max contributes exp(0) = 1)

Shifting is exact in value (softmax is shift-invariant) and removes the error that grows with the logit
magnitude: without it, log p = z_o − logsumexp(z) subtracts two numbers of size |z| and loses |z|·2⁻²⁴
(≈ 1.6e-5 at |z| = 273); after it, s_o and log S are both O(1) where it matters.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# exp() of anything below this is exactly 0 in float32 (below −103.3) and float64 (below −744.4), so clamping
# shifted logits here changes no probability; it turns −inf logits (excluded tokens) into a finite stand-in,
# so that p·s is 0·(−1e4) = 0 instead of 0·(−inf) = NaN.
_EXP_UNDERFLOW = -1e4


def _chunked_rows(flat: Tensor, chunk_size: int):
    # At least one (possibly empty) chunk, so that zero positions give an empty result rather than cat([]).
    for start in range(0, max(flat.shape[0], 1), chunk_size):
        yield start, flat[start : start + chunk_size]


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _shifted(logits: Tensor, row_max: Tensor, temperature: float) -> Tensor:
    """s = (z − row_max)/τ as ONE new buffer in the compute dtype (the caller's logits are never modified)."""
    s = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True).sub_(row_max)
    return s if temperature == 1.0 else s.div_(temperature)


def _row_max(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 1) max logit of each row in the compute dtype, and (N, 1) its index."""
    row_max, argmax = logits.max(dim=-1, keepdim=True)
    return row_max.to(torch.promote_types(logits.dtype, torch.float32)), argmax


def _log_normaliser(e: Tensor, argmax: Tensor) -> tuple[Tensor, Tensor]:
    """log S = log1p(Σ_{v≠argmax} e_v) for e = exp(s), which holds exactly 1 at the argmax; also returns S.

    Summing the 1 in first would round S to float32 next to 1 (spacing 1.2e-7) and leave log S, for a
    peaked distribution where it is ≈ 1e-4, with a relative error of 1e-3; log1p of the rest keeps it
    relative-accurate. Zeroes e at the argmax, in place (s = 0 there, so Σ e·s is unchanged).
    """
    rest = e.scatter_(-1, argmax, 0.0).sum(dim=-1, keepdim=True)
    return torch.log1p(rest), 1.0 + rest


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """z/τ in the compute dtype (bf16/fp16 upcast to float32, float64 kept); no copy when nothing changes."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return z if temperature == 1.0 else z / temperature


class _TokenLogprobs(torch.autograd.Function):
    """log p(o) = log_softmax(z/τ)_o on one (N, V) chunk;  ∂/∂z_v = (1[v = o] − p_v)/τ.

    torch's fused log_softmax subtracts the row max itself (shift-invariant, no cancellation at large
    logits) and is the fastest pass over the chunk; the backward recomputes p with the fused softmax
    instead of keeping the (N, V) log-probs (measured in bench/bench_logits.py)."""

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(logits, ids)
        ctx.temperature = temperature
        return torch.log_softmax(_scaled(logits, temperature), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, ids = ctx.saved_tensors
        scale = (grad / ctx.temperature).unsqueeze(-1)  # (N, 1)
        out = torch.softmax(_scaled(logits, ctx.temperature), dim=-1).mul_(-scale)  # −p·g/τ ...
        out.scatter_add_(-1, ids.unsqueeze(-1), scale)  # ... + g/τ at the sampled token
        return out.to(logits.dtype), None, None


class _Entropy(torch.autograd.Function):
    """H = log S − Σ_v exp(s_v) s_v / S on one (N, V) chunk;  ∂H/∂z_v = −p_v (log p_v + H)/τ."""

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: float) -> Tensor:
        row_max, argmax = _row_max(logits)
        s = _shifted(logits, row_max, temperature).clamp_min_(_EXP_UNDERFLOW)
        e = s.exp()
        log_normaliser, total = _log_normaliser(e, argmax)  # S ≥ 1
        # Both terms are ≥ 0 in floating point too (log S ≥ 0; e ≥ 0 and s ≤ 0), so H cannot come out negative
        # and nothing cancels: no clamp of H is needed.
        entropy = log_normaliser - e.mul_(s).sum(dim=-1, keepdim=True) / total
        ctx.save_for_backward(logits, row_max, log_normaliser, entropy)
        ctx.temperature = temperature
        return entropy.squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, row_max, log_normaliser, entropy = ctx.saved_tensors
        s = _shifted(logits, row_max, ctx.temperature).clamp_min_(_EXP_UNDERFLOW)
        p = (s - log_normaliser).exp_()
        # −p (log p + H) g/τ with log p + H = s − log S + H, built in the two buffers s and p.
        p.mul_(s.sub_(log_normaliser - entropy)).mul_((-grad / ctx.temperature).unsqueeze(-1))
        return p.to(logits.dtype), None


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """log π(o_t) = log softmax(z/τ)_{o_t} for each sampled token, computed on max-shifted logits.

        log π(o_t) = s_{o_t} − log Σ_v exp(s_v),   s = (z − max_v z)/τ

    Args:
        logits: (B, T, V) logits that predict token t at position t (already shifted by the caller).
            A −inf logit (an excluded token) has probability 0; a sampled −inf token gets −inf.
        token_ids: (B, T) the tokens whose log-probability is wanted.
        temperature: τ > 0; 1.0 for the policy's own distribution. Applied chunk by chunk, so passing τ
            here costs no full-size copy (dividing the logits beforehand does).
        chunk_size: positions processed at once; memory beyond the logits is O(chunk_size · V).
    Returns:
        (B, T) log-probabilities, float32 (float64 for float64 logits), differentiable w.r.t. the logits.

    Conventions (pinned by tests/algo/test_logits.py):
        * shift-invariant: adding a constant to every logit of a position changes nothing, up to rounding
          of the logits themselves; error vs float64 does not grow with the logit magnitude.
    """
    _check_temperature(temperature)
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_ids = token_ids.reshape(-1)
    pieces = [
        _TokenLogprobs.apply(chunk, flat_ids[start : start + chunk.shape[0]], temperature)
        for start, chunk in _chunked_rows(flat_logits, chunk_size)
    ]
    return torch.cat(pieces).reshape(token_ids.shape)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Entropy of the next-token distribution softmax(z/τ) at every position, in nats.

        H_t = −Σ_v p_v log p_v = log S − Σ_v exp(s_v) s_v / S,   s = (z − max_v z)/τ,  S = Σ_v exp(s_v)

    Why this form: with s ≤ 0 and S ≥ 1, both terms are non-negative, so H ≥ 0 holds exactly in floating
    point and there is no cancellation. The unshifted logsumexp(z) − Σ softmax(z)·z subtracts two numbers of
    the size of the logits and multiplies the rounding error of Σ p (≠ 1) by |z|: it returned entropies
    down to −6e-3 at logit scale 100 over 32k tokens, and 0.689240 instead of 0.691434 for the two logits
    [273.514, 273.631] (now 0.691434). Worst error vs float64 over 64 rows of float32 randn·scale logits,
    32k tokens, at scale 1 / 10 / 100 / 1000: 7e-7 / 2e-7 / 3e-8 / 6e-10 (was 2e-6 / 9e-5 / 6e-3 / 1.0, and
    4e-3 already at scale 1 once 300 is added to every logit). log S is taken as log1p of the sum without
    the max's 1, so a nearly deterministic position keeps a relative, not only absolute, accuracy.
    Cost: two (chunk, V) buffers, s and exp(s), in the forward and in the backward; nothing of that size is
    kept in between (a log_softmax-based −Σ p·log p needs the same two, and autograd would keep both).

    Args:
        logits: (B, T, V). −inf logits (excluded tokens) contribute 0·log 0 = 0; +inf or NaN give NaN.
        temperature: τ > 0, applied chunk by chunk (no full-size copy).
        chunk_size: positions processed at once; memory beyond the logits is O(chunk_size · V).
    Returns:
        (B, T) entropies ≥ 0, float32 (float64 for float64 logits), differentiable (for an entropy bonus).
    """
    _check_temperature(temperature)
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    pieces = [_Entropy.apply(chunk, temperature) for _, chunk in _chunked_rows(flat, chunk_size)]
    return torch.cat(pieces).reshape(logits.shape[:-1])


def _entropy_of_scaled(z: Tensor) -> Tensor:
    """(N,) entropies of softmax(z) for already-scaled logits z (N, V): `_Entropy`'s stable form, no autograd."""
    row_max, argmax = _row_max(z)
    s = _shifted(z, row_max, 1.0).clamp_min_(_EXP_UNDERFLOW)
    e = s.exp()
    log_normaliser, total = _log_normaliser(e, argmax)
    return (log_normaliser - e.mul_(s).sum(dim=-1, keepdim=True) / total).squeeze(-1)


def _head_chunk(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """The chunk's logits z/τ in the compute dtype (float32 at least), through the head's own F.linear, so that
    autocast (bf16-mixed) applies to the matmul exactly as it does to the model's head."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return z if temperature == 1.0 else z / temperature


class _HeadTokenLogprobs(torch.autograd.Function):
    """log p(o) and H of softmax((h·Wᵀ + b)/τ), chunk by chunk over the rows of h, keeping no [rows, vocab] tensor
    from the forward to the backward: it saves h, W, b and the per-row entropies, and the backward recomputes
    each chunk's logits (one more head matmul) to form

        ∂/∂z_v = g_logp·(1[v = o] − p_v)/τ − g_H·p_v (log p_v + H)/τ

    and pushes it through that chunk's linear with autograd (so bf16 autocast acts on the backward's matmuls
    as on the model's head)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy):
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        logprobs, entropies = [], []
        for start in range(0, max(hidden.shape[0], 1), chunk_size):
            z = _head_chunk(hidden[start : start + chunk_size], weight, bias, temperature)
            ids = targets[start : start + chunk_size].unsqueeze(-1)
            logprobs.append(torch.log_softmax(z, dim=-1).gather(-1, ids).squeeze(-1))
            if with_entropy:
                entropies.append(_entropy_of_scaled(z))
        logprob = torch.cat(logprobs)
        entropy = torch.cat(entropies) if with_entropy else logprob.new_zeros(0)
        ctx.save_for_backward(hidden, weight, bias, targets, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprob, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprob: Tensor, grad_entropy: Tensor | None):
        hidden, weight, bias, targets, entropy = ctx.saved_tensors
        device, autocast_on, autocast_dtype = ctx.autocast
        leaf_hidden = hidden.detach().requires_grad_(ctx.needs_input_grad[0])
        leaf_weight = weight.detach().requires_grad_(ctx.needs_input_grad[1])
        leaf_bias = None if bias is None else bias.detach().requires_grad_(ctx.needs_input_grad[2])
        use_entropy = grad_entropy is not None and entropy.numel() > 0
        with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            for start in range(0, hidden.shape[0], ctx.chunk_size):
                rows = slice(start, start + ctx.chunk_size)
                z = _head_chunk(leaf_hidden[rows], leaf_weight, leaf_bias, ctx.temperature)
                with torch.no_grad():
                    log_p = torch.log_softmax(z.detach(), dim=-1)
                    p = log_p.exp()
                    grad_z = p * -grad_logprob[rows].unsqueeze(-1)
                    grad_z.scatter_add_(-1, targets[rows].unsqueeze(-1), grad_logprob[rows].unsqueeze(-1))
                    if use_entropy:
                        grad_z -= p * (log_p + entropy[rows].unsqueeze(-1)) * grad_entropy[rows].unsqueeze(-1)
                torch.autograd.backward(z, grad_z)
        grad_bias = None if leaf_bias is None else leaf_bias.grad
        return leaf_hidden.grad, leaf_weight.grad, grad_bias, None, None, None, None


def head_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    token_ids: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """`token_logprobs` and `entropy_from_logits` of the logits z = h·Wᵀ + b of a linear head, without ever
    holding the [rows, vocab] logits (or anything that size) between the forward and the backward.

    Args:
        hidden: (..., D) the final hidden states that predict the tokens (what the head reads).
        weight: (V, D) the head's weight; bias: (V,) or None.
        token_ids: (...) the tokens whose log-probability is wanted.
        temperature: τ > 0: the distribution is softmax(z/τ).
        chunk_size: rows computed at once; memory beyond the inputs is O(chunk_size · V), forward and backward.
        with_entropy: also return the entropies (differentiable, for an entropy bonus).
    Returns:
        ((...) log-probs, (...) entropies or None), float32 at least. Cost: the head's matmul once more in the
        backward (its logits are recomputed chunk by chunk instead of kept).
    """
    _check_temperature(temperature)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    logprob, entropy = _HeadTokenLogprobs.apply(
        flat_hidden, weight, bias, token_ids.reshape(-1), temperature, chunk_size, with_entropy
    )
    shape = token_ids.shape
    return logprob.reshape(shape), (entropy.reshape(shape) if with_entropy else None)
