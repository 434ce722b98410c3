"""dapo.rollout: generation behind one interface (`RolloutEngine`).

    engine = build_engine("builtin", model, tokenizer)     # or "vllm" (optional extra)
    batch = engine.generate(prompt_ids, n=8, sampling=SamplingParams(max_new_tokens=128), seed=0)
    engine.update_weights(model)                           # free when the engine shares the module

vLLM is imported only when asked for.
"""

from __future__ import annotations

from dapo.rollout.base import (
    FINISH_REASONS,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    concat_rollouts,
    engine_logprobs_are_sampling_logprobs,
    validate_request,
    wave_seed,
)
from dapo.rollout.builtin import BuiltinEngine


def build_engine(kind: str, model, tokenizer=None, **kwargs) -> RolloutEngine:
    """ "builtin": BuiltinEngine(model, tokenizer, **kwargs), sharing the module.
    "vllm": VLLMEngine(model, tokenizer, **kwargs), a vLLM instance loaded from the model's weights."""
    if kind == "builtin":
        return BuiltinEngine(model, tokenizer, **kwargs)
    if kind == "vllm":
        from dapo.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model, tokenizer, **kwargs)
    raise ValueError(f"engine kind must be 'builtin' or 'vllm', got {kind!r}")


__all__ = [
    "FINISH_REASONS",
    "BuiltinEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "build_engine",
    "concat_rollouts",
    "engine_logprobs_are_sampling_logprobs",
    "validate_request",
    "wave_seed",
]
