"""How one worker's passes are spread over data-parallel ranks (torch.distributed), or not at all.

The policy and critic workers are written once, for any number of ranks. Everything that depends on the
rank count goes through a `DataParallel` object:

- `wrap`: the module the worker trains, as the strategy needs it (the module itself, DDP or FSDP2);
- `shard`: which rows of a mini-batch this rank computes: whole prompt groups (the shared-prefix forward
  computes a prompt once for all its rows), balanced across ranks by token count;
- `pad`: every rank runs the same number of forward/backward passes (DDP's and FSDP2's collectives pair
  up pass by pass); a rank with fewer micro-batches runs extra ones on real rows with weight 0, which add
  exactly zero to the gradient;
- `grad_sync`: gradients are reduced once per optimiser step, on the last micro-batch;
- `loss_scale`: DDP and FSDP2 AVERAGE gradients over ranks; the row weights (`algo.loss_row_weights`) are
  already those of the whole mini-batch, so each rank multiplies its loss by the world size and the
  average becomes the sum, i.e. the single-process gradient;
- `sum`: metrics that each rank holds a part of (token sums and counts, loss parts) are added up;
- `updating`: the span of an update, outside which `ray.offload` keeps the optimiser state in host memory.

With Ulysses sequence parallelism (`sequence_parallel` = N > 1) the ranks form a (data, sequence) mesh of
world/N x N: the N ranks of a sequence group hold the same rows and split each micro-batch's packed tokens
(`models.sequence_parallel`); rows are spread over the data groups only, and metrics are added over them only
(every rank of a sequence group holds the same loss). FSDP2 still shards over the whole world, and DDP/FSDP2
still average gradients over every rank: with the loss scaled by the world size, the sum over a sequence group's
ranks is its rows' gradient and the average over the world the single-process gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from dapo.models.sequence_parallel import SequenceParallel
from dapo.workers.batch import TrainBatch

STRATEGIES = ("ddp", "fsdp2")
OFFLOADS = ("none", "optimizer", "all")


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: str) -> None:
    """Every tensor of the optimiser's state (moments, step counts) to `device`, in place in its state dict."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.device.type != device:
                state[key] = value.to(device)  # blocking: a device-to-host copy must be complete before use


