"""`dapo train --dry-run`: what a config asks of the hardware, without loading a weight.

The model is built on PyTorch's meta device from its config alone (a local directory's config.json, the
built-in tiny model, or one of the well-known architectures below, for hub ids that cannot be fetched here),
so the parameter count is exact and nothing is allocated. From it, and the config, the plan estimates per
training rank (bytes; P parameters, b bytes per parameter of `model.dtype`, W ranks):

    weights        P·b (+ 2·P for autocast's bf16 copies under bf16-mixed); with fsdp2 P·b/W at rest, and
                   gathered for a pass the root (embeddings, final norm, head: R parameters) and two blocks of
                   B parameters (the one computed and the next, prefetched): (R + 2·B)·2 bytes under bf16-mixed
                   (its MixedPrecisionPolicy), ·b otherwise; and their unsharded float32 gradients, (R + B)·4,
                   before the reduce-scatter
    gradients      P·b / S                (S = W with fsdp2, 1 with ddp or one process)
    AdamW          2·P·b / S              (two moments, in the parameters' dtype)
    reference      P·b                    (a frozen whole copy per rank, only when a KL term is on)
    critic         4·P·b / S + P·b        (PPO: its own weights, gradients, moments and gathered weights)
    activations    L·(12·h + 4.3·i)·a per token of a micro-batch (actor.micro_batch_max_tokens; a rank computes
                   1/N of its tokens under ray.sequence_parallel=N, the figure used here), i the MLP's width,
                   a = 4 bytes in fp32 (2 assumed under bf16): what a decoder block of this project's forward
                   keeps for its backward, measured (`activation_bytes`, pinned by tests/test_plan.py);
                   with actor.activation_checkpointing, (L + 3)·h·a per token (each block's input, and the
                   embedding and final norm around them) plus one block's (12·h + 4.3·i)·a, recomputed in the
                   backward
    log-prob head  4·h per token, and 3·4·V per row of a 1024-row chunk (`algo.head_token_logprobs` keeps the
                   final hidden states for the backward and computes the logits, log-softmax and gradient one
                   chunk of rows at a time)

With ray.offload=all (FSDP2's CPUOffloadPolicy) the sharded weights, gradients and AdamW moments are in host memory
(listed apart) and only the gathered units and activations are on the GPU.

Per rollout worker: the weights (P·b in the engine's dtype) and the KV cache, 2·L·kv·d·b_kv per token, both split
over rollout.tensor_parallel_size GPUs (each holds at least one key/value head), within
rollout.gpu_memory_utilization of each GPU for vLLM. A colocated
engine shares its GPU with what the training rank keeps between updates: its sharded weights (none with
offload=all) and AdamW moments (none with offload=optimizer or all); gradients are freed after each step.
The fit check is against `trainer.gpu_memory_gb` (90 % of it usable) on a GPU, and nothing is checked on a CPU.
These are estimates of the largest terms, not a profile: allocator slack, CUDA context and temporary buffers
come on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dapo.config import Config
from dapo.errors import DapoError


# config.json facts of well-known checkpoints (the architecture only), so that a recipe naming a hub id can
# be planned on a machine without network. Instruct variants share their base's architecture.
def _arch(model_type, hidden, layers, heads, kv_heads, intermediate, vocab, tied, context) -> dict:
    return {
        "model_type": model_type, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "intermediate_size": intermediate, "vocab_size": vocab,
        "tie_word_embeddings": tied, "max_position_embeddings": context,
    }  # fmt: skip


KNOWN_ARCHITECTURES: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": _arch("qwen2", 896, 24, 14, 2, 4864, 151936, True, 32768),
    "Qwen/Qwen2.5-1.5B": _arch("qwen2", 1536, 28, 12, 2, 8960, 151936, True, 32768),
    "Qwen/Qwen2.5-7B": _arch("qwen2", 3584, 28, 28, 4, 18944, 152064, False, 131072),
    "Qwen/Qwen2.5-Math-7B": _arch("qwen2", 3584, 28, 28, 4, 18944, 152064, False, 4096),
    "Qwen/Qwen2.5-32B": _arch("qwen2", 5120, 64, 40, 8, 27648, 152064, False, 131072),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _arch("llama", 576, 30, 9, 3, 1536, 49152, True, 8192),
}
USABLE_SHARE = 0.9  # of a GPU's memory, for the fit check
GB = 1e9


class DryRunError(DapoError, RuntimeError):
    """The config cannot be planned (no model config to read), or does not fit the resources it names."""


def model_config(config: Config):
    """The model's transformers config, without weights."""
    from transformers import AutoConfig

    from dapo.models import resolve_model_path

    path = resolve_model_path(config.model.path)
    if path.endswith(".gguf") and Path(path).is_file():
        return AutoConfig.from_pretrained(Path(path).parent, gguf_file=Path(path).name)
    if path.startswith("builtin:"):
        from dapo.models import build_char_tokenizer
        from dapo.models.tiny import SIZES, build_tiny_model

        size = path.removeprefix("builtin:").removeprefix("tiny-")
        if size not in SIZES:
            raise DryRunError(f"model.path={path}: the built-in sizes are {', '.join(SIZES)}")
        with torch.device("meta"):
            return build_tiny_model(build_char_tokenizer(), size).config
    local = Path(path).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return AutoConfig.from_pretrained(local)
    if local.is_dir() and config.model.gguf_file:
        return AutoConfig.from_pretrained(local, gguf_file=config.model.gguf_file)
    key = path.removesuffix("-Instruct") if path.removesuffix("-Instruct") in KNOWN_ARCHITECTURES else path
    if key in KNOWN_ARCHITECTURES:
        facts = dict(KNOWN_ARCHITECTURES[key])
        return AutoConfig.for_model(facts.pop("model_type"), **facts)
    raise DryRunError(
        f"model.path={path}: the dry run needs the model's config.json without network. Give a local model "
        f"directory, a builtin:tiny-* model, or one of the known ids: {', '.join(KNOWN_ARCHITECTURES)}"
    )


def count_parameters(model_cfg) -> int:
    """Exact parameter count of the model `model_cfg` describes, built on the meta device (no memory)."""
    return parameter_split(model_cfg)[0]


def parameter_split(model_cfg) -> tuple[int, int]:
    """(all parameters, those of one decoder block) of the model `model_cfg` describes, on the meta device: FSDP2's
    units are the blocks and the root (embeddings, final norm, head: all - layers x block)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_cfg)
    block = sum(p.numel() for p in model.get_decoder().layers[0].parameters())
    return sum(p.numel() for p in model.parameters()), block


def lora_parameters(model_cfg, rank: int, target_modules: list[str]) -> int:
    """Parameters of rank-r LoRA adapters (A: r x in, B: out x r) on the named projections of a Llama / Qwen2
    model: r · (in + out) per adapted layer, in every decoder layer."""
    hidden, inner = model_cfg.hidden_size, model_cfg.intermediate_size
    heads = model_cfg.num_attention_heads
    head_dim = getattr(model_cfg, "head_dim", None) or hidden // heads
    kv = (getattr(model_cfg, "num_key_value_heads", None) or heads) * head_dim
    shapes = {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }  # fmt: skip
    per_layer = sum(rank * sum(shapes[name]) for name in target_modules if name in shapes)
    return per_layer * model_cfg.num_hidden_layers


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        verdict = (
            ["", "fits: yes"]
            if not self.problems
            else ["", "CANNOT RUN AS IT STANDS:", *(f"  - {p}" for p in self.problems)]
        )
        return "\n".join(self.lines + verdict)


# What one decoder block of this project's forward keeps for its backward, per token, in values of the activation
# dtype: ~12 of the hidden width (norm inputs, projections' inputs, q/k/v and attention outputs, residuals) and ~4.3
# of the MLP's (gate, up, their product). Measured on CPU in float32 with the shared-prefix forward at three model
# sizes (within 10 %); tests/test_plan.py measures again and pins the plan to within 25 %.
BLOCK_HIDDEN_VALUES, BLOCK_MLP_VALUES = 12.0, 4.3
AROUND_BLOCKS_HIDDEN_VALUES = 3.0  # the embedding output and the final norm, kept with or without checkpointing


def activation_bytes(
    tokens: int, layers: int, hidden: int, intermediate: int, act_bytes: int, checkpointing: bool
) -> tuple[float, float]:
    """(bytes the decoder's activations keep from the forward for the backward, bytes more at the backward's peak)
    for a micro-batch of `tokens` tokens, the head apart.

    Without checkpointing every block keeps its working set until its backward; with it, each block keeps its
    input only, and one block's working set exists at a time, while that block is recomputed."""
    block = tokens * (BLOCK_HIDDEN_VALUES * hidden + BLOCK_MLP_VALUES * intermediate) * act_bytes
    if not checkpointing:
        return layers * block, 0.0
    return tokens * (layers + AROUND_BLOCKS_HIDDEN_VALUES) * hidden * act_bytes, block


HEAD_CHUNK_ROWS = 1024  # `algo.head_token_logprobs`' default chunk


