"""A training forward that computes each prompt once for all the responses that share it.

A step trains on G responses per prompt; a plain forward runs every (prompt, response) row separately, so
each prompt is computed G times, and every row is padded to the longest prompt and the longest response of
its micro-batch. Here the prompt's tokens go through the layers once and the G responses attend to its keys
and values; every token-wise operation (norms, projections, MLP: nearly all the FLOPs) runs on the packed
real tokens only, without padding. Only attention works on padded blocks:

    prompts:    (groups, H, P, d)  causal
    responses:  (rows, H, R, d)    over [its prompt's keys | its own keys, causal]

The last token of a response predicts nothing and feeds no later token of its row, so it is not computed;
the first response token is predicted by the prompt's last position, computed once per prompt.

The gradient is the same function's gradient: the prompt's keys and values receive the sum of what its G
responses send back, as they would through G separate copies. The model must be covered by
`llama_ops` (Llama, Qwen2); the policy worker checks the result against the HF forward before using it.
"""

from __future__ import annotations

import copyreg
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dapo.models.llama_ops import (
    Geometry,
    final_norm,
    gather_layer,
    mlp_block,
    project,
    rms_norm,
    rotate,
    unsupported_reason,
)
from dapo.models.sequence_parallel import SequenceParallel


@dataclass(frozen=True)
class _Packing:
    """What every decoder block of one forward shares: the rotary tables of the packed positions, where the
    prompts' tokens are, and the response chunks."""

    cos: Tensor
    sin: Tensor
    num_prompt_tokens: int
    prompt_slots: Tensor
    chunks: list[_Chunk]
    padded_tokens: int
    """the packed length, padded to a multiple of the sequence-parallel group (the real length without one)"""


