"""Tiny random-init causal LMs from real Hugging Face configs (Qwen2 or Llama architecture).

They are ordinary `transformers` models: everything that works on them (save_pretrained,
from_pretrained, generate, vLLM's loader) works on a real checkpoint of the same architecture.
The sizes follow the CPU measurements in ../shared/reference/cpu-limits.md: ~1M suits tests,
~5M the CPU default, ~20M a "small but real" run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM


@dataclass(frozen=True)
class TinySize:
    """Shape of one tiny model. head_dim = hidden // heads (64 for all sizes but 1m's 32)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


# Parameter counts exclude the (tied) embedding, which adds vocab × hidden (~13k-53k at vocab ~104).
SIZES: dict[str, TinySize] = {
    "1m": TinySize(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=512),  # 0.98M
    "5m": TinySize(hidden=256, layers=6, heads=4, kv_heads=2, intermediate=768),  # 4.7M
    "20m": TinySize(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1024),  # 18.9M
    "100m": TinySize(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=3072),  # 103.9M (the GPU check)
}


def build_tiny_model(
    tokenizer,
    size: str = "5m",
    *,
    seed: int = 0,
    arch: str = "llama",
    max_position_embeddings: int = 2048,
) -> PreTrainedModel:
    """A random-init causal LM whose vocab, pad, bos and eos ids come from `tokenizer`.

    The init is HF's own (`initializer_range` 0.02), seeded with a private generator so that the
    global RNG state is untouched and the same seed gives the same weights. Embeddings are tied.
    Returned in eval mode, float32, on the CPU.

    arch="llama" is the default (SmolLM2's architecture) because every consumer's AutoTokenizer keeps
    our char tokenizer as saved for it; for model_type qwen2 transformers 5 swaps in Qwen2Tokenizer
    (see loading._load_tokenizer), which matters for tools that load the directory themselves (vLLM).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if arch not in ("qwen2", "llama"):
        raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")
    s = SIZES[size]
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(**common)
    # fork_rng keeps the caller's global RNG stream unchanged while HF's init draws from it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def num_parameters(model: torch.nn.Module, *, exclude_embeddings: bool = False) -> int:
    """Distinct parameters (tied weights counted once), optionally without the input embedding."""
    seen: set[int] = set()
    total = 0
    emb = model.get_input_embeddings().weight if exclude_embeddings else None
    for p in model.parameters():
        if id(p) in seen or (emb is not None and p is emb):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
