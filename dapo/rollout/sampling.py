"""Next-token selection from logits: temperature, top-k, top-p, min-p, sampling. Pure torch.

Every function works on a whole (B, V) batch at once: no per-row Python, so the cost of a decode
step does not grow with Python work per sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


def sampling_logits(logits: Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> Tensor:
    """Logits of the distribution actually sampled from: (B, V) float32, −inf on removed tokens.

        x = logits / temperature
        top_k: keep x_i ≥ (k-th largest x)                      (ties at the k-th value are all kept)
        top_p: sort p = softmax(x) descending, keep token j iff Σ_{i<j} p_(i) < top_p   (≥ 1 token kept)
        min_p: keep p_i ≥ min_p · max_j p_j

    Filters apply in that order, each on what the previous left (vLLM's order). temperature must
    be > 0 here; greedy decoding never calls this.

    Args:
        logits: (B, V) raw next-token logits.
    """
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]  # (B, 1)
        x = x.masked_fill(x < kth, NEG_INF)
    if top_p < 1.0:
        probs = torch.softmax(x, dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # (B, V) Σ_{i<j} p_(i)
        drop_sorted = mass_before >= top_p  # the top token has mass_before = 0 < top_p: always kept
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        x = x.masked_fill(drop, NEG_INF)
    if min_p > 0.0:
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), NEG_INF)
    return x


def sample_from_logits(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row from softmax(x), by the exponential race: argmax_i p_i / E_i with
    E_i ~ Exp(1) i.i.d. picks i with probability p_i (the Gumbel-max trick in probability space).

    E = −log U with U ~ Uniform[0, 1): torch.rand is ~4x faster than Tensor.exponential_ or
    torch.multinomial on the CPU, and U < 1 keeps E > 0, so a removed token (p = 0) scores 0 and
    never wins. One RNG call for the whole batch; deterministic for a given generator state.
    Returns (B,) long.
    """
    probs = torch.softmax(x, dim=-1)
    race = torch.rand(probs.shape, generator=generator, device=probs.device).log_().neg_()
    return (probs / race).argmax(dim=-1)
