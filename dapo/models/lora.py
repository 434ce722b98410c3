"""LoRA adapters through PEFT (`model.lora.rank > 0`): the policy trains low-rank adapters on a frozen base.

    W' = W + (α / r) · B A        (Hu et al. 2021; B is (out, r), A is (r, in), B starts at 0)

PEFT wraps the chosen linear layers; the trainer's worker sees a `PeftModel` and trains only A and B. Three
things then differ from full fine-tuning, and this module holds them:
- the rollout engine decodes with plain weights (its fused decode reads them directly), so it gets a merged
  copy: `merged_model` once, `merged_state_dict` after every update (W + ΔW computed out of place, so the
  trained base is never touched by merge/unmerge rounding);
- a checkpoint holds the adapter only (`adapter_state_dict`); the base comes from `model.path` again;
- export writes either the merged model (a plain Hugging Face directory) or the adapter (PEFT's format,
  loadable with `PeftModel.from_pretrained(base, path)`).
PEFT is imported only here, and only when LoRA is on (the `lora` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import Tensor, nn

from dapo.errors import DapoError

ADAPTER = "default"  # PEFT's name of the one adapter


class LoraUnavailableError(DapoError, RuntimeError):
    """model.lora.rank > 0 without PEFT installed."""


def _peft():
    try:
        import peft
    except ImportError:
        raise LoraUnavailableError(
            "model.lora needs PEFT: run `scripts/setup.sh lora` (or `pip install 'dapo-rl[lora]'`), "
            "or set model.lora.rank=0"
        ) from None
    return peft


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> nn.Module:
    """`model` with LoRA adapters of rank `rank` on `target_modules` (names of linear layers, e.g. q_proj);
    only the adapters train. ValueError naming them when a target matches no layer."""
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    unknown = sorted(set(target_modules) - names)
    if unknown:
        raise ValueError(f"model.lora.target_modules {unknown} match no linear layer; the model has {sorted(names)}")
    settings = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none"
    )
    return peft.get_peft_model(model, settings)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The plain model's state dict (the base's own key names) with W + ΔW in every adapted layer, computed
    out of place."""
    return dict(merged_weights(model))


def merged_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """`merged_state_dict` one tensor at a time, each W + ΔW computed only when reached: what the rollout engine
    loads after each update, a bucket at a time, without a second copy of the model."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            layer, leaf = key.split(".base_layer.")
            if leaf == "weight":
                value = value + adapted[layer].get_delta_weight(ADAPTER).to(value.dtype)
            key = f"{layer}.{leaf}"
        yield key, value.detach()


def merged_model(model: nn.Module) -> nn.Module:
    """A plain copy of the model with the adapters merged in (the trained module is left as it is)."""
    return copy.deepcopy(model).merge_and_unload()


def adapter_state_dict(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapter's entries of a PEFT model's state dict: what a LoRA checkpoint holds."""
    return {k: v for k, v in weights.items() if ".lora_" in k}


def save_lora(model: nn.Module, tokenizer, path: Path, export: str) -> Path:
    """Export: `merged` as a plain Hugging Face model directory, or `adapter` in PEFT's format."""
    from dapo.models.loading import save_pretrained_pair

    if export == "merged":
        return save_pretrained_pair(merged_model(model), tokenizer, path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
