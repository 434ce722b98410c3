"""A seeded, resumable sampler over prompts.

Batches are consecutive slices of a per-epoch permutation; the permutation of epoch e comes from a
generator seeded with (seed, e), so each epoch is reshuffled and every epoch can be recomputed from the
seed alone. A batch that crosses an epoch boundary is completed from the next epoch (every batch is full).
Prompts drawn but not used (a generation round that dynamic sampling stopped early) can be given back; they
come first in the next batch, so no prompt of an epoch is skipped. The position (epoch, offset) and the uids
given back are the whole state: `state_dict()` is plain JSON, and a sampler restored with `load_state_dict()`
draws exactly the batches the original would have drawn next.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from dapo.data.types import PromptRecord


def _fingerprint(records: Sequence[PromptRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.uid.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


class PromptSampler:
    """Draws `batch_size` prompts per call from `records`, reshuffling every epoch.

    Args:
        records: the prompts (at least one).
        seed: the base seed; epoch e uses numpy's generator seeded with [seed, e].
        batch_size: prompts per batch (≥ 1; may exceed len(records): a batch then spans epochs).
    """

    def __init__(self, records: Sequence[PromptRecord], seed: int, batch_size: int) -> None:
        if not records:
            raise ValueError("PromptSampler needs at least one record")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.records = tuple(records)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)
        self._fingerprint = _fingerprint(self.records)
        self._given_back: list[PromptRecord] = []

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def next_batch(self) -> list[PromptRecord]:
        """The next `batch_size` records: those given back first, then the epoch's order."""
        batch = self._given_back[: self.batch_size]
        self._given_back = self._given_back[self.batch_size :]
        while len(batch) < self.batch_size:
            if self.offset == len(self.records):
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            take = min(self.batch_size - len(batch), len(self.records) - self.offset)
            batch.extend(self.records[i] for i in self._order[self.offset : self.offset + take])
            self.offset += take
        return batch

    def give_back(self, records: Sequence[PromptRecord]) -> None:
        """Return drawn records that were not used; the next batch starts with them, in this order."""
        self._given_back = [*records, *self._given_back]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (plus what it must be restored onto)."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "offset": self.offset,
            "given_back": [r.uid for r in self._given_back],
            "num_records": len(self.records),
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position. The records must be the same (same uids in the same order)."""
        if state["num_records"] != len(self.records) or state["fingerprint"] != self._fingerprint:
            raise ValueError(
                f"sampler state is for a different data set ({state['num_records']} records, "
                f"fingerprint {state['fingerprint']}) than this one ({len(self.records)}, {self._fingerprint})"
            )
        self.seed = int(state["seed"])
        self.batch_size = int(state["batch_size"])
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._order = self._permutation(self.epoch)
        by_uid = {r.uid: r for r in self.records}
        self._given_back = [by_uid[uid] for uid in state.get("given_back", [])]
