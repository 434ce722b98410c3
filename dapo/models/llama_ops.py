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


def _cat_bias(*linears: nn.Linear) -> Tensor | None:
    if all(m.bias is None for m in linears):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])


def gather_layer(layer: nn.Module) -> LayerWeights:
    """One decoder layer's weights with q/k/v and gate/up concatenated (4 matmuls per layer instead of 7).

    Under grad the concatenations are differentiable (their gradients flow back to the model's parameters);
    under no_grad they are plain copies, to be gathered once per use.
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
    gate, up = F.linear(x, w.gate_up_weight, w.gate_up_bias).chunk(2, dim=-1)
    return h + F.linear(F.silu(gate) * up, w.down_weight, w.down_bias)


def final_norm(model: nn.Module) -> tuple[Tensor, float]:
    """(weight, epsilon) of the norm after the last layer, of a causal LM or of its bare decoder."""
    norm = model.get_decoder().norm
    return norm.weight, norm.variance_epsilon


def output_head(model: nn.Module) -> tuple[Tensor, float, Tensor, Tensor | None]:
    """(final norm weight, its epsilon, head weight, head bias)."""
    head = model.get_output_embeddings()
    return *final_norm(model), head.weight, head.bias
