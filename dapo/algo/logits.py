"""Token log-probabilities and entropy from logits, computed in chunks.

Pure functions. A (B, T, V) logits tensor for a long response and a 150k vocabulary is already the largest
tensor of a step; a naive log_softmax would allocate a second one of the same size. Both functions below
walk over the B·T positions in chunks, so the extra memory is (chunk, V) at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunked_rows(flat: Tensor, chunk_size: int):
    for start in range(0, flat.shape[0], chunk_size):
        yield start, flat[start : start + chunk_size]


def _token_logprobs_chunk(logits: Tensor, ids: Tensor) -> Tensor:
    logits = logits.float()
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """log π(o_t) = z_{o_t}/τ − logsumexp(z/τ) for each sampled token.

    Args:
        logits: (B, T, V) logits that predict token t at position t (already shifted by the caller).
        token_ids: (B, T) the tokens whose log-probability is wanted.
        temperature: τ > 0; 1.0 for the policy's own distribution.
        chunk_size: positions processed at once; memory beyond the logits is O(chunk_size · V).
    Returns:
        (B, T) float32 log-probabilities, differentiable w.r.t. the logits.
    """
    if temperature != 1.0:
        logits = logits / temperature
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_ids = token_ids.reshape(-1)
    pieces = []
    for start, chunk in _chunked_rows(flat_logits, chunk_size):
        ids = flat_ids[start : start + chunk.shape[0]]
        if chunk.requires_grad:
            # Recompute the chunk's softmax in backward instead of storing a float32 copy of it.
            pieces.append(checkpoint(_token_logprobs_chunk, chunk, ids, use_reentrant=False))
        else:
            pieces.append(_token_logprobs_chunk(chunk, ids))
    return torch.cat(pieces).reshape(token_ids.shape)


def _entropy_chunk(logits: Tensor) -> Tensor:
    logits = logits.float()
    log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.exp(logits - log_normaliser)
    return log_normaliser.squeeze(-1) - (probs * logits).sum(dim=-1)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of the next-token distribution at every position.

        H_t = −Σ_v p_v log p_v = logsumexp(z) − Σ_v softmax(z)_v z_v

    Args:
        logits: (B, T, V).
        chunk_size: positions processed at once; memory beyond the logits is O(chunk_size · V).
    Returns:
        (B, T) float32 entropies in nats, differentiable (for an entropy bonus) via per-chunk recomputation.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    pieces = []
    for _, chunk in _chunked_rows(flat, chunk_size):
        if chunk.requires_grad:
            pieces.append(checkpoint(_entropy_chunk, chunk, use_reentrant=False))
        else:
            pieces.append(_entropy_chunk(chunk))
    return torch.cat(pieces).reshape(logits.shape[:-1])
