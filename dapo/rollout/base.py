"""The rollout interface: what every generation engine takes and returns.

The trainer only sees `RolloutEngine.generate(prompts, n, sampling, seed) -> RolloutBatch` and
`update_weights`; whether the tokens came from the built-in engine or vLLM is invisible to it.
Validation lives here too, so that every engine rejects bad input the same way and before any work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

FINISH_REASONS = ("eos", "length", "stop")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Filters apply in the order temperature → top_k → top_p → min_p
    (vLLM's order), each on the distribution left by the previous one."""

    temperature: float = 1.0
    """softmax temperature; 0 means greedy (argmax)"""
    top_p: float = 1.0
    """nucleus: keep the most likely tokens until their mass reaches top_p (always ≥ 1 token); in (0, 1]"""
    top_k: int = 0
    """keep the k most likely tokens; 0 or -1 = off"""
    min_p: float = 0.0
    """drop tokens whose probability is below min_p × the top token's probability; in [0, 1]"""
    max_new_tokens: int = 256
    """response length cap (EOS counted); the engine also stops at the model's context length"""
    stop_token_ids: tuple[int, ...] = ()
    """extra token ids that end a response (finish reason "stop"); the token is kept in the response"""
    stop_strings: tuple[str, ...] = ()
    """strings that end a response once the decoded response contains them (finish reason "stop");
    the tokens that complete the string are kept, so the response text includes the stop string"""
    greedy: bool = False
    """argmax decoding; the same as temperature 0"""
    return_sampling_logprobs: bool = False
    """also return log q(token) under the actual (tempered, filtered) sampling distribution"""

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0

    def validate(self) -> None:
        """Raise ValueError naming the offending value."""
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be >= 0 (or -1 = off), got {self.top_k!r}")
        if not (0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if any(not isinstance(t, int) or isinstance(t, bool) for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be ints, got {self.stop_token_ids!r}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")


@dataclass(frozen=True)
class RolloutBatch:
    """B = len(prompts) · n responses; the n responses of prompt i are rows i·n … i·n + n − 1.

    All tensors are on the CPU.

    Attributes:
        prompt_ids: (B, Tp) long, LEFT-padded with the pad id.
        prompt_mask: (B, Tp) bool, True on real prompt tokens.
        response_ids: (B, T) long, RIGHT-padded with the pad id; includes EOS / the stop token.
        response_mask: (B, T) bool, True on generated tokens (EOS included).
        logprobs: (B, T) float32, log π(token) under the raw policy logits (no temperature or
            filtering), 0 on padding.
        sampling_logprobs: (B, T) float32 log q(token) under the distribution actually sampled
            from (0 for greedy, where q is a point mass), or None if not requested.
        response_lengths: (B,) long, number of generated tokens, EOS counted.
        finish_reasons: B strings, each "eos" | "length" | "stop".
        group_index: (B,) long, index of the row's prompt in the input list.
        n: responses per prompt.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    sampling_logprobs: Tensor | None
    response_lengths: Tensor
    finish_reasons: tuple[str, ...]
    group_index: Tensor
    n: int

    def __post_init__(self):
        B, T = self.response_ids.shape
        for name in ("response_mask", "logprobs"):
            if tuple(getattr(self, name).shape) != (B, T):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {(B, T)}")
        if self.sampling_logprobs is not None and tuple(self.sampling_logprobs.shape) != (B, T):
            raise ValueError(f"sampling_logprobs has shape {tuple(self.sampling_logprobs.shape)}, expected {(B, T)}")
        if self.prompt_ids.shape != self.prompt_mask.shape or self.prompt_ids.shape[0] != B:
            raise ValueError(f"prompt_ids/prompt_mask shapes {tuple(self.prompt_ids.shape)} do not match B={B}")
        if len(self.finish_reasons) != B or tuple(self.response_lengths.shape) != (B,):
            raise ValueError("finish_reasons and response_lengths need one entry per row")
        if tuple(self.group_index.shape) != (B,) or self.n < 1 or B % self.n:
            raise ValueError(f"group_index shape {tuple(self.group_index.shape)} / n={self.n} inconsistent with B={B}")

    @property
    def num_prompts(self) -> int:
        return self.response_ids.shape[0] // self.n

    def sequences(self) -> tuple[Tensor, Tensor]:
        """(B, Tp + T) prompt+response token ids and their bool mask, as one left/right-padded block:
        the input a trainer's log-prob pass needs."""
        return (
            torch.cat([self.prompt_ids, self.response_ids], dim=1),
            torch.cat([self.prompt_mask, self.response_mask], dim=1),
        )


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int
    ) -> RolloutBatch: ...

    def generate_waves(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int, prompts_per_wave: int
    ) -> Iterator[RolloutBatch]:
        """The same request as consecutive waves of `prompts_per_wave` prompts (wave w seeded
        `wave_seed(seed, w)`), yielded in order as they are ready. Closing the iterator early stops the waves
        not yet started: dynamic sampling stops a round once its batch is full."""
        ...

    def update_weights(self, model_or_state_dict: Any) -> None:
        """Load the trained weights: a module, a state dict, or an iterable of buckets of (name, full tensor)
        (`dapo.rollout.weight_sync`), loaded one bucket at a time. Every weight must come exactly once."""
        ...

    def sleep(self, level: int) -> None:
        """Give the device memory back while the training ranks use it (level 1: weights to host memory, KV cache
        dropped; 2: both dropped). A no-op for an engine that holds nothing of its own there."""
        ...

    def wake_up(self, tags: Sequence[str]) -> None:
        """Take back what `sleep` gave: "weights" and/or "kv_cache" (`rollout.lifecycle` says in which order).
        Waking the KV cache also forgets the cached prompt prefixes."""
        ...

    def reports_logprobs_of(self, module: Any) -> bool:
        """Are the log-probs this engine returns `module`'s own float32 log-probs, computed by `module` itself
        (so that, at temperature 1, they can stand for a recomputing pass)?"""
        ...

    def counters(self) -> dict[str, float]:
        """Running totals worth logging every step (e.g. `rollout/worker_restarts`); may be empty."""
        ...

    def close(self) -> None: ...


def engine_logprobs_are_sampling_logprobs(temperature: float) -> bool:
    """Engines report log-probs of the raw, untempered logits (`RolloutBatch.logprobs`); the policy that sampled
    (and that the trainer's ratios use) is logits / T. The two agree only at T = 1. The one home of this rule:
    the mismatch metrics, the rollout correction and reusing the engine's log-probs as π_old all ask it."""
    return temperature == 1.0


def validate_request(
    prompts: Sequence[Sequence[int]],
    n: int,
    sampling: SamplingParams,
    *,
    vocab_size: int,
    max_context: int,
    can_decode: bool,
) -> list[list[int]]:
    """Check one generate() call before any work; return the prompts as lists of ints.

    Raises ValueError naming the value: no prompts, an empty prompt, a prompt token outside the
    vocabulary, a prompt that leaves no room to generate within `max_context`, n < 1, bad sampling
    settings, a stop token id outside the vocabulary, or stop strings without a tokenizer.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (responses per prompt) must be an int >= 1, got {n!r}")
    sampling.validate()
    for t in sampling.stop_token_ids:
        if not (0 <= t < vocab_size):
            raise ValueError(f"stop token id {t} is not in the vocabulary (size {vocab_size})")
    if sampling.stop_strings and not can_decode:
        raise ValueError(f"stop_strings {sampling.stop_strings!r} need an engine built with a tokenizer")
    if isinstance(prompts, Tensor):
        raise ValueError("prompts must be a list of unpadded token-id sequences, not one (padded) tensor")
    if len(prompts) == 0:
        raise ValueError("prompts must be a non-empty sequence of token-id sequences")
    out = []
    for i, p in enumerate(prompts):
        ids = p.tolist() if isinstance(p, Tensor) else [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if len(ids) >= max_context:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens, which leaves no room to generate "
                f"within the model's context of {max_context} tokens"
            )
        bad = [t for t in ids if not (0 <= t < vocab_size)]
        if bad:
            raise ValueError(f"prompt {i} holds token id {bad[0]} outside the vocabulary (size {vocab_size})")
        out.append(ids)
    return out


def wave_seed(seed: int, wave: int) -> int:
    """Seed of part `wave` of a request seeded `seed` that is generated in parts: part 0 keeps `seed` (a
    request that fits in one part is generated as if it were not split); later parts get distinct streams."""
    return seed if wave == 0 else (seed * 1_000_003 + wave * 7_919) % 2**63


def waves_one_by_one(
    engine: RolloutEngine,
    prompts: Sequence[Sequence[int]],
    n: int,
    sampling: SamplingParams,
    seed: int,
    prompts_per_wave: int,
) -> Iterator[RolloutBatch]:
    """`generate_waves` for an engine that generates in one place: each wave is generated when it is asked
    for, so an iterator closed early costs nothing more. For the built-in engine with rollout.max_rows_in_flight
    = prompts_per_wave · n, the waves hold exactly the tokens of the whole request generated at once."""
    if prompts_per_wave < 1:
        raise ValueError(f"prompts_per_wave must be >= 1, got {prompts_per_wave!r}")
    for wave, start in enumerate(range(0, len(prompts), prompts_per_wave)):
        yield engine.generate(prompts[start : start + prompts_per_wave], n, sampling, wave_seed(seed, wave))


def _padding_id(parts: Sequence[RolloutBatch]) -> int:
    for p in parts:
        for ids, mask in ((p.response_ids, p.response_mask), (p.prompt_ids, p.prompt_mask)):
            padded = ids[~mask]
            if padded.numel():
                return int(padded[0])
    return 0


def concat_rollouts(parts: Sequence[RolloutBatch], pad_token_id: int | None = None) -> RolloutBatch:
    """The batches of consecutive prompt sets (waves of one request) as one batch, in order.

    Prompts stay left-padded and responses right-padded to the widest of all parts, with `pad_token_id`
    (None: the id the parts already pad with, 0 if they hold no padding); `group_index` counts on across
    parts, so row i·n … i·n + n − 1 is still prompt i of the whole request.
    """
    n = parts[0].n
    if pad_token_id is None:
        pad_token_id = _padding_id(parts)
    if any(p.n != n for p in parts):
        raise ValueError("every part must have the same n")
    prompt_width = max(p.prompt_ids.shape[1] for p in parts)
    response_width = max(p.response_ids.shape[1] for p in parts)

    def left(t: Tensor, fill) -> Tensor:
        return torch.nn.functional.pad(t, (prompt_width - t.shape[1], 0), value=fill)

    def right(t: Tensor, fill) -> Tensor:
        return torch.nn.functional.pad(t, (0, response_width - t.shape[1]), value=fill)

    offsets = [0]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + p.num_prompts)
    has_sampling = parts[0].sampling_logprobs is not None
    return RolloutBatch(
        prompt_ids=torch.cat([left(p.prompt_ids, pad_token_id) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, False) for p in parts]),
        response_ids=torch.cat([right(p.response_ids, pad_token_id) for p in parts]),
        response_mask=torch.cat([right(p.response_mask, False) for p in parts]),
        logprobs=torch.cat([right(p.logprobs, 0.0) for p in parts]),
        sampling_logprobs=torch.cat([right(p.sampling_logprobs, 0.0) for p in parts]) if has_sampling else None,
        response_lengths=torch.cat([p.response_lengths for p in parts]),
        finish_reasons=tuple(r for p in parts for r in p.finish_reasons),
        group_index=torch.cat([p.group_index + offset for p, offset in zip(parts, offsets, strict=True)]),
        n=n,
    )
