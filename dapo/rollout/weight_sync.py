"""Weight sync in buckets: the trained weights reach an engine a bounded piece at a time.

A push used to gather the whole state dict in one process (rank 0, or the driver) and hand it over at once:
for a 32B model that is 64 GB of float32 in one heap. Here the weights travel as *buckets*: consecutive
lists of (name, full tensor) of at most `rollout.weight_sync_bucket_mb` megabytes (a tensor larger than a
bucket travels alone, rather than failing as verl's does). With FSDP2 the full tensors are gathered from the
shards one parameter at a time as the buckets fill, so what a sync holds beyond the model is one bucket plus
the tensor being gathered; `SyncMeter` counts that peak.

Every engine loads buckets the same way: `load_bucket` copies the named tensors into its weights (vLLM's
per-parameter weight loaders slice their tensor-parallel share from a full tensor), and `check_complete`
afterwards asserts that every weight was sent exactly once, so a push cannot half-update an engine silently.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Bucket = list[tuple[str, Tensor]]

DEFAULT_BUCKET_MB = 2048  # verl's update_weights_bucket_megabytes default


def tensor_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass
class SyncMeter:
    """What a sync held at once, counted as it goes: the bytes of the bucket being filled plus the tensor
    just gathered (the trainer's own weights and the engine's copy are not counted: they exist anyway)."""

    peak_bytes: int = 0
    largest_tensor_bytes: int = 0
    sent_bytes: int = 0
    buckets: int = 0
    tensors: int = 0

    def holding(self, nbytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, nbytes)

    def sent(self, tensors: int, nbytes: int) -> None:
        """A bucket of `tensors` tensors and `nbytes` bytes left."""
        self.buckets += 1
        self.tensors += tensors
        self.sent_bytes += nbytes

    def as_dict(self) -> dict[str, float]:
        return {
            "peak_mb": self.peak_bytes / 2**20,
            "largest_tensor_mb": self.largest_tensor_bytes / 2**20,
            "sent_mb": self.sent_bytes / 2**20,
            "buckets": float(self.buckets),
            "tensors": float(self.tensors),
        }


def bucketed(
    named: Iterable[tuple[str, Tensor]],
    bucket_bytes: int,
    meter: SyncMeter | None = None,
    unit_of: Callable[[str], str] | None = None,
) -> Iterator[Bucket]:
    """Consecutive lists of (name, tensor) in `named`'s order, each of at most `bucket_bytes` bytes except a
    single unit larger than that, which forms a bucket alone. A unit is one tensor, or with `unit_of` the
    consecutive tensors whose names it maps to the same key (e.g. a decoder layer), which never straddle two
    buckets. `named` is consumed lazily: a tensor is produced (gathered, merged, cast) only when the bucket it
    belongs to is being filled, so what is held at once is less than a bucket plus one unit."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes!r}")
    meter = meter if meter is not None else SyncMeter()
    bucket: Bucket = []
    filled = 0
    for unit, gathering in _units(named, unit_of, meter):
        meter.holding(filled + gathering)
        size = sum(tensor_bytes(tensor) for _, tensor in unit)
        if bucket and filled + size > bucket_bytes:
            yield _sent(bucket, filled, meter)
            bucket, filled = [], 0
        bucket.extend(unit)
        filled += size
        if filled >= bucket_bytes:  # full (or one unit larger than a bucket): send it before making the next
            yield _sent(bucket, filled, meter)
            bucket, filled = [], 0
    if bucket:
        yield _sent(bucket, filled, meter)


_ALIGN = 64  # each tensor starts at a multiple of this in a packed bucket, so that any dtype can view it


@dataclass
class PackedBucket:
    """A bucket as it travels between processes: one flat byte array and where each tensor lies in it (verl's
    bucket buffer). Ray stores a numpy array in its object store without a pickled copy, and a reader gets it
    mapped from there, so neither end holds the bucket twice. Iterating gives the (name, tensor) pairs, views of
    the array (read them, do not write them)."""

    data: np.ndarray
    entries: list[tuple[str, torch.dtype, tuple[int, ...], int]]  # name, dtype, shape, byte offset

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        with warnings.catch_warnings():  # a mapped object is read-only; torch warns that it cannot write it
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(self.data)
        for name, dtype, shape, offset in self.entries:
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            yield name, flat[offset : offset + size].view(dtype).view(shape)

    def __len__(self) -> int:
        return len(self.entries)


