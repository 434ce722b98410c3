"""Key/value caches for the built-in engine: two backends behind one small interface.

`StaticBackend` (the fast path) keeps one preallocated (rows, kv_heads, max_len, head_dim) buffer
per layer and runs the model's own forward with an attention function registered through
transformers' AttentionInterface. Every row of the batch advances in lockstep (prompts are
left-padded to the same length), so a decode step writes one column of the buffer and attends to a
prefix view of it: no torch.cat per step (DynamicCache's O(T²) copying), no 4-D mask building, and
grouped-query attention without materialising repeated K/V heads. Left padding is one additive
(rows, max_len) bias: −inf on pad columns, 0 elsewhere.

`HFCacheBackend` is the fallback for architectures the fast path does not cover (sliding-window or
soft-capped attention, models without the attention interface): HF's DynamicCache with a 2-D
padding mask, the same semantics, slower.

`StaticBackend(fused=True)` runs the decode steps without the HF modules (see `fused_decode`): same
cache, same arithmetic, a fraction of the per-step overhead on small and medium models.

Both: prefill the P distinct prompts once, then `expand(n)` copies each prompt's K/V to its n
sample rows; `select(rows)` drops finished rows so they stop costing compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface, DynamicCache

from dapo.rollout.fused_decode import FusedDecoder, decode_attention

ATTN_NAME = "dapo_rollout"


def _rollout_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over a StaticBackend cache view.

    query: (B, H, q, d); key/value: (B, KV, L, d) prefix views of the cache; attention_mask: the
    additive float bias (B, 1, q, L) this backend passed in. Returns ((B, q, H, d), None) like
    transformers' own attention functions.
    """
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise NotImplementedError("the rollout attention supports neither sliding windows nor soft-capping")
    H, q = query.shape[1], query.shape[2]
    if q == 1:  # decode: one query per row, the additive bias (B, 1, 1, L) over the cache
        return decode_attention(query[:, :, 0], key, value, attention_mask[:, 0, 0], scaling).unsqueeze(1), None
    # No mask means a plain causal forward (someone ran the model while our function was active).
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        is_causal=attention_mask is None and q == key.shape[2],
        scale=scaling,
        enable_gqa=key.shape[1] != H,
    )  # (B, H, q, d)
    return out.transpose(1, 2), None


AttentionInterface.register(ATTN_NAME, _rollout_attention)


class _StaticKV:
    """The object handed to the model as `past_key_values`: HF attention layers call `update`."""

    is_compileable = False

    def __init__(self, num_layers: int):
        self.k: list[Tensor | None] = [None] * num_layers
        self.v: list[Tensor | None] = [None] * num_layers
        self.length = 0  # columns already filled (identical for every row)
        self.capacity = 0

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, cache_kwargs=None):
        q = key_states.shape[2]
        if self.k[layer_idx] is None:  # first (prefill) call allocates the full-length buffer
            B, kv, _, d = key_states.shape
            self.k[layer_idx] = key_states.new_empty(B, kv, self.capacity, d)
            self.v[layer_idx] = value_states.new_empty(B, kv, self.capacity, d)
        end = self.length + q
        self.k[layer_idx][:, :, self.length : end] = key_states
        self.v[layer_idx][:, :, self.length : end] = value_states
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


