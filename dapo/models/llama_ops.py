"""The Llama-family layer as plain tensor ops on a Hugging Face model's own weights.

Shared by the rollout's fused decode step and the trainer's shared-prefix forward: both skip the HF
module stack (hooks, kwargs, mask and cache plumbing, ~15 module calls per layer) and do the same
arithmetic in fewer, larger operations:

    per layer:  x = RMSNorm(h);  [q k v] = x·[Wq Wk Wv]ᵀ (+ bias);  rotary(q, k);  attention
                h += Wo · attention;  x = RMSNorm(h);  [g u] = x·[Wg Wu]ᵀ;  h += Wd · (silu(g) ⊙ u)
    then:       logits = W_head · RMSNorm(h)

Everything (weights, rotary tables with any rope scaling, epsilons, attention scaling) is read from the
model, so results match the HF forward up to float rounding. Covered: `LlamaForCausalLM` (SmolLM2,
Llama 2/3) and `Qwen2ForCausalLM` (Qwen2/2.5) with full attention and SiLU MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def unsupported_reason(model: nn.Module) -> str | None:
    """None if these ops cover this model, else why not."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {config.model_type!r} (covered: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r}"
    if getattr(config, "use_sliding_window", False) or "sliding_attention" in (
        getattr(config, "layer_types", None) or ()
    ):
        return "sliding-window attention"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    return None


@dataclass(frozen=True)
class Geometry:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float

    @classmethod
    def of(cls, model: nn.Module) -> Geometry:
        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        attention = model.get_decoder().layers[0].self_attn
        return cls(
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            scaling=float(getattr(attention, "scaling", head_dim**-0.5)),
        )


@dataclass
class LayerWeights:
    norm_in: Tensor
    norm_in_eps: float
    qkv_weight: Tensor
    qkv_bias: Tensor | None
    o_weight: Tensor
    o_bias: Tensor | None
    norm_post: Tensor
    norm_post_eps: float
    gate_up_weight: Tensor
    gate_up_bias: Tensor | None
    down_weight: Tensor
    down_bias: Tensor | None
    qkv_lora: LowRank | None = None
    o_lora: LowRank | None = None
    gate_up_lora: LowRank | None = None
    down_lora: LowRank | None = None


@dataclass(frozen=True)
class LowRank:
    """The LoRA updates of projections whose outputs are concatenated (q, k, v; gate, up): x ↦ [s_i · B_i A_i x]_i.

    The A's are stacked, so the group costs one (N, Σr) product and one small product per adapted projection;
    a projection without adapters adds zeros. Only A and B carry gradients: the frozen base is never touched.
    """

    a: Tensor
    """(Σ r_i, in): the A matrices stacked (rank 0 rows for a projection without adapters)"""
    b: tuple[Tensor | None, ...]
    """B_i (out_i, r_i), None for a projection without adapters"""
    ranks: tuple[int, ...]
    outs: tuple[int, ...]
    scales: tuple[float, ...]

    def __call__(self, x: Tensor) -> Tensor:
        parts = F.linear(x, self.a).split(self.ranks, dim=-1)
        return torch.cat(
            [
                x.new_zeros(*x.shape[:-1], out) if b is None else F.linear(part, b) * scale
                for part, b, out, scale in zip(parts, self.b, self.outs, self.scales, strict=True)
            ],
            dim=-1,
        )


def project(x: Tensor, weight: Tensor, bias: Tensor | None, low_rank: LowRank | None) -> Tensor:
    """x·Wᵀ + b, plus the LoRA update when the projection has adapters."""
    y = F.linear(x, weight, bias)
    return y if low_rank is None else y + low_rank(x)


