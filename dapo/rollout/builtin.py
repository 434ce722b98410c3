"""The built-in rollout engine: batched sampling with a KV cache over any Hugging Face causal LM.

One generate() call:
  1. validate everything (before any compute);
  2. prefill the P distinct prompts once, left-padded into one batch (positions count real tokens
     only, so a prompt's padding changes nothing but where its tokens sit in the buffer);
  3. copy each prompt's K/V to its n sample rows;
  4. decode all rows in lockstep: one forward per step for the whole batch, token choice, log-probs
     and finish checks as whole-batch tensor ops (stop strings are the one exception: Python work
     only for rows whose new token could end a stop string);
  5. when enough rows have finished, drop them from the cache so they stop costing compute.

Memory: a request larger than `max_rows_in_flight` rows runs in waves of whole prompts, one after the
other, so the KV cache never holds more than that many rows (1,319 GSM8K prompts x 8 samples of a 135M
model would otherwise need ~15 GB at once). Wave w is seeded with `wave_seed(seed, w)`; wave 0 keeps
`seed`, so a request that fits in one wave is generated exactly as without the limit.

Determinism: for a fixed seed, inputs, engine settings (the wave size included) and torch thread count on
one machine, the output is bitwise identical. It is NOT independent of the batch composition: one
generator draws noise for all rows of a wave, so adding a prompt, changing n or the wave size changes
the samples.

In the trainer's process the engine holds the trainer's own module: no copy, so update_weights is
free. It switches the module to eval mode (and to its attention function) only for the duration of
a call and restores both afterwards; it runs under torch.no_grad and leaves no grads.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from dapo.rollout.base import (
    RolloutBatch,
    SamplingParams,
    concat_rollouts,
    validate_request,
    wave_seed,
    waves_one_by_one,
)
from dapo.rollout.fused_decode import unsupported_reason
from dapo.rollout.kv_cache import ATTN_NAME, HFCacheBackend, StaticBackend
from dapo.rollout.sampling import sample_from_logits, sampling_logits
from dapo.rollout.weight_sync import DEFAULT_BUCKET_MB, Received, as_buckets, check_complete

BACKENDS = ("fused", "static", "hf")
_REASON_CODES = {0: "length", 1: "eos", 2: "length", 3: "stop"}  # 0 never survives; kept for safety
# Share of the machine's memory the automatic wave size lets the KV cache and the per-row logits take.
_AUTO_MEMORY_SHARE = 0.25


def machine_memory_bytes() -> int:
    """Physical memory of this machine (the automatic wave budget is a share of it)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class BuiltinEngine:
    """Rollout engine running in this process on the model's device.

    Args:
        model: a Hugging Face causal LM (`model(input_ids, attention_mask, position_ids,
            past_key_values, use_cache, logits_to_keep)`); shared, not copied.
        tokenizer: optional; gives defaults for eos/pad ids and is needed for stop strings.
        eos_token_ids: ids that end a response with finish reason "eos" (default: the tokenizer's
            and the model's generation_config eos ids).
        pad_token_id: the id written into padding (default: the tokenizer's, else the first EOS).
        max_context: longest prompt + response (default: config.max_position_embeddings).
        backend: "fused" (static cache + decode steps as plain tensor ops, Llama/Qwen2 only), "static"
            (static cache, the model's own modules), "hf" (DynamicCache), or "auto": the first of
            fused, static, hf whose self-check against a plain forward pass agrees (a warning says
            when auto falls back to hf).
        compact_below: drop finished rows from the cache once the live rows fall to this fraction
            of the rows being computed (1.0 = as soon as any finishes). Dropping copies the filled
            cache, so a little slack amortises it.
        max_rows_in_flight: most rows (prompt x sample) decoded at once; a larger request runs in waves
            of whole prompts. None = as many as fit in a quarter of this machine's memory, counting the
            KV cache of the longest prompt plus the response cap and a few vocabulary-sized rows of
            logits per row (`rows_per_wave`).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        *,
        eos_token_ids: Iterable[int] | None = None,
        pad_token_id: int | None = None,
        max_context: int | None = None,
        backend: str = "auto",
        compact_below: float = 0.875,
        max_rows_in_flight: int | None = None,
    ):
        if max_rows_in_flight is not None and max_rows_in_flight < 1:
            raise ValueError(f"max_rows_in_flight must be >= 1 (or None: from memory), got {max_rows_in_flight!r}")
        self.max_rows_in_flight = max_rows_in_flight
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if not 0.0 < compact_below <= 1.0:
            raise ValueError(f"compact_below must be in (0, 1], got {compact_below!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.eos_token_ids = tuple(sorted(set(eos_token_ids))) if eos_token_ids is not None else self._default_eos()
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad_token_id)
        for t in (*self.eos_token_ids, self.pad_token_id):
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"token id {t} (eos/pad) is outside the vocabulary (size {self.vocab_size})")
        self.max_context = int(max_context or getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.compact_below = compact_below
        self._token_texts: list[str] | None = None
        self._stop_tables: dict[tuple[str, ...], Tensor] = {}
        self.backend_name = backend if backend != "auto" else self._pick_backend()

    # ------------------------------------------------------------------ interface
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        prompts = validate_request(
            prompts, n, sampling, vocab_size=self.vocab_size, max_context=self.max_context,
            can_decode=self.tokenizer is not None,
        )  # fmt: skip
        prompts_per_wave = max(1, self.rows_per_wave(prompts, sampling) // n)
        with self._generation_mode():
            waves = [
                self._generate(prompts[start : start + prompts_per_wave], n, sampling, wave_seed(seed, wave))
                for wave, start in enumerate(range(0, len(prompts), prompts_per_wave))
            ]
        return waves[0] if len(waves) == 1 else concat_rollouts(waves, self.pad_token_id)

    def rows_per_wave(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> int:
        """Rows decoded at once: `max_rows_in_flight`, or what a quarter of the machine's memory holds."""
        if self.max_rows_in_flight is not None:
            return self.max_rows_in_flight
        context = min(self.max_context, max(len(p) for p in prompts) + sampling.max_new_tokens)
        # K and V of every layer for every position, plus ~6 float32 rows of logits (logits, log-softmax,
        # the filtered sampling copy and their temporaries) per decoded row.
        per_row = self._kv_bytes_per_token() * context + 6 * 4 * self.vocab_size
        return max(1, int(_AUTO_MEMORY_SHARE * machine_memory_bytes()) // per_row)

    def generate_waves(self, prompts, n: int, sampling: SamplingParams, seed: int, prompts_per_wave: int):
        return waves_one_by_one(self, prompts, n, sampling, seed, prompts_per_wave)

    def update_weights(self, model_or_state_dict) -> None:
        """Bring the engine's module up to date from a module, a state dict or buckets of (name, tensor)
        (`weight_sync`), copying in place bucket by bucket (cast to the engine's dtype). A no-op for the module
        the engine already holds (the in-process case: trainer and engine share parameters)."""
        if model_or_state_dict is self.model:
            return
        targets = self.model.state_dict()
        received = Received()
        with torch.no_grad():
            for bucket in as_buckets(model_or_state_dict, DEFAULT_BUCKET_MB * 2**20):
                for name, tensor in bucket:
                    target = targets.get(name)
                    if target is not None and target.shape != tensor.shape:
                        raise ValueError(
                            f"weight {name!r}: the engine holds {tuple(target.shape)}, got {tuple(tensor.shape)}"
                        )
                    if target is not None:
                        target.copy_(tensor)
                received.add(bucket)
        check_complete(received, targets, "the built-in engine")

    def reports_logprobs_of(self, module) -> bool:
        """True for the very module the engine holds (shared with the trainer, not a copy) in float32."""
        return module is self.model and all(p.dtype == torch.float32 for p in self.model.parameters())

    def counters(self) -> dict[str, float]:
        return {}

    def sleep(self, level: int) -> None:
        pass  # its weights are the trainer's module (or a copy the push refreshes); its KV cache lives per request

    def wake_up(self, tags) -> None:
        pass

    def close(self) -> None:
        self._stop_tables.clear()

    # ------------------------------------------------------------------ the loop
    def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        device = self.model.get_output_embeddings().weight.device
        P, B = len(prompts), len(prompts) * n
        lens = torch.tensor([len(p) for p in prompts])
        Tp = int(lens.max())
        prompt_ids = torch.full((P, Tp), self.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, Tp - len(p) :] = torch.tensor(p)
        prompt_mask = torch.arange(Tp)[None, :] >= (Tp - lens)[:, None]
        # A row stops at max_new_tokens or when prompt + response fills the context.
        budget = (self.max_context - lens).clamp(max=sampling.max_new_tokens).repeat_interleave(n).to(device)
        T = int(budget.max())

        gen = torch.Generator(device=device).manual_seed(seed)
        ends_eos = self._id_table(self.eos_token_ids, device)
        ends_stop = self._id_table(sampling.stop_token_ids, device) & ~ends_eos
        maybe_ends_string = self._stop_string_table(sampling.stop_strings, device) if sampling.stop_strings else None

        out_tokens = torch.full((B, T), self.pad_token_id, dtype=torch.long, device=device)
        out_lp = torch.zeros(B, T, device=device)
        out_slp = torch.zeros(B, T, device=device) if sampling.return_sampling_logprobs else None
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        reasons = torch.zeros(B, dtype=torch.long, device=device)

        backend = self._new_backend(self.backend_name)
        try:
            logits = backend.prefill(prompt_ids.to(device), prompt_mask.to(device), Tp + T)  # (P, V)
            logits = logits.repeat_interleave(n, dim=0)  # (B, V): the n samples share the prefill
            backend.expand(n)
            rows = torch.arange(B, device=device)  # original row of each computed row
            positions = lens.to(device).repeat_interleave(n)  # next position id per row
            alive = torch.ones(B, dtype=torch.bool, device=device)
            for s in range(T):
                tok, lp, slp = self._choose(logits, sampling, gen)  # (b,) each
                out_tokens[rows, s] = tok
                out_lp[rows, s] = lp
                if out_slp is not None:
                    out_slp[rows, s] = slp
                # Finish reasons by priority: eos (1) > stop token or string (3) > length (2).
                is_eos, is_stop = ends_eos[tok], ends_stop[tok]
                if maybe_ends_string is not None:
                    is_stop = is_stop | self._stop_string_hits(
                        out_tokens, rows, s, alive & maybe_ends_string[tok], sampling.stop_strings
                    )
                at_cap = s + 1 >= budget[rows]
                done = alive & (is_eos | is_stop | at_cap)
                code = torch.where(is_eos, 1, torch.where(is_stop, 3, 2))
                reasons[rows[done]] = code[done]
                lengths[rows[done]] = s + 1
                alive &= ~done
                num_alive = int(alive.sum())
                if num_alive == 0:
                    break
                if num_alive <= self.compact_below * rows.numel():
                    keep = alive.nonzero().squeeze(1)
                    backend.select(keep)
                    rows, tok, positions, alive = rows[keep], tok[keep], positions[keep], alive[keep]
                logits = backend.step(tok, positions)
                positions = positions + 1
        finally:
            backend.release()

        T_out = int(lengths.max())
        response_mask = torch.arange(T_out, device=device)[None, :] < lengths[:, None]
        response_ids = out_tokens[:, :T_out].masked_fill(~response_mask, self.pad_token_id)
        cpu = torch.device("cpu")
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
            response_ids=response_ids.to(cpu),
            response_mask=response_mask.to(cpu),
            logprobs=(out_lp[:, :T_out] * response_mask).to(cpu),
            sampling_logprobs=None if out_slp is None else (out_slp[:, :T_out] * response_mask).to(cpu),
            response_lengths=lengths.to(cpu),
            finish_reasons=tuple(_REASON_CODES[c] for c in reasons.tolist()),
            group_index=torch.arange(P).repeat_interleave(n),
            n=n,
        )

    @staticmethod
    def _choose(logits: Tensor, sampling: SamplingParams, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        """Next token per row, its log-prob under the raw policy, and under the sampling distribution."""
        raw = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
        if sampling.is_greedy:
            tok = raw.argmax(dim=-1)
            slp = torch.zeros_like(tok, dtype=raw.dtype) if sampling.return_sampling_logprobs else None
        else:
            x = sampling_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)
            tok = sample_from_logits(x, gen)
            slp = None
            if sampling.return_sampling_logprobs:
                slp = torch.log_softmax(x, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
        return tok, raw.gather(-1, tok[:, None]).squeeze(-1), slp

    # ------------------------------------------------------------------ stop strings
    def _stop_string_table(self, stop_strings: tuple[str, ...], device) -> Tensor:
        """(V,) bool: can this token be the one that completes a stop string? True if its text
        contains the last character of some stop string, or is a partial UTF-8 piece (decodes to
        U+FFFD). Only those rows are decoded, so the Python work tracks hits, not the batch."""
        if stop_strings not in self._stop_tables:
            if self._token_texts is None:
                self._token_texts = [self.tokenizer.decode([i]) for i in range(self.vocab_size)]
            last_chars = {s[-1] for s in stop_strings}
            flags = [("\ufffd" in t) or any(c in t for c in last_chars) for t in self._token_texts]
            self._stop_tables[stop_strings] = torch.tensor(flags, dtype=torch.bool)
        return self._stop_tables[stop_strings].to(device)

    def _stop_string_hits(self, out_tokens: Tensor, rows: Tensor, s: int, candidates: Tensor, stop_strings) -> Tensor:
        hits = torch.zeros_like(candidates)
        idx = candidates.nonzero().squeeze(1).tolist()
        if not idx:
            return hits
        # A stop string of c characters spans at most c tokens (plus one for a split character).
        window = max(len(x) for x in stop_strings) + 1
        for i in idx:
            tail = out_tokens[rows[i], max(0, s + 1 - window) : s + 1].tolist()
            text = self.tokenizer.decode(tail)
            hits[i] = any(x in text for x in stop_strings)
        return hits

    # ------------------------------------------------------------------ helpers
    def _default_eos(self) -> tuple[int, ...]:
        ids: set[int] = set()
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        if tok_eos is not None:
            ids.add(int(tok_eos))
        gc_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if gc_eos is not None:
            ids.update([gc_eos] if isinstance(gc_eos, int) else gc_eos)
        return tuple(sorted(ids))

    def _id_table(self, ids: Iterable[int], device) -> Tensor:
        table = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        ids = list(ids)
        if ids:
            table[torch.tensor(ids, device=device)] = True
        return table

    def _kv_bytes_per_token(self) -> int:
        config = self.model.config
        heads = getattr(config, "num_attention_heads", 1)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return 2 * self._num_layers() * kv_heads * head_dim * self._param_dtype().itemsize

    def _num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @contextlib.contextmanager
    def _generation_mode(self, backend: str | None = None):
        """eval mode, no grad, and (static and fused backends) our attention function, for one call only.
        `backend` defaults to the engine's own."""
        backend = backend or self.backend_name
        was_training = self.model.training
        configs = {id(m.config): m.config for m in self.model.modules() if hasattr(m, "config")}
        previous = {k: c._attn_implementation for k, c in configs.items()}
        self.model.eval()
        try:
            if backend in ("static", "fused"):
                for c in configs.values():
                    c._attn_implementation = ATTN_NAME
            with torch.no_grad():
                yield
        finally:
            for k, c in configs.items():
                c._attn_implementation = previous[k]
            self.model.train(was_training)

    def _new_backend(self, name: str):
        if name == "hf":
            return HFCacheBackend(self.model)
        return StaticBackend(self.model, self._num_layers(), fused=name == "fused")

    def _pick_backend(self) -> str:
        reasons = []
        for name in ("fused", "static"):
            if name == "fused" and (why := unsupported_reason(self.model)) is not None:
                reasons.append(f"fused: {why}")
                continue
            problem = self._self_check(name)
            if problem is None:
                return name
            reasons.append(f"{name}: {problem}")
        warnings.warn(f"built-in engine falls back to the slow 'hf' backend ({'; '.join(reasons)})", stacklevel=3)
        return "hf"

    def _self_check(self, name: str) -> str | None:
        """Does backend `name` reproduce a plain forward pass on this model? Two prompts of different
        lengths (so left padding is exercised), three decode steps, compared with the unpadded
        full-sequence logits. Returns None if it does, else what went wrong."""
        device = self.model.get_output_embeddings().weight.device
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, self.vocab_size, (k,), generator=g) for k in (7, 4)]
        prefix = 3  # tokens fed by decode steps, after prefilling the rest
        try:
            with self._generation_mode("hf"):  # the reference runs with the model's own attention
                want = [self.model(s[None].to(device)).logits[0, -prefix - 1 :].float() for s in seqs]
            with self._generation_mode(name):
                Tp = max(len(s) - prefix for s in seqs)
                ids = torch.full((2, Tp), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros(2, Tp, dtype=torch.bool)
                for i, s in enumerate(seqs):
                    ids[i, Tp - len(s) + prefix :] = s[: len(s) - prefix]
                    mask[i, Tp - len(s) + prefix :] = True
                backend = self._new_backend(name)
                got = [backend.prefill(ids.to(device), mask.to(device), Tp + prefix).float()]
                positions = torch.tensor([len(s) - prefix for s in seqs], device=device)
                for j in range(prefix):
                    tok = torch.stack([s[len(s) - prefix + j] for s in seqs]).to(device)
                    got.append(backend.step(tok, positions + j).float())
            got = torch.stack(got, dim=1)  # (2, prefix+1, V)
            tol = 1e-3 if got.dtype == torch.float32 and self._param_dtype() == torch.float32 else 5e-2
            worst = max(float((got[i] - want[i]).abs().max()) for i in range(2))
            return None if worst <= tol else f"logits differ from a plain forward by {worst:.2g} (> {tol})"
        except Exception as e:  # an architecture the path does not cover
            return repr(e)

    def _param_dtype(self) -> torch.dtype:
        return self.model.get_output_embeddings().weight.dtype