class StaticBackend:
    """Preallocated lockstep cache plus the registered attention function (see module docstring).

    With `fused=True` the decode steps skip the HF modules and run `fused_decode.FusedDecoder` on the
    same cache (the prefill still runs the model's own forward).
    """

    def __init__(self, model, num_layers: int, fused: bool = False):
        self.model = model
        self.num_layers = num_layers
        self.cache: _StaticKV | None = None
        self.bias: Tensor | None = None  # (rows, capacity) additive attention bias
        self.decoder = FusedDecoder(model) if fused else None

    def prefill(self, ids: Tensor, mask: Tensor, capacity: int) -> Tensor:
        """ids, mask: (P, Tp) left-padded prompts. Returns (P, V) logits after the last prompt token."""
        P, Tp = ids.shape
        self.cache = _StaticKV(self.num_layers)
        self.cache.capacity = capacity
        dtype = self.model.get_input_embeddings().weight.dtype
        self.bias = torch.zeros(P, capacity, dtype=dtype, device=ids.device)
        self.bias[:, :Tp].masked_fill_(~mask, float("-inf"))
        causal = torch.ones(Tp, Tp, dtype=torch.bool, device=ids.device).tril()
        # A pad query attends to itself only, so that no softmax row is empty (NaN) and pad
        # positions carry finite K/V; real queries never see pad keys.
        eye = torch.eye(Tp, dtype=torch.bool, device=ids.device)
        allowed = causal & (mask[:, None, :] | eye)  # (P, Tp, Tp)
        bias4 = torch.zeros(P, 1, Tp, Tp, dtype=dtype, device=ids.device).masked_fill_(~allowed[:, None], float("-inf"))
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        out = self.model(
            input_ids=ids, attention_mask=bias4, position_ids=positions, past_key_values=self.cache,
            use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        self.cache.length = Tp
        return out.logits[:, -1]

    def expand(self, n: int) -> None:
        """Each prompt row becomes n consecutive sample rows (prompt i -> rows i·n … i·n+n−1)."""
        if n == 1:
            return
        L = self.cache.length
        for store in (self.cache.k, self.cache.v):
            for i, buf in enumerate(store):
                new = buf.new_empty(buf.shape[0] * n, *buf.shape[1:])
                new[:, :, :L] = buf[:, :, :L].repeat_interleave(n, dim=0)
                store[i] = new
        self.bias = self.bias.repeat_interleave(n, dim=0)

    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens, positions: (B,). Appends one column; returns (B, V) next-token logits."""
        L = self.cache.length
        if self.decoder is not None:
            logits = self.decoder.step(self.cache, self.bias, tokens, positions)
        else:
            logits = self.model(
                input_ids=tokens[:, None], attention_mask=self.bias[:, None, None, : L + 1],
                position_ids=positions[:, None], past_key_values=self.cache, use_cache=True,
            ).logits[:, -1]  # fmt: skip
        self.cache.length = L + 1
        return logits

    def select(self, rows: Tensor) -> None:
        """Keep only `rows` (B',) of the batch. Copies just the filled columns."""
        L = self.cache.length
        for store in (self.cache.k, self.cache.v):
            for i, buf in enumerate(store):
                new = buf.new_empty(rows.numel(), *buf.shape[1:])
                new[:, :, :L] = buf[rows, :, :L]
                store[i] = new
        self.bias = self.bias[rows]

    def release(self) -> None:
        self.cache, self.bias, self.decoder = None, None, None


class HFCacheBackend:
    """HF DynamicCache + 2-D padding mask: works for any causal LM that `generate` supports."""

    def __init__(self, model):
        self.model = model
        self.cache: DynamicCache | None = None
        self.mask: Tensor | None = None  # (rows, capacity) long, 1 = attend
        self.length = 0

    def prefill(self, ids: Tensor, mask: Tensor, capacity: int) -> Tensor:
        P, Tp = ids.shape
        self.cache = DynamicCache(config=self.model.config)
        self.mask = torch.ones(P, capacity, dtype=torch.long, device=ids.device)
        self.mask[:, :Tp] = mask.long()
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        out = self.model(
            input_ids=ids, attention_mask=self.mask[:, :Tp], position_ids=positions,
            past_key_values=self.cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        self.length = Tp
        return out.logits[:, -1]

    def expand(self, n: int) -> None:
        if n > 1:
            self.cache.batch_repeat_interleave(n)
            self.mask = self.mask.repeat_interleave(n, dim=0)

    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        L = self.length
        out = self.model(
            input_ids=tokens[:, None], attention_mask=self.mask[:, : L + 1], position_ids=positions[:, None],
            past_key_values=self.cache, use_cache=True,
        )  # fmt: skip
        self.length = L + 1
        return out.logits[:, -1]

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def release(self) -> None:
        self.cache, self.mask = None, None