def packed(
    named: Iterable[tuple[str, Tensor]], bucket_bytes: int, meter: SyncMeter | None = None
) -> Iterator[PackedBucket]:
    """`bucketed`, each bucket packed into one byte array as its tensors arrive: a tensor is copied in and
    released at once, so what is held is the bucket (the array is allocated at the bucket size, but memory is taken
    only as it is written) plus the tensor being gathered. A tensor as large as a bucket or larger travels alone,
    in its own bytes."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes!r}")
    meter = meter if meter is not None else SyncMeter()
    buffer: Tensor | None = None
    entries: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
    filled = 0
    for name, tensor in named:
        size = tensor_bytes(tensor)
        meter.largest_tensor_bytes = max(meter.largest_tensor_bytes, size)
        if entries and _aligned(filled) + size > bucket_bytes:
            yield _packed_sent(buffer, filled, entries, meter)
            buffer, entries, filled = None, [], 0
        if not entries and size >= bucket_bytes:  # a bucket of its own: its bytes as they are, no copy on the host
            meter.holding(size)
            alone = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            yield _packed_sent(alone, size, [(name, tensor.dtype, tuple(tensor.shape), 0)], meter)
            continue
        offset = _aligned(filled)
        if buffer is None:  # uninitialised: the system gives it pages only as they are written
            buffer = torch.empty(bucket_bytes, dtype=torch.uint8)
        meter.holding(offset + 2 * size)  # the bucket so far, the tensor, and the tensor's place in the bucket
        buffer[offset : offset + size].view(tensor.dtype).view(tensor.shape).copy_(tensor)
        entries.append((name, tensor.dtype, tuple(tensor.shape), offset))
        filled = offset + size
        if filled >= bucket_bytes:
            yield _packed_sent(buffer, filled, entries, meter)
            buffer, entries, filled = None, [], 0
    if entries:
        yield _packed_sent(buffer, filled, entries, meter)


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _packed_sent(buffer: Tensor, filled: int, entries: list, meter: SyncMeter) -> PackedBucket:
    meter.sent(len(entries), filled)
    return PackedBucket(buffer[:filled].numpy(), entries)


def put_buckets(named: Iterable[tuple[str, Tensor]], bucket_bytes: int, dtype: str) -> tuple[list, SyncMeter]:
    """Each tensor cast to `dtype` and packed (`packed`), each bucket put into Ray's object store as it fills:
    (the buckets' references in order, what was held at once). Used by the driver and by training rank 0."""
    import ray

    meter, target = SyncMeter(), getattr(torch, dtype)
    cast = ((name, tensor.to(target)) for name, tensor in named)  # packing copies to the host
    return [ray.put(bucket) for bucket in packed(cast, bucket_bytes, meter)], meter


def _units(
    named: Iterable[tuple[str, Tensor]], unit_of: Callable[[str], str] | None, meter: SyncMeter
) -> Iterator[tuple[Bucket, int]]:
    """The runs of consecutive tensors of one unit (each tensor alone without `unit_of`), each with the bytes held
    while it was gathered (a unit is known to end when the next one's first tensor arrives: both are held)."""
    unit: Bucket = []
    key, held = None, 0
    for name, tensor in named:
        size = tensor_bytes(tensor)
        meter.largest_tensor_bytes = max(meter.largest_tensor_bytes, size)
        if unit_of is None:
            yield [(name, tensor)], size
            continue
        this = unit_of(name)
        if unit and this != key:
            yield unit, held + size
            unit, held = [], 0
        unit.append((name, tensor))
        key, held = this, held + size
    if unit:
        yield unit, held


def _sent(bucket: Bucket, filled: int, meter: SyncMeter) -> Bucket:
    meter.sent(len(bucket), filled)
    return bucket


_DECODER_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def decoder_layer(name: str) -> str:
    """The decoder layer a weight belongs to ("model.layers.3" for "model.layers.3.mlp.up_proj.weight"), or the
    name itself outside the layers: a unit for `bucketed` when an engine must receive a layer's weights together."""
    match = _DECODER_LAYER.match(name)
    return match.group(1) if match else name


def named_weights(source: nn.Module | Mapping[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of a module's state dict or of a mapping, detached (no copies)."""
    if isinstance(source, nn.Module):
        source = source.state_dict()
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a module or a state dict, got {type(source).__name__}")
    for name, tensor in source.items():
        yield name, tensor.detach()


def as_buckets(source: Any, bucket_bytes: int) -> Iterator[Bucket]:
    """Buckets from whatever an engine's `update_weights` is given: a module, a state dict, or already an
    iterable of buckets (a stream from the training ranks)."""
    if isinstance(source, nn.Module | Mapping):
        return bucketed(named_weights(source), bucket_bytes)
    if isinstance(source, Iterable):
        return iter(source)
    raise TypeError(f"update_weights takes a module, a state dict or buckets of weights, got {type(source).__name__}")


@dataclass
class Received:
    """The names an engine has loaded since a push began, to check the push was whole."""

    names: set[str] = field(default_factory=set)
    repeated: list[str] = field(default_factory=list)

    def add(self, bucket: Bucket) -> None:
        for name, _ in bucket:
            if name in self.names:
                self.repeated.append(name)
            self.names.add(name)


def check_complete(received: Received, expected: Iterable[str], what: str = "the engine") -> None:
    """Raise ValueError unless the push sent every expected weight once and nothing else."""
    expected = set(expected)
    missing = sorted(expected - received.names)
    unexpected = sorted(received.names - expected)
    if missing or unexpected or received.repeated:
        raise ValueError(
            f"a weight push to {what} was not whole: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"sent twice {received.repeated[:3]}"
        )
