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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dapo.models.llama_ops import Geometry, gather_layer, mlp_block, output_head, rms_norm, rotate, unsupported_reason


class SharedPrefixForward:
    """Logits of response tokens for rows grouped by prompt (differentiable; runs under grad or no_grad)."""

    def __init__(self, model: nn.Module):
        reason = unsupported_reason(model)
        if reason is not None:
            raise NotImplementedError(f"the shared-prefix forward does not cover this model: {reason}")
        self.model = model
        self.geometry = Geometry.of(model)

    def response_logits(
        self, prompts: Sequence[Tensor], row_prompt: Tensor, responses: Tensor, response_lengths: Tensor
    ) -> Tensor:
        """Logits (b, T, V) predicting response token t of every row at [row, t].

        prompts: the distinct prompts' token ids, 1-D, unpadded; row_prompt: (b,) long, which prompt each
        row continues; responses: (b, T) long, right-padded; response_lengths: (b,) real tokens per row.
        Positions t >= response_lengths hold arbitrary finite logits (mask them out, as for any padding).
        """
        model, g = self.model, self.geometry
        device = model.get_output_embeddings().weight.device
        prompt_lengths = torch.tensor([len(p) for p in prompts], device=device)
        if bool((prompt_lengths == 0).any()):
            raise ValueError("every prompt needs at least one token (its last position predicts response token 0)")
        row_prompt, responses = row_prompt.to(device), responses.to(device)
        response_lengths = response_lengths.to(device)
        # Response tokens fed to the model: all but the last (which predicts nothing).
        fed_lengths = (response_lengths - 1).clamp(min=0)
        P = int(prompt_lengths.max())
        R = int(fed_lengths.max())
        prompt_slots = torch.arange(P, device=device)[None, :] < prompt_lengths[:, None]  # (groups, P)
        fed_slots = torch.arange(R, device=device)[None, :] < fed_lengths[:, None]  # (rows, R)
        num_prompt_tokens = int(prompt_lengths.sum())

        tokens = torch.cat([torch.cat([p.to(device) for p in prompts]), responses[:, :R][fed_slots]])
        positions = torch.cat(
            [
                torch.arange(P, device=device).expand(len(prompts), P)[prompt_slots],
                (prompt_lengths[row_prompt][:, None] + torch.arange(R, device=device))[fed_slots],
            ]
        )
        h = F.embedding(tokens, model.model.embed_tokens.weight)  # (N, D): packed, no padding
        cos, sin = model.model.rotary_emb(h[None], positions[None])  # (1, N, d), with any rope scaling
        cos, sin = cos[0, :, None].to(h.dtype), sin[0, :, None].to(h.dtype)  # (N, 1, d)

        # Attention masks over padded blocks (True = may attend).
        response_keys = torch.cat(
            [
                prompt_slots[row_prompt][:, None, :].expand(-1, R, -1),
                torch.ones(R, R, dtype=torch.bool, device=device).tril().expand(len(row_prompt), -1, -1),
            ],
            dim=2,
        )[:, None]  # (rows, 1, R, P + R)

        H, KV, d = g.num_heads, g.num_kv_heads, g.head_dim
        for layer in model.model.layers:
            w = gather_layer(layer)
            qkv = F.linear(rms_norm(h, w.norm_in, w.norm_in_eps), w.qkv_weight, w.qkv_bias)
            q = rotate(qkv[:, : H * d].view(-1, H, d), cos, sin)
            k = rotate(qkv[:, H * d : (H + KV) * d].view(-1, KV, d), cos, sin)
            v = qkv[:, (H + KV) * d :].view(-1, KV, d)
            # Prompts: causal attention within each prompt (right padding is never attended by a real query).
            qp, kp, vp = (_pad(x[:num_prompt_tokens], prompt_slots) for x in (q, k, v))  # (groups, heads, P, d)
            out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=g.scaling, enable_gqa=KV != H)
            # Responses: each row over its prompt's keys (shared, gathered) and its own, causal.
            qr, kr, vr = (_pad(x[num_prompt_tokens:], fed_slots) for x in (q, k, v))  # (rows, heads, R, d)
            out_r = F.scaled_dot_product_attention(
                qr,
                torch.cat([kp[row_prompt], kr], dim=2),
                torch.cat([vp[row_prompt], vr], dim=2),
                attn_mask=response_keys,
                scale=g.scaling,
                enable_gqa=KV != H,
            )
            attn = torch.cat([_unpad(out_p, prompt_slots), _unpad(out_r, fed_slots)])  # (N, H*d)
            h = mlp_block(h + F.linear(attn, w.o_weight, w.o_bias), w)

        # Positions that predict a response token: each prompt's last, then every fed response token.
        last_prompt = prompt_lengths.cumsum(0) - 1
        norm_weight, eps, head_weight, head_bias = output_head(model)
        predicting = torch.cat([h[last_prompt], h[num_prompt_tokens:]])
        logits = F.linear(rms_norm(predicting, norm_weight, eps), head_weight, head_bias)  # (groups + fed, V)
        return logits[_logit_rows(row_prompt, fed_slots, len(prompts), responses.shape[1])]


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