class SharedPrefixForward:
    """Logits (or final hidden states) of response tokens for rows grouped by prompt (differentiable; runs
    under grad or no_grad). `model` is a causal LM, or a bare decoder (a critic's body) for hidden states.

    With `checkpoint_blocks` (activation checkpointing), a forward under grad keeps only each decoder block's
    input (N·D values a block) and recomputes the block's inside during the backward (non-reentrant
    `torch.utils.checkpoint`, one region a block): the same gradient, for about one more forward of the blocks.

    With `sequence` (Ulysses sequence parallelism, `dapo.models.sequence_parallel`), the ranks of the group
    call it together on the same micro-batch; each computes the blocks on its slice of the packed tokens, and
    attention on its share of the heads over all of them.
    """

    def __init__(self, model: nn.Module, checkpoint_blocks: bool = False, sequence: SequenceParallel | None = None):
        reason = unsupported_reason(model)
        if reason is None and float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
            reason = "attention_dropout > 0 (this forward applies no dropout)"
        if reason is not None:
            raise NotImplementedError(f"the shared-prefix forward does not cover this model: {reason}")
        self.model = model
        self.checkpoint_blocks = checkpoint_blocks
        self.decoder = model.get_decoder()
        for layer in self.decoder.layers:
            _dispatch_shared_prefix_calls(layer)
        self.geometry = Geometry.of(model)
        self.sequence = sequence
        if sequence is not None:
            sequence.check_heads(self.geometry.num_heads, self.geometry.num_kv_heads)
        with torch.no_grad():
            gather_layer(self.decoder.layers[0])  # NotImplementedError for LoRA adapters these ops do not cover

    def response_logits(
        self, prompts: Sequence[Tensor], row_prompt: Tensor, responses: Tensor, response_lengths: Tensor
    ) -> Tensor:
        """Logits (b, T, V) predicting response token t of every row at [row, t].

        prompts: the distinct prompts' token ids, 1-D, unpadded; row_prompt: (b,) long, which prompt each
        row continues; responses: (b, T) long, right-padded; response_lengths: (b,) real tokens per row.
        Positions t >= response_lengths hold arbitrary finite logits (mask them out, as for any padding).
        """
        if self.sequence is not None:
            raise NotImplementedError("response_logits under sequence parallelism: use response_hidden's local rows")
        hidden, index = self.response_hidden(prompts, row_prompt, responses, response_lengths)
        head = self.model.get_output_embeddings()
        return F.linear(hidden, head.weight, head.bias)[index]

    def response_hidden(
        self, prompts: Sequence[Tensor], row_prompt: Tensor, responses: Tensor, response_lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The decoder's final (normed) hidden states at the positions that predict response tokens, (n, D),
        and the (b, T) index that places them: hidden[index[row, t]] predicts response token t of the row
        (what a head on the decoder's `last_hidden_state` reads there). Arguments as `response_logits`.

        With sequence parallelism: only the predicting positions in this rank's slice, and index -1 where another
        rank of the group holds the position."""
        decoder = self.decoder
        device = decoder.embed_tokens.weight.device
        prompt_lengths = torch.tensor([len(p) for p in prompts], device=device)
        if bool((prompt_lengths == 0).any()):
            raise ValueError("every prompt needs at least one token (its last position predicts response token 0)")
        # Rows are computed shortest first, in chunks of similar length, so the padded attention blocks stay
        # close to the real work; `order[i]` is the original row of computed row i.
        fed_lengths = (response_lengths.to(device) - 1).clamp(min=0)  # all but the last token are fed
        order = torch.argsort(fed_lengths, stable=True)
        fed_lengths, row_prompt = fed_lengths[order], row_prompt.to(device)[order]
        responses = responses.to(device)[order]
        P, R = int(prompt_lengths.max()), int(fed_lengths.max())
        prompt_slots = torch.arange(P, device=device)[None, :] < prompt_lengths[:, None]  # (groups, P)
        fed_slots = torch.arange(R, device=device)[None, :] < fed_lengths[:, None]  # (rows, R)
        num_prompt_tokens = int(prompt_lengths.sum())
        chunks = _length_chunks(fed_lengths, prompt_slots, row_prompt, num_prompt_tokens)

        tokens = torch.cat([torch.cat([p.to(device) for p in prompts]), responses[:, :R][fed_slots]])
        positions = torch.cat(
            [
                torch.arange(P, device=device).expand(len(prompts), P)[prompt_slots],
                (prompt_lengths[row_prompt][:, None] + torch.arange(R, device=device))[fed_slots],
            ]
        )
        num_tokens = len(tokens)
        start, stop, padded = self.sequence.bounds(num_tokens) if self.sequence else (0, num_tokens, num_tokens)
        if self.sequence is not None:  # this rank's slice of the packing, padded to the group's multiple
            tokens, positions = (F.pad(x, (0, padded - num_tokens))[start:stop] for x in (tokens, positions))
        h = F.embedding(tokens, decoder.embed_tokens.weight)  # (N, D): packed, no padding
        cos, sin = decoder.rotary_emb(h[None], positions[None])  # (1, N, d), with any rope scaling
        cos, sin = cos[0, :, None].to(h.dtype), sin[0, :, None].to(h.dtype)  # (N, 1, d)

        packing = _Packing(cos, sin, num_prompt_tokens, prompt_slots, chunks, padded)
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for layer in decoder.layers:
            # Through the block's own __call__, so that hooks on it act (FSDP2 with one unit a block gathers the
            # block's weights for it, and again in the backward).
            if recompute:
                h = checkpoint(layer, h, shared_prefix=(self, packing), use_reentrant=False)
            else:
                h = layer(h, shared_prefix=(self, packing))

        # Positions that predict a response token: each prompt's last, then every fed response token.
        last_prompt = prompt_lengths.cumsum(0) - 1
        rows_in_order = torch.empty_like(order)
        rows_in_order[order] = torch.arange(len(order), device=device)
        index = _logit_rows(row_prompt, fed_slots, len(prompts), responses.shape[1])[rows_in_order]
        if self.sequence is None:
            predicting = torch.cat([h[last_prompt], h[num_prompt_tokens:]])  # (groups + fed, D)
            return rms_norm(predicting, *final_norm(decoder)), index
        # The packed positions of the predicting rows (as `predicting` above); this rank holds [start, stop).
        predicting_at = torch.cat([last_prompt, torch.arange(num_prompt_tokens, num_tokens, device=device)])
        mine = ((predicting_at >= start) & (predicting_at < stop)).nonzero().squeeze(1)
        local_row = torch.full_like(predicting_at, -1)
        local_row[mine] = torch.arange(len(mine), device=device)
        return rms_norm(h[predicting_at[mine] - start], *final_norm(decoder)), local_row[index]

    def _block(self, h: Tensor, layer: nn.Module, packing: _Packing) -> Tensor:
        """One decoder block over the packed tokens (N, D) -> (N, D)."""
        g = self.geometry
        H, KV, d = g.num_heads, g.num_kv_heads, g.head_dim
        w = gather_layer(layer)
        qkv = project(rms_norm(h, w.norm_in, w.norm_in_eps), w.qkv_weight, w.qkv_bias, w.qkv_lora)
        qk = rotate(qkv[:, : (H + KV) * d].view(-1, H + KV, d), packing.cos, packing.sin)  # q and k in one rotation
        q, k, v = qk[:, :H], qk[:, H:], qkv[:, (H + KV) * d :].view(-1, KV, d)
        if self.sequence is None:
            out = self._attention(q, k, v, packing)
        else:  # this rank's heads over every token, then back to its own tokens with every head
            repeats = self.sequence.kv_repeats(KV)
            if repeats > 1:
                k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
            q, k, v = (self.sequence.sequence_to_heads(x) for x in (q, k, v))
            out = self._attention(q, k, v, packing)
            out = F.pad(out, (0, 0, 0, packing.padded_tokens - len(out))).view(packing.padded_tokens, q.shape[1], d)
            out = self.sequence.heads_to_sequence(out).flatten(1)
        return mlp_block(h + project(out, w.o_weight, w.o_bias, w.o_lora), w)  # (N, D)

    def _attention(self, q: Tensor, k: Tensor, v: Tensor, packing: _Packing) -> Tensor:
        """Attention of the packed tokens (N, heads, d) -> (N, heads·d): each prompt causal, each response over its
        prompt and itself. Positions past the real tokens (sequence-parallel padding) are neither read nor written."""
        n_prompt, prompt_slots = packing.num_prompt_tokens, packing.prompt_slots
        gqa, scaling = k.shape[1] != q.shape[1], self.geometry.scaling
        # Prompts: causal attention within each prompt (right padding is never attended by a real query).
        kp, vp = _pad(k[:n_prompt], prompt_slots), _pad(v[:n_prompt], prompt_slots)
        out_p = _attention(_pad(q[:n_prompt], prompt_slots), kp, vp, is_causal=True, scale=scaling, enable_gqa=gqa)
        outs = [_unpad(out_p, prompt_slots)]
        # Responses: each row over its prompt's keys (shared, gathered) and its own, causal.
        for c in packing.chunks:
            qr, kr, vr = (_pad(x[c.tokens], c.slots) for x in (q, k, v))  # (rows, heads, R_c, d)
            out_r = _attention(
                qr,
                torch.cat([kp[c.prompt], kr], dim=2),
                torch.cat([vp[c.prompt], vr], dim=2),
                attn_mask=c.mask,
                scale=scaling,
                enable_gqa=gqa,
            )
            outs.append(_unpad(out_r, c.slots))
        return torch.cat(outs)


_DISPATCHING: dict[type, type] = {}


def _new_block(cls: type, *args):
    """An empty instance of the block class `cls` (unpickling fills its state)."""
    return cls.__new__(cls, *args)


def _dispatch_shared_prefix_calls(layer: nn.Module) -> None:
    """Let `layer` (a decoder block) be called as `layer(h, shared_prefix=(forward, packing))` to run the
    shared-prefix block, its own forward otherwise: its class becomes a subclass whose forward dispatches on that
    keyword (FSDP2 does the same to the modules it shards). State-dict keys, parameters and the model's own
    forward are unchanged; the subclass is made once per block class, and a block pickles (and deep-copies) as
    its own class."""
    cls = type(layer)
    if getattr(cls, "_shared_prefix_dispatch", False):
        return
    if cls not in _DISPATCHING:

        def forward(self, *args, shared_prefix=None, **kwargs):
            if shared_prefix is None:
                return super(_DISPATCHING[cls], self).forward(*args, **kwargs)
            owner, packing = shared_prefix
            return owner._block(args[0], self, packing)

        def __reduce_ex__(self, protocol):
            # Pickled (and deep-copied) as the model's own class, which any process can import; a shared-prefix
            # forward built on the copy dispatches it again.
            reduced = list(super(_DISPATCHING[cls], self).__reduce_ex__(protocol))
            if reduced[0] is copyreg.__newobj__:
                reduced[0], reduced[1] = _new_block, (cls, *reduced[1][1:])
            return tuple(reduced)

        members = {"forward": forward, "__reduce_ex__": __reduce_ex__, "_shared_prefix_dispatch": True}
        _DISPATCHING[cls] = type(cls.__name__, (cls,), members)
    layer.__class__ = _DISPATCHING[cls]


def _attention(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """Scaled dot-product attention, in float32 even under bf16 autocast: on CPU the bf16 flash-attention
    backward is several times slower than the float32 one (measured: 3.6x at 5M, and 28 % of a bf16-mixed
    update at 20M), while the matmuls around it gain 2-5x. Its inputs are small next to the weights, so the casts
    cost little."""
    device = q.device.type
    if not torch.is_autocast_enabled(device):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with torch.autocast(device, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)


@dataclass(frozen=True)
class _Chunk:
    """Consecutive computed rows whose responses attend together in one padded block."""

    tokens: slice
    """their fed tokens in the packed sequence"""
    slots: Tensor
    """(rows, R_c) bool: real fed tokens, R_c = the chunk's longest"""
    prompt: Tensor
    """(rows,) long: each row's prompt"""
    mask: Tensor
    """(rows, 1, R_c, P + R_c) bool: may attend (its prompt's real tokens, then its own tokens causally)"""


def _length_chunks(fed_lengths: Tensor, prompt_slots: Tensor, row_prompt: Tensor, offset: int) -> list[_Chunk]:
    """Split rows sorted by fed length into up to 4 chunks of equal row count (at least 8 rows each):
    with lengths spread evenly, that cuts the padded attention work by ~40 %; more chunks add more calls."""
    rows = len(fed_lengths)
    num_chunks = max(1, min(4, rows // 8))
    bounds = [rows * i // num_chunks for i in range(num_chunks + 1)]
    token_ends = fed_lengths.cumsum(0).tolist()
    chunks = []
    for a, b in itertools.pairwise(bounds):
        R = int(fed_lengths[b - 1])
        if R == 0:  # one-token responses only: nothing fed, their token is predicted by the prompt
            continue
        slots = torch.arange(R, device=fed_lengths.device)[None, :] < fed_lengths[a:b, None]
        causal = torch.ones(R, R, dtype=torch.bool, device=fed_lengths.device).tril()
        mask = torch.cat(
            [prompt_slots[row_prompt[a:b]][:, None, :].expand(-1, R, -1), causal.expand(b - a, -1, -1)], dim=2
        )[:, None]
        start = offset + (int(token_ends[a - 1]) if a > 0 else 0)
        chunks.append(_Chunk(slice(start, offset + int(token_ends[b - 1])), slots, row_prompt[a:b], mask))
    return chunks


def _pad(x: Tensor, slots: Tensor) -> Tensor:
    """Packed (n, heads, d) → padded (blocks, heads, L, d) with zeros where `slots` (blocks, L) is False."""
    padded = x.new_zeros(*slots.shape, *x.shape[1:])
    padded[slots] = x
    return padded.transpose(1, 2)


def _unpad(x: Tensor, slots: Tensor) -> Tensor:
    """Padded (blocks, heads, L, d) → packed (n, heads·d)."""
    packed = x.transpose(1, 2)[slots]
    return packed.reshape(packed.shape[0], -1)


def _logit_rows(row_prompt: Tensor, fed_slots: Tensor, num_prompts: int, width: int) -> Tensor:
    """(b, width) index into the logits rows [prompt lasts (num_prompts) | fed tokens (packed)]:
    token 0 of a row ← its prompt's last position; token t ≥ 1 ← its fed token t-1; padding → row 0."""
    b, R = fed_slots.shape
    fed_index = torch.zeros(b, R, dtype=torch.long, device=fed_slots.device)
    fed_index[fed_slots] = num_prompts + torch.arange(int(fed_slots.sum()), device=fed_slots.device)
    index = torch.cat([row_prompt[:, None], fed_index], dim=1)  # (b, 1 + R)
    if index.shape[1] >= width:
        return index[:, :width]
    return F.pad(index, (0, width - index.shape[1]))