def _adapter(linear: nn.Module) -> tuple[Tensor, Tensor, float] | None:
    """(A, B, scale) of a PEFT LoRA layer's one active plain adapter; None for a plain linear layer.
    NotImplementedError for what these ops do not reproduce (dropout, DoRA and other variants, several
    active adapters, merged or disabled adapters)."""
    if not hasattr(linear, "lora_A"):
        return None
    active = [name for name in linear.active_adapters if name in linear.lora_A]
    if len(active) != 1 or linear.merged or linear.disable_adapters:
        raise NotImplementedError("LoRA layers with other than one active, unmerged adapter")
    name = active[0]
    if name in getattr(linear, "lora_variant", {}) or not isinstance(linear.lora_dropout[name], nn.Identity):
        raise NotImplementedError("LoRA with dropout or a variant such as DoRA")
    return linear.lora_A[name].weight, linear.lora_B[name].weight, float(linear.scaling[name])


def _low_rank(*linears: nn.Module) -> LowRank | None:
    adapters = [_adapter(m) for m in linears]
    if all(a is None for a in adapters):
        return None
    weight = next(a for a in adapters if a is not None)[0]
    return LowRank(
        a=torch.cat(
            [weight.new_zeros(0, m.in_features) if a is None else a[0] for m, a in zip(linears, adapters, strict=True)]
        ),
        b=tuple(None if a is None else a[1] for a in adapters),
        ranks=tuple(0 if a is None else a[0].shape[0] for a in adapters),
        outs=tuple(m.out_features for m in linears),
        scales=tuple(1.0 if a is None else a[2] for a in adapters),
    )


def _cat_bias(*linears: nn.Linear) -> Tensor | None:
    if all(m.bias is None for m in linears):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])


def gather_layer(layer: nn.Module) -> LayerWeights:
    """One decoder layer's weights with q/k/v and gate/up concatenated (4 matmuls per layer instead of 7).

    Under grad the concatenations are differentiable (their gradients flow back to the model's parameters);
    under no_grad they are plain copies, to be gathered once per use. On a PEFT LoRA model the weights are the
    frozen base's and each group's adapters come as its `LowRank` update.
    """
    a, m = layer.self_attn, layer.mlp
    return LayerWeights(
        norm_in=layer.input_layernorm.weight,
        norm_in_eps=layer.input_layernorm.variance_epsilon,
        qkv_weight=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
        qkv_bias=_cat_bias(a.q_proj, a.k_proj, a.v_proj),
        o_weight=a.o_proj.weight,
        o_bias=a.o_proj.bias,
        norm_post=layer.post_attention_layernorm.weight,
        norm_post_eps=layer.post_attention_layernorm.variance_epsilon,
        gate_up_weight=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
        gate_up_bias=_cat_bias(m.gate_proj, m.up_proj),
        down_weight=m.down_proj.weight,
        down_bias=m.down_proj.bias,
        qkv_lora=_low_rank(a.q_proj, a.k_proj, a.v_proj),
        o_lora=_low_rank(a.o_proj),
        gate_up_lora=_low_rank(m.gate_proj, m.up_proj),
        down_lora=_low_rank(m.down_proj),
    )


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Same order of operations as the HF RMSNorm: float32 statistics, cast back, then scale.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (the HF "rotate half" convention); cos/sin broadcast over x's head axis."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def mlp_block(h: Tensor, w: LayerWeights) -> Tensor:
    """The residual MLP half of a layer: h + Wd · (silu(g) ⊙ u) with [g u] from the post-attention norm."""
    x = rms_norm(h, w.norm_post, w.norm_post_eps)
    gate, up = project(x, w.gate_up_weight, w.gate_up_bias, w.gate_up_lora).chunk(2, dim=-1)
    return h + project(F.silu(gate) * up, w.down_weight, w.down_bias, w.down_lora)


def final_norm(model: nn.Module) -> tuple[Tensor, float]:
    """(weight, epsilon) of the norm after the last layer, of a causal LM or of its bare decoder."""
    norm = model.get_decoder().norm
    return norm.weight, norm.variance_epsilon


def output_head(model: nn.Module) -> tuple[Tensor, float, Tensor, Tensor | None]:
    """(final norm weight, its epsilon, head weight, head bias)."""
    head = model.get_output_embeddings()
    return *final_norm(model), head.weight, head.bias