def balanced_group_assignment(group_tokens: Sequence[int], world_size: int) -> list[int]:
    """The rank of each group: largest groups first, each to the rank with the fewest tokens so far (ties to
    the lowest rank, then the lower group id), so that ranks finish their passes at about the same time.
    Deterministic: every rank computes the same assignment from the same batch."""
    load = [0] * world_size
    owner = [0] * len(group_tokens)
    for group in sorted(range(len(group_tokens)), key=lambda g: (-group_tokens[g], g)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[group] = rank
        load[rank] += group_tokens[group]
    return owner


def rank_rows(batch: TrainBatch, rows: Tensor, rank: int, world_size: int) -> Tensor:
    """The rows of `rows` that `rank` computes: whole groups, balanced by their real token count."""
    if world_size == 1 or rows.numel() == 0:
        return rows
    groups, dense = torch.unique(batch.group_index[rows], return_inverse=True)
    tokens = torch.zeros(len(groups), dtype=torch.long).index_add_(0, dense, batch.attention_mask[rows].sum(dim=1))
    owner = torch.tensor(balanced_group_assignment(tokens.tolist(), world_size))
    return rows[owner[dense] == rank]


class DataParallel(Protocol):
    rank: int
    world_size: int
    sequence: SequenceParallel | None

    def wrap(self, module: nn.Module) -> nn.Module: ...

    def shard(self, batch: TrainBatch, rows: Tensor) -> Tensor: ...

    def pad(self, parts: list[Tensor], filler: Tensor) -> list[tuple[Tensor, float]]: ...

    def grad_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager: ...

    @property
    def loss_scale(self) -> float: ...

    def sum(self, values: Sequence[float]) -> list[float]: ...

    def max(self, values: Sequence[float]) -> list[float]: ...

    def sum_over_processes(self, values: Sequence[float]) -> list[float]: ...

    def updating(self, optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager: ...

    def after_forward_only(self, module: nn.Module) -> None: ...

    def full_weights(self, module: nn.Module) -> dict[str, Tensor]: ...

    def full_tensors(self, module: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """(name, unsharded tensor) one at a time, under the unwrapped module's names: with FSDP2 each is gathered
        from the shards only when the iterator reaches it (a collective: every rank must consume all of it)."""
        ...

    def full_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]: ...

    def load_full_state(self, module: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                        optimizer_state: dict | None) -> None: ...  # fmt: skip


class SingleProcess:
    """One process: every pass computes every row; nothing to wrap, pad, synchronise or add up."""

    rank, world_size = 0, 1
    sequence = None

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def shard(self, batch: TrainBatch, rows: Tensor) -> Tensor:
        return rows

    def pad(self, parts: list[Tensor], filler: Tensor) -> list[tuple[Tensor, float]]:
        return [(p, 1.0) for p in parts]

    def grad_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @property
    def loss_scale(self) -> float:
        return 1.0

    def sum(self, values: Sequence[float]) -> list[float]:
        return list(values)

    def max(self, values: Sequence[float]) -> list[float]:
        return list(values)

    def sum_over_processes(self, values: Sequence[float]) -> list[float]:
        return list(values)

    def updating(self, optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_forward_only(self, module: nn.Module) -> None:
        pass

    def full_weights(self, module: nn.Module) -> dict[str, Tensor]:
        return module.state_dict()

    def full_tensors(self, module: nn.Module) -> Iterator[tuple[str, Tensor]]:
        for name, tensor in module.state_dict().items():
            yield name, tensor.detach()

    def full_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """(weights, optimiser state) in single-process form: what a checkpoint holds."""
        return module.state_dict(), optimizer.state_dict()

    def load_full_state(self, module, optimizer, model_state, optimizer_state) -> None:
        module.load_state_dict(model_state)
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)


SINGLE_PROCESS = SingleProcess()


class TorchDistributed:
    """Data parallelism over the default torch.distributed process group (gloo on CPU, NCCL on GPU).

    strategy "ddp": `DistributedDataParallel`, every rank holds the whole model and optimiser state.
    strategy "fsdp2": `fully_shard` (ZeRO-3): parameters, gradients and optimiser state are sharded, one FSDP unit
    per decoder block and the root (embeddings, final norm, head) as one more, kept gathered between the forward
    and the backward as FSDP2 does for a root: a pass gathers one block at a time (the shared-prefix forward
    calls each block through its module, `models.shared_prefix`), and gathers it again for its backward.
    `bf16_compute` (FSDP2 only) gathers parameters in bfloat16 for the compute and reduces gradients in float32
    (`MixedPrecisionPolicy`).
    """

    def __init__(
        self,
        strategy: str,
        bf16_compute: bool = False,
        sequence_parallel: int = 1,
        device: str = "cpu",
        offload: str = "none",
    ):
        import torch.distributed as dist

        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not dist.is_initialized():
            raise RuntimeError("TorchDistributed needs an initialised default process group")
        self.dist = dist
        self.strategy = strategy
        self.bf16_compute = bf16_compute and strategy == "fsdp2"
        if offload not in OFFLOADS or (offload == "all" and strategy != "fsdp2"):
            raise ValueError(f"offload must be one of {OFFLOADS} ('all' with fsdp2 only), got {offload!r}")
        self.device, self.offload = device, offload
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.sequence: SequenceParallel | None = None
        self.data_rank, self.data_size, self.data_group = self.rank, self.world_size, None
        if sequence_parallel > 1:
            if self.world_size % sequence_parallel:
                raise ValueError(f"sequence_parallel={sequence_parallel} does not divide {self.world_size} ranks")
            from torch.distributed.device_mesh import init_device_mesh

            # An explicit device for the mesh, as for FSDP2's (pytorch#132471).
            mesh = init_device_mesh(
                device, (self.world_size // sequence_parallel, sequence_parallel), mesh_dim_names=("data", "sequence")
            )
            self.sequence = SequenceParallel(
                mesh["sequence"].get_group(), mesh["sequence"].get_local_rank(), sequence_parallel
            )
            self.data_rank, self.data_size = mesh["data"].get_local_rank(), self.world_size // sequence_parallel
            self.data_group = mesh["data"].get_group()

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.strategy == "ddp":
            # broadcast_buffers=False: no collective in the forward (no-grad passes need none); buffers
            # (rotary frequencies) are computed identically on every rank.
            return nn.parallel.DistributedDataParallel(module, broadcast_buffers=False)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.bf16_compute \
            else MixedPrecisionPolicy()  # fmt: skip
        # An explicit mesh of the parameters' device: with gloo, a mesh left to default to CUDA on a machine that
        # has one segfaults (pytorch#132471).
        from torch.distributed.device_mesh import init_device_mesh

        device = next(module.parameters()).device.type
        mesh = init_device_mesh(device, (self.world_size,))
        kwargs = {"mesh": mesh, "mp_policy": policy}
        if self.offload == "all":
            from torch.distributed.fsdp import CPUOffloadPolicy

            # Sharded parameters, gradients and the optimiser step in host memory; each unit is copied to the
            # device for its gather. Pinned host memory needs an accelerator (PyTorch refuses it on CPU).
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device != "cpu")
        for block in module.blocks():
            fully_shard(block, **kwargs)
        return fully_shard(module, **kwargs)

    def shard(self, batch: TrainBatch, rows: Tensor) -> Tensor:
        return rank_rows(batch, rows, self.data_rank, self.data_size)

    def pad(self, parts: list[Tensor], filler: Tensor) -> list[tuple[Tensor, float]]:
        """Pairs (rows, weight scale): this rank's micro-batches (scale 1), then weight-0 passes over
        `filler` rows until every rank has as many as the busiest one."""
        count = torch.tensor([len(parts)])
        self.dist.all_reduce(count, op=self.dist.ReduceOp.MAX)
        return [(p, 1.0) for p in parts] + [(filler, 0.0)] * (int(count) - len(parts))

    @contextlib.contextmanager
    def grad_sync(self, module: nn.Module, enabled: bool) -> Iterator[None]:
        if enabled:
            yield
        elif self.strategy == "ddp":
            with module.no_sync():
                yield
        else:
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)

    @contextlib.contextmanager
    def updating(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """With offload=optimizer the AdamW moments are on the device only during an update (verl's
        optimizer_offload): between updates the colocated engine has that memory. With offload=all they never
        leave host memory (FSDP2 steps there). On CPU ranks both are the same tensors where they were."""
        if self.offload != "optimizer":
            yield
            return
        move_optimizer_state(optimizer, self.device)
        try:
            yield
        finally:
            move_optimizer_state(optimizer, "cpu")

    @property
    def loss_scale(self) -> float:
        return float(self.world_size)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Added over the data groups (the ranks of a sequence group hold the same values)."""
        total = torch.tensor(list(values), dtype=torch.float64)
        self.dist.all_reduce(total, group=self.data_group)
        return total.tolist()

    def sum_over_processes(self, values: Sequence[float]) -> list[float]:
        """Added over every rank (what each process measured of itself, such as its matmul peak)."""
        total = torch.tensor(list(values), dtype=torch.float64)
        self.dist.all_reduce(total)
        return total.tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        largest = torch.tensor(list(values), dtype=torch.float64)
        self.dist.all_reduce(largest, op=self.dist.ReduceOp.MAX)
        return largest.tolist()

    def _unwrapped(self, module: nn.Module) -> nn.Module:
        # DDP holds the module; fully_shard changes the module in place and keeps its parameter names.
        return module.module if self.strategy == "ddp" else module

    def after_forward_only(self, module: nn.Module) -> None:
        """After passes without a backward: FSDP2 keeps the root's gathered parameters until the backward
        that never comes; shard them again (the optimiser and the state dicts work on the shards)."""
        if self.strategy == "fsdp2":
            module.reshard()

    def full_weights(self, module: nn.Module) -> dict[str, Tensor]:
        """The unsharded weights on every rank, under the unwrapped module's names (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))

    def full_tensors(self, module: nn.Module) -> Iterator[tuple[str, Tensor]]:
        from torch.distributed.tensor import DTensor

        # fully_shard keeps the parameters' names; each DTensor's all-gather happens when its turn comes.
        for name, tensor in self._unwrapped(module).state_dict().items():
            yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach()

    def full_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """The unsharded weights and optimiser state on every rank, in single-process form (a collective):
        the names of the unwrapped module, the optimiser's parameters numbered."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True)
        weights, optim = get_state_dict(module, optimizer, options=options)
        return weights, optimizer_state_by_index(optim, _named_by_index(self._unwrapped(module)))

    def load_full_state(self, module, optimizer, model_state, optimizer_state) -> None:
        """Load single-process state into the sharded (or replicated) module and optimiser on every rank."""
        if self.strategy == "ddp":  # replicated plain tensors: the single-process load, exactly
            SINGLE_PROCESS.load_full_state(module.module, optimizer, model_state, optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

        options = StateDictOptions(full_state_dict=True)
        if optimizer is None:
            set_model_state_dict(module, model_state, options=options)
            return
        by_name = optimizer_state_by_name(optimizer_state, _named_by_index(module))
        set_state_dict(module, optimizer, model_state_dict=model_state, optim_state_dict=by_name, options=options)
        if not optimizer_state["state"]:
            # set_state_dict materialises the moments with a zero-gradient step first; a state saved before
            # any step must stay empty (else AdamW's bias correction starts at step 2).
            optimizer.state.clear()


def _named_by_index(module: nn.Module) -> list[str]:
    # The optimiser was built from module.parameters(): its i-th parameter is the i-th named one.
    return [name for name, _ in module.named_parameters()]


def optimizer_state_by_name(state: dict, names: Sequence[str]) -> dict:
    """A single-process optimiser state dict (parameters numbered) keyed by parameter names instead, the
    form `torch.distributed.checkpoint.state_dict` takes for any sharding."""
    return {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def optimizer_state_by_index(state: dict, names: Sequence[str]) -> dict:
    """The inverse of `optimizer_state_by_name`: the checkpoint keeps the single-process form, so that a run
    saved on N ranks resumes on M (or in one process)."""
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }
