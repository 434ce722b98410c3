"""`dapo export`: one training checkpoint (`global_step_N`) -> a Hugging Face model directory.

`Trainer.export` writes the policy it holds in memory at the end of `dapo train`. This module works from disk
afterwards, for any checkpoint, and for models that no single process can hold (the paper's 32B policy is
sharded over its ranks): it streams the weights tensor by tensor into safetensors shards of bounded size, so
it holds about one shard plus one tensor at a time, never the model. The exception is a LoRA checkpoint: the
adapter is merged into the base by PEFT, which needs the whole model in memory.

Checkpoint forms it reads (docs/architecture.md, "Checkpoint layout"):
- `model.safetensors`: the policy's state dict under Hugging Face names (one process, or gathered once);
- `policy_shards/`: a `torch.distributed.checkpoint` (DCP) directory written by any number of ranks
  (`dapo.workers.shards`); its keys `model.<hf name>` are the weights, `optimizer.*` is skipped.
The run config (`config.json`, or `config.pt` when it holds tuples) names the base model (`model.path`),
whose config and tokenizer are copied beside the weights.

May: read the checkpoint (verified against its manifest first, when it has one) and the base model's files;
write one new directory, built under a temporary name beside it and renamed into place at the end, so a
failed export leaves nothing that looks like a model. May not: build a trainer, workers or process group,
or change the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from dapo.errors import DapoError
from dapo.workers.shards import quiet_in_one_process

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GIB = 1 << 30
SHARDS_DIR = "policy_shards"
FULL_WEIGHTS = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
# safetensors' dtype codes (its file format) -> torch dtypes, to size a tensor before reading it.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class ExportError(DapoError):
    """The checkpoint or the output directory cannot be exported as asked; the message says which and why."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` wrote. `peak_bytes` is the exporter's own count of the tensor bytes it held at
    once (one shard being filled plus the tensor in hand), not the process's memory."""

    out: Path
    files: tuple[str, ...]
    tensors: int
    total_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class TensorInfo:
    """One weight as the checkpoint's metadata describes it, before it is read."""

    name: str
    """its Hugging Face name, as written"""
    key: str
    """its name inside the checkpoint"""
    shape: tuple[int, ...]
    dtype: torch.dtype

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * (dtype or self.dtype).itemsize


class WeightSource(Protocol):
    """Where the weights come from: their metadata first (to plan shards), then one tensor per `read`."""

    def tensors(self) -> list[TensorInfo]: ...

    def read(self, info: TensorInfo) -> Tensor: ...


def byte_size(text: str) -> int:
    """`--max-shard-bytes`: a number of bytes, optionally with a unit as Hugging Face writes them (`5GB`,
    `500MiB`); decimal units are powers of 10, binary ones (KiB, MiB, GiB) powers of 2."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a byte size: {text!r} (e.g. 1073741824, 5GB, 500MiB)")
    return int(float(match.group(1)) * _UNITS[unit])


# ------------------------------------------------------------------------------------------ sources


class SafetensorsWeights:
    """`model.safetensors` of a full checkpoint, read lazily: `safe_open` maps the file and reads one tensor."""

    def __init__(self, path: Path):
        self.path = path

    def tensors(self) -> list[TensorInfo]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            # The checkpoint records the state dict's order (dapo.checkpoint); keep it, as save_pretrained would.
            order = json.loads((f.metadata() or {}).get("key_order", "null")) or list(f.keys())
            slices = {key: f.get_slice(key) for key in order}
            return [
                TensorInfo(key, key, tuple(s.get_shape()), _SAFETENSORS_DTYPES[s.get_dtype()])
                for key, s in slices.items()
            ]

    def read(self, info: TensorInfo) -> Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(info.key)


class DcpWeights:
    """A `torch.distributed.checkpoint` directory, read one tensor per `dcp.load` call in this process (no
    process group): DCP assembles the full tensor from every rank's chunks and reads no other key."""

    PREFIX = "model."

    def __init__(self, directory: Path):
        from torch.distributed.checkpoint import FileSystemReader

        self.reader = FileSystemReader(str(directory))
        self.metadata = self.reader.read_metadata().state_dict_metadata

    def tensors(self) -> list[TensorInfo]:
        from torch.distributed.checkpoint import TensorStorageMetadata

        return [
            TensorInfo(key.removeprefix(self.PREFIX), key, tuple(meta.size), meta.properties.dtype)
            for key, meta in self.metadata.items()
            if key.startswith(self.PREFIX) and isinstance(meta, TensorStorageMetadata)
        ]

    def read(self, info: TensorInfo) -> Tensor:
        import torch.distributed.checkpoint as dcp

        state = {info.key: torch.empty(info.shape, dtype=info.dtype)}
        with quiet_in_one_process():
            dcp.load(state, storage_reader=self.reader, no_dist=True)
        return state[info.key]


class MemoryWeights:
    """Weights already in memory (a merged LoRA model): `read` returns a private copy, which safetensors can
    write even where the model shares storage between tensors."""

    def __init__(self, weights: dict[str, Tensor]):
        self.weights = weights

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(k, k, tuple(v.shape), v.dtype) for k, v in self.weights.items()]

    def read(self, info: TensorInfo) -> Tensor:
        return self.weights[info.key].detach().clone()


# ----------------------------------------------------------------------------------------- checkpoint


def read_run_config(checkpoint: Path) -> dict[str, Any]:
    """The run config saved in the checkpoint: `config.json`, or `config.pt` (checkpoint.py writes a value that
    JSON cannot round-trip exactly, such as the tuple `optim.betas`, with torch.save)."""
    if not checkpoint.is_dir():
        raise ExportError(f"--checkpoint {checkpoint}: no such directory (expected .../checkpoints/global_step_N)")
    config = None
    if (checkpoint / "config.json").is_file():
        config = json.loads((checkpoint / "config.json").read_text())
    elif (checkpoint / "config.pt").is_file():
        config = torch.load(checkpoint / "config.pt", weights_only=True)
    # A Hugging Face model directory has a config.json too, without dapo's sections.
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "path" not in config["model"]:
        raise ExportError(
            f"--checkpoint {checkpoint}: not a dapo checkpoint (no run config with model.path in config.json or "
            "config.pt); give a .../checkpoints/global_step_N directory"
        )
    return config


def verify_checkpoint(checkpoint: Path) -> None:
    """Check every file against `manifest.json` before anything is read, when there is one (a checkpoint saved
    by `CheckpointManager`); a directory assembled by hand has none and is read as it is."""
    if not (checkpoint / "manifest.json").is_file():
        return
    match = _STEP_DIR.match(checkpoint.name)
    if match is None:
        raise ExportError(f"--checkpoint {checkpoint}: has a manifest but is not named global_step_N")
    from dapo.checkpoint import CheckpointManager

    CheckpointManager(checkpoint.parent).verify(int(match.group(1)))


def open_weights(checkpoint: Path) -> WeightSource:
    """The checkpoint's policy weights: the full `model.safetensors`, else the sharded `policy_shards/`."""
    if (checkpoint / FULL_WEIGHTS).is_file():
        return SafetensorsWeights(checkpoint / FULL_WEIGHTS)
    if (checkpoint / SHARDS_DIR / ".metadata").is_file():
        return DcpWeights(checkpoint / SHARDS_DIR)
    raise ExportError(
        f"--checkpoint {checkpoint}: holds no policy weights (neither {FULL_WEIGHTS} nor {SHARDS_DIR}/.metadata)"
    )


def lora_rank(run_config: dict[str, Any]) -> int:
    return int(run_config.get("model", {}).get("lora", {}).get("rank", 0))


def base_model_path(run_config: dict[str, Any]) -> str:
    """`model.path` as `from_pretrained` takes it. A `builtin:tiny-<size>` run trained from a warm-started base
    under `trainer.output_dir` (dapo.sft); that directory must still be there, and a relative output_dir is
    read from the current directory, as at training time."""
    from dapo.models import resolve_model_path

    path = resolve_model_path(str(run_config["model"]["path"]))
    if not path.startswith("builtin:"):
        return path
    from dapo.config.io import config_from_dict
    from dapo.sft import builtin_base_dir

    base = builtin_base_dir(config_from_dict(run_config))
    if not (base / "config.json").is_file():
        raise ExportError(
            f"model.path={path}: its warm-started base {base} is not there; run `dapo export` from the directory "
            "the training ran in (trainer.output_dir is relative to it)"
        )
    return str(base)