def head_bytes(tokens: int, vocab: int, hidden: int) -> tuple[float, float]:
    """(bytes the log-prob head keeps for the backward, bytes more while it runs): the float32 final hidden state
    of every predicted token (the head's input), then a chunk's logits, log-softmax and gradient, (chunk, vocab)
    float32 each (`algo.head_token_logprobs`: no [tokens, vocab] tensor outlives a chunk)."""
    return tokens * hidden * 4.0, 3.0 * min(tokens, HEAD_CHUNK_ROWS) * vocab * 4.0


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:,.1f} GB"


def make_plan(config: Config) -> Plan:
    """The plan of `config` (see the module docstring); `problems` lists what does not fit."""
    cfg = model_config(config)
    params, block_params = parameter_split(cfg)
    plan = Plan()
    c, r = config, config.ray
    layers, hidden, vocab = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    param_bytes = 2 if c.model.dtype == "bfloat16" else 4
    on_gpu = c.trainer.device == "cuda"
    ray = c.trainer.backend == "ray"
    world = r.train_workers if ray else 1
    shards = world if ray and r.strategy == "fsdp2" else 1
    plan.lines.append(
        f"model        {c.model.path} ({cfg.model_type}: {layers} layers, hidden {hidden}, {heads} heads / {kv_heads} "
        f"KV, vocab {vocab:,}): {params / 1e9:,.3f} B parameters in {c.model.dtype}, training in {c.actor.precision}"
    )
    gpus = r.gpus_per_worker if ray else (1 if on_gpu else 0)
    where = f"{world} rank(s) x {gpus:g} GPU" if on_gpu or gpus else f"{world} rank(s) on CPU"
    strategy = (r.strategy if ray else "one process") + (f", state sharded {shards} ways" if shards > 1 else "")
    if ray and r.sequence_parallel > 1:
        strategy += f", sequence parallel {r.sequence_parallel}"
    plan.lines.append(f"training     {c.trainer.backend}: {where} ({strategy})")
    if ray and r.rollout_workers:
        rollout_gpus = r.gpus_per_worker if r.placement == "colocated" else r.gpus_per_rollout_worker
        plan.lines.append(
            f"rollout      {r.rollout_workers} {c.rollout.engine} worker(s), {r.placement}, {rollout_gpus:g} GPU each "
            f"(total GPUs: {world * gpus + (0 if r.placement == 'colocated' else r.rollout_workers * rollout_gpus):g})"
        )
    else:
        plan.lines.append(f"rollout      {c.rollout.engine} engine in the driver")

    # Per training rank.
    weights = params * param_bytes
    mixed = c.actor.precision == "bf16-mixed" and param_bytes == 4
    offload = r.offload if ray else "none"
    host: dict[str, float] = {}  # what ray.offload=all keeps in host memory instead
    if shards > 1:
        # FSDP2, one unit a block and the root: sharded at rest; gathered (in bf16 under bf16-mixed) the root for the
        # whole pass and a block at a time, the next one prefetched; unsharded gradients of the root and of a block
        # until their reduce-scatter (float32, the reduce dtype).
        root = params - layers * block_params
        gathered = (root + 2 * block_params) * (2 if mixed or param_bytes == 2 else 4)
        terms = {
            "weights, sharded": weights / shards,
            "gathered: root + 2 blocks": gathered,
            "unsharded gradients: root + a block": (root + block_params) * 4,
        }
    else:  # bf16-mixed autocast keeps a bf16 copy of each weight during the pass
        terms = {"weights": weights + (params * 2 if mixed else 0)}
    lora = c.model.lora
    if lora.rank > 0:  # only the adapters train, in float32: their gradients and moments, not the model's
        adapters = lora_parameters(cfg, lora.rank, lora.target_modules)
        terms.update({f"LoRA gradients ({adapters / 1e6:,.1f} M)": 4 * adapters, "AdamW moments": 8 * adapters})
    else:
        terms.update({"gradients": weights / shards, "AdamW moments": 2 * weights / shards})
    if offload == "all":
        host = {name: terms.pop(name) for name in ("weights, sharded", "gradients", "AdamW moments") if name in terms}
    if c.uses_reference:
        terms["reference copy"] = weights
    if c.uses_critic:
        terms["critic"] = 4 * weights / shards + weights
    sequence_parallel = r.sequence_parallel if ray else 1
    tokens = -(-c.actor.micro_batch_max_tokens // sequence_parallel)  # a rank's share of a micro-batch
    act_bytes = 2 if c.update_dtype_is_bf16 else 4
    checkpointing = c.actor.activation_checkpointing
    split = f", 1/{sequence_parallel} of {c.actor.micro_batch_max_tokens:,}" if sequence_parallel > 1 else ""
    what = f"activations{', checkpointed' if checkpointing else ''} ({tokens:,} tokens a micro-batch{split})"
    terms[what] = sum(activation_bytes(tokens, layers, hidden, cfg.intermediate_size, act_bytes, checkpointing))
    terms["log-prob head"] = sum(head_bytes(tokens, vocab, hidden))
    total = sum(terms.values())
    plan.lines.append(
        "per rank     " + " | ".join(f"{name} {_gb(v)}" for name, v in terms.items()) + f" = {_gb(total)}"
    )
    if host:
        plan.lines.append(
            "host memory  " + " | ".join(f"{name} {_gb(v)}" for name, v in host.items())
            + f" = {_gb(sum(host.values()))} a rank (ray.offload=all)"
        )  # fmt: skip
    budget = c.trainer.gpu_memory_gb * GB * USABLE_SHARE
    if on_gpu and total > budget:
        largest = max(terms, key=terms.get)
        plan.problems.append(
            f"a training rank needs ~{_gb(total)} of {c.trainer.gpu_memory_gb:g} GB x {USABLE_SHARE:.0%}; the largest "
            f"term is {largest} ({_gb(terms[largest])}). " + _advice(largest, c)
        )

    # Generation.
    sequence = c.data.max_prompt_length + c.rollout.max_response_length
    rollout_bytes = 2 if c.rollout.dtype == "bfloat16" or param_bytes == 2 else 4
    tp = c.rollout.tensor_parallel_size
    # vLLM splits the key/value heads over its tensor-parallel ranks, each holding at least one (replicated).
    kv_per_token = 2 * layers * kv_heads * head_dim * rollout_bytes
    kv_per_token_a_gpu = 2 * layers * max(1, kv_heads // tp) * head_dim * rollout_bytes
    engine_weights = params * rollout_bytes
    round_rows = c.data.gen_batch_size * c.rollout.group_size
    parallel = f", over {tp} GPUs (tensor parallel): {_gb(engine_weights / tp)} a GPU" if tp > 1 else ""
    plan.lines.append(
        f"generation   {c.data.gen_batch_size} prompts x {c.rollout.group_size} = {round_rows:,} responses a round, "
        f"up to {sequence:,} tokens each; KV cache {kv_per_token / 1e3:,.0f} kB a token, "
        f"{_gb(kv_per_token * sequence)} a full sequence; engine weights {_gb(engine_weights)}{parallel}"
    )
    if on_gpu:
        colocated = ray and r.rollout_workers and r.placement == "colocated"
        kept = (0.0 if offload == "all" else weights / shards) + (0.0 if offload != "none" else 2 * weights / shards)
        resident = kept if colocated or not (ray and r.rollout_workers) else 0.0
        share = c.rollout.gpu_memory_utilization if c.rollout.engine == "vllm" else USABLE_SHARE
        gpu = c.trainer.gpu_memory_gb * GB
        # What the engine may take of each of its GPUs: its share, and never what the training rank keeps there.
        free = min(gpu * share, gpu * USABLE_SHARE - resident) - engine_weights / tp
        a_sequence = kv_per_token_a_gpu * sequence
        if free < a_sequence:
            plan.problems.append(
                f"generation: after the engine's weights ({_gb(engine_weights / tp)} a GPU)"
                + (f" and the training state kept on the GPU ({_gb(resident)})" if resident else "")
                + f", {_gb(max(free, 0))} is left for the KV cache, less than one {sequence:,}-token sequence "
                f"({_gb(a_sequence)} a GPU). Split the engine over GPUs (rollout.tensor_parallel_size with "
                "ray.placement=split), offload the training state (ray.offload), or shorten the responses."
            )
        else:
            plan.lines.append(
                f"             KV cache room: {_gb(free)} a GPU = {int(free // a_sequence):,} full sequences at once "
                "per engine"
            )
    plan.lines.extend(_engine_lines(c, params * rollout_bytes, vocab * hidden * rollout_bytes, bool(ray)))
    d, a = c.data, c.actor
    train_tokens = d.train_batch_size * c.rollout.group_size * sequence
    rounds = c.algo.dynamic_sampling.max_gen_batches or "unlimited"
    plan.lines.append(
        f"tokens/step  up to {train_tokens:,} in the update ({d.train_batch_size} groups x {c.rollout.group_size} "
        f"x {sequence:,}), {d.train_batch_size // a.mini_batch_size} optimiser step(s) x {a.ppo_epochs} epoch(s); "
        f"rounds of {round_rows:,} responses, at most {rounds}"
    )
    missing = [f for f in [*d.train_files, *d.val_files] if not Path(f).expanduser().is_file()]
    plan.lines.extend(validation_lines(c, [f for f in d.val_files if f not in missing]))
    if missing:
        plan.problems.append(f"data files not found (relative paths are from {Path.cwd()}): {', '.join(missing)}")
    return plan


def _engine_lines(c: Config, engine_weights: float, largest_tensor: float, ray: bool) -> list[str]:
    """How the weights reach an engine with its own copy, and the vLLM settings that cost memory."""
    ro, lines = c.rollout, []
    workers = ray and c.ray.rollout_workers > 0
    if ro.engine == "vllm" or workers or ro.dtype == "bfloat16" or c.model.lora.rank > 0:
        bucket = ro.weight_sync_bucket_mb * 2**20
        sender = "rank 0" if ray else "the trainer"
        kept = f"; the object store keeps the last push ({_gb(engine_weights)}) to resync a restarted worker" \
            if workers else ""  # fmt: skip
        lines.append(
            f"weight sync  buckets of {ro.weight_sync_bucket_mb:,} MB in {ro.dtype}: {sender} holds at most a bucket "
            f"plus one tensor ({_gb(bucket + largest_tensor)}, the largest tensor {_gb(largest_tensor)}){kept}"
        )
    if ro.engine == "vllm":
        graphs = "eager (no CUDA graphs)" if ro.enforce_eager else "CUDA graphs (not released by sleep)"
        prefill = "chunked" if ro.enable_chunked_prefill else "whole prompts"
        step = f"{ro.max_num_batched_tokens:,}" if ro.max_num_batched_tokens else "vLLM's default"
        lines.append(f"             vLLM: {graphs}, prefill {prefill}, {step} tokens a scheduling step")
    return lines


def validation_lines(config: Config, files: list[str]) -> list[str]:
    """What the validation metric is, exactly, for each file: avg@k over how many problems (as the run reads them:
    data.dedup drops repeated prompts, so a file that repeats each problem k times is k samples of each only when
    rollout.val_n says so)."""
    from dapo.data.records import read_dataset

    k, lines, total = config.rollout.val_n, [], 0
    for path in files:
        loaded = read_dataset(
            path, apply_template=config.data.prompt_template, dedup=config.data.dedup,
            skip_bad_rows=config.data.skip_bad_rows, default_data_source=config.data.default_data_source,
            prompt_key=config.data.prompt_key, answer_key=config.data.answer_key,
        )  # fmt: skip
        problems = len(loaded.records)
        if config.data.val_size_per_file is not None:
            problems = min(problems, config.data.val_size_per_file)
        repeats = (
            f", {loaded.num_duplicates_dropped:,} repeated prompts dropped by data.dedup"
            if loaded.num_duplicates_dropped
            else ""
        )
        lines.append(
            f"validation   {Path(path).name}: avg@{k} over {problems:,} problems ({k} samples each, "
            f"{loaded.num_rows:,} rows{repeats}), layout {loaded.layout or '-'}"
        )
        total += problems
    size = config.data.val_size
    if size is not None and size < total:  # the run draws a seeded subset of them all (runtime._val_subset)
        lines.append(f"             data.val_size={size:,}: the run evaluates a seeded {size:,} of these {total:,}")
    return lines


def _advice(term: str, c: Config) -> str:
    if term.startswith("activations"):
        sequence = f"{c.data.max_prompt_length + c.rollout.max_response_length:,}"
        checkpoint = "" if c.actor.activation_checkpointing else "Set actor.activation_checkpointing=true, or l"
        return (
            f"{checkpoint or 'L'}ower actor.micro_batch_max_tokens (it must still hold one whole sequence, {sequence} "
            "tokens), or split each micro-batch's tokens over ranks with ray.sequence_parallel."
        )
    if term.startswith(("gradients", "AdamW", "weights, sharded")):
        return "Use ray.strategy=fsdp2 and more ray.train_workers to shard them, or ray.offload=all."
    if term.startswith("log-prob head"):
        return "Lower actor.micro_batch_max_tokens, or raise ray.sequence_parallel."
    if term.startswith(("gathered", "unsharded")):
        return "Use a smaller model: FSDP2 gathers the root (embeddings, head) and two blocks whatever the rank count."
    return "Use model.dtype=bfloat16, or a smaller model."
