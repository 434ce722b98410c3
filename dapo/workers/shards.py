"""Sharded checkpoints of a trained module and its optimiser, with `torch.distributed.checkpoint` (DCP).

Each rank writes only what it holds: with FSDP2 its shards of every parameter and of the AdamW moments, with DDP
a share of the replicated tensors (DCP writes each replicated tensor once), in one process everything. No rank
ever gathers the model. DCP records every tensor's global shape and which chunk each file holds, so the same
directory loads on any number of ranks and any strategy, or in one process: each rank reads the chunks that
overlap its own shards.

The directory's state dict (what `dapo export` reads):

    model.<Hugging Face name>    the weights (the LoRA adapter's only, for a LoRA run: the base comes from
                                 model.path again)
    optimizer.state.<...>        AdamW's step and moments, keyed by parameter name
    optimizer.param_groups.<...> learning rate, betas, ... of each group
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from torch import nn
from torch.optim import Optimizer

from dapo.models.lora import adapter_state_dict
from dapo.workers.forward import prefixed, unprefixed


def _one_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized()


@contextlib.contextmanager
def quiet_in_one_process() -> Iterator[None]:
    """DCP warns at every call without a process group, even when told so (`no_dist=True`): one process is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled")
        yield


def _state_dicts(trainable: nn.Module, optimizer: Optimizer, adapter_only: bool) -> dict:
    """The module's and optimiser's state as this rank holds it (DTensor shards under FSDP2), keyed by name."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(trainable, optimizer)
    weights = unprefixed(weights)
    if adapter_only:
        weights = adapter_state_dict(weights)
    return {"model": weights, "optimizer": optim}


def save_shards(trainable: nn.Module, optimizer: Optimizer, directory: Path, *, adapter_only: bool = False) -> None:
    """Write this rank's part of the weights and optimiser state to `directory` (a collective over the ranks;
    every rank must see the same directory: a shared filesystem across nodes). Files are fsynced."""
    import torch.distributed.checkpoint as dcp

    with quiet_in_one_process():
        dcp.save(_state_dicts(trainable, optimizer, adapter_only), checkpoint_id=str(directory), no_dist=_one_process())


def load_shards(
    trainable: nn.Module, optimizer: Optimizer | None, directory: Path, *, adapter_only: bool = False
) -> None:
    """Load a directory written by `save_shards` on any number of ranks into this rank's module and optimiser
    (resharded to what this rank holds; a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    state = _state_dicts(trainable, optimizer, adapter_only) if optimizer is not None else None
    if state is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        weights = unprefixed(get_model_state_dict(trainable))
        state = {"model": adapter_state_dict(weights) if adapter_only else weights}
    with quiet_in_one_process():
        dcp.load(state, checkpoint_id=str(directory), no_dist=_one_process())
    options = StateDictOptions(strict=not adapter_only)  # a LoRA checkpoint holds the adapter only
    if optimizer is None:
        set_model_state_dict(trainable, prefixed(state["model"]), options=options)
        return
    set_state_dict(
        trainable, optimizer, model_state_dict=prefixed(state["model"]), optim_state_dict=state["optimizer"],
        options=options,
    )  # fmt: skip