# ------------------------------------------------------------------------------------------- export


def export_checkpoint(
    checkpoint: Path, out: Path, *, dtype: str | None = None, max_shard_bytes: int | None = None
) -> ExportResult:
    """Write checkpoint `checkpoint` (a `global_step_N` directory) as a Hugging Face model directory `out`.

    `out` gets the weights (`model.safetensors`, or `model-0000i-of-0000K.safetensors` shards and
    `model.safetensors.index.json`), the base model's `config.json` (its dtype set to the weights'),
    tokenizer and generation config, and `dapo_config.json` (the run config). `lm_head.weight` is left out
    when the config ties it to the input embedding.

    Args:
        dtype: float32 | bfloat16 | float16 for every floating-point tensor; None keeps each as saved.
        max_shard_bytes: the most tensor bytes in one file (a single larger tensor gets a file of its own);
            None = the largest tensor or 1 GiB, whichever is larger. The exporter holds at most one shard plus
            the tensor in hand (and, while casting it, its saved copy).

    A LoRA checkpoint (model.lora.rank > 0) holds the adapter only: the base is loaded from model.path, the
    adapter merged into it with PEFT and the merged model written. That path holds the whole model in memory.
    Raises ExportError (one line) for a directory that is not a checkpoint, has no weights, an `out` that
    exists and is not empty, a base model that cannot be read or weights that are not that model's; and
    CheckpointError for a file that does not match the checkpoint's manifest.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    run_config = read_run_config(checkpoint)
    source = open_weights(checkpoint)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty directory; name a new one")
    verify_checkpoint(checkpoint)
    base = base_model_path(run_config)
    hf_config, tokenizer = _base_config_and_tokenizer(base, run_config, checkpoint)
    if lora_rank(run_config) > 0:
        source = merged_lora_weights(base, run_config, source)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    tensors = [t for t in source.tensors() if not (tied and t.name == "lm_head.weight")]
    check_names(hf_config, [t.name for t in tensors], checkpoint)
    target = DTYPES[dtype] if dtype else None
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        total, peak = write_weights(source, tensors, tmp, target, max_shard_bytes)
        hf_config.dtype = target or _main_dtype(tensors)
        hf_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _copy_generation_config(base, tmp)
        (tmp / "dapo_config.json").write_text(json.dumps(run_config, indent=1))
        files = tuple(sorted(p.name for p in tmp.iterdir()))
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, files, len(tensors), total, peak)


def _base_config_and_tokenizer(base: str, run_config: dict[str, Any], checkpoint: Path):
    from dapo.models.loading import ModelPathError, load_config_and_tokenizer

    try:
        return load_config_and_tokenizer(base, gguf_file=run_config["model"].get("gguf_file"))
    except ModelPathError as error:
        raise ExportError(f"the base model of {checkpoint} cannot be read: {error}") from None


def merged_lora_weights(base: str, run_config: dict[str, Any], adapter: WeightSource) -> MemoryWeights:
    """The base model with the checkpoint's LoRA adapter merged in (W + α/r · B A), as the policy decoded it.

    Holds the whole model in memory: PEFT merges module by module on a loaded model. The adapter is applied
    exactly as training applied it (`dapo.models.lora.apply_lora` with the run's rank, α and targets)."""
    from dapo.models import load_model_and_tokenizer
    from dapo.models.lora import apply_lora

    lora, model_cfg = run_config["model"]["lora"], run_config["model"]
    weights = {info.name: adapter.read(info) for info in adapter.tensors()}
    if not weights or not all(".lora_" in name for name in weights):
        raise ExportError("model.lora.rank > 0 but the checkpoint's weights are not a LoRA adapter (no lora_A/B)")
    model, _ = load_model_and_tokenizer(
        base, dtype=DTYPES[model_cfg.get("dtype", "float32")], gguf_file=model_cfg.get("gguf_file")
    )
    model = apply_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["target_modules"])
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise ExportError(
            f"the LoRA adapter does not fit model.lora of the run config: unexpected {result.unexpected_keys[:3]}, "
            f"missing {missing[:3]}"
        )
    return MemoryWeights(model.merge_and_unload().state_dict())


def check_names(hf_config, names: Sequence[str], checkpoint: Path) -> None:
    """Refuse weights whose names are not the model's own, before writing anything: the module is built on
    the meta device (no memory) only to list the names `from_pretrained` will look for."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(hf_config).state_dict())
    if getattr(hf_config, "tie_word_embeddings", False):
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(names)), sorted(set(names) - expected)
    if missing or unexpected:
        raise ExportError(
            f"{checkpoint}: its weights do not match the base model's {type(hf_config).__name__}: "
            f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )


# ------------------------------------------------------------------------------------------ weights


def shard_plan(sizes: Sequence[int], max_bytes: int) -> list[list[int]]:
    """Consecutive runs of tensor indices whose sizes add up to at most `max_bytes` each; a tensor larger than
    `max_bytes` gets a run of its own. Planned from metadata, so every file's final name (…-of-K) is known
    before the first tensor is read."""
    shards: list[list[int]] = []
    used = 0
    for i, size in enumerate(sizes):
        if not shards or used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    return shards


class _Held:
    """The exporter's count of the tensor bytes it holds now, and the most it ever held (ExportResult)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def add(self, nbytes: int) -> None:
        self.now += nbytes
        self.peak = max(self.peak, self.now)

    def drop(self, nbytes: int) -> None:
        self.now -= nbytes


def write_weights(
    source: WeightSource, tensors: list[TensorInfo], out: Path, dtype: torch.dtype | None, max_bytes: int | None
) -> tuple[int, int]:
    """Write `tensors` into `out` as one file or as shards plus the index; returns (total bytes, peak held).
    Each shard is filled one tensor at a time, written with `save_file` and released before the next."""
    from safetensors.torch import save_file

    if not tensors:
        raise ExportError("the checkpoint holds no model weights to export")
    sizes = [t.nbytes(_cast_dtype(t.dtype, dtype)) for t in tensors]
    max_bytes = max_bytes or max(max(sizes), GIB)
    plan = shard_plan(sizes, max_bytes)
    names = _shard_names(len(plan))
    held, weight_map = _Held(), {}
    for indices, name in zip(plan, names, strict=True):
        shard = {}
        for i in indices:
            shard[tensors[i].name] = _read_cast(source, tensors[i], dtype, held)
            weight_map[tensors[i].name] = name
        save_file(shard, str(out / name), metadata={"format": "pt"})  # transformers reads "format"
        held.drop(sum(t.nbytes for t in shard.values()))
        del shard
    if len(plan) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return sum(sizes), held.peak


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return [FULL_WEIGHTS]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _cast_dtype(saved: torch.dtype, wanted: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor is written in: `wanted` for floating-point tensors, the saved one otherwise (integer
    buffers keep theirs)."""
    return wanted if wanted is not None and saved.is_floating_point else saved


def _read_cast(source: WeightSource, info: TensorInfo, dtype: torch.dtype | None, held: _Held) -> Tensor:
    """One tensor, read and cast; while casting both copies are counted, then the saved one is released."""
    raw = source.read(info)
    held.add(raw.nbytes)
    cast = raw.to(_cast_dtype(raw.dtype, dtype)).contiguous()
    if cast is not raw:
        held.add(cast.nbytes)
        held.drop(raw.nbytes)
    return cast


def _main_dtype(tensors: list[TensorInfo]) -> torch.dtype:
    """The dtype holding most of the floating-point bytes: what config.json declares when dtypes are kept."""
    by_dtype: dict[torch.dtype, int] = {}
    for t in tensors:
        if t.dtype.is_floating_point:
            by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.nbytes()
    return max(by_dtype, key=by_dtype.__getitem__) if by_dtype else torch.float32


def _copy_generation_config(base: str, out: Path) -> None:
    # Sampling defaults (temperature, top_p, eos ids) that vLLM and generate() read; only a local base has one.
    source = Path(base) / "generation_config.json"
    if source.is_file():
        shutil.copyfile(source, out / source.name)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished directory into place (an existing empty `out` is replaced, as rename allows)."""
    if out.is_dir():
        out.rmdir()
    os.replace(tmp, out)
