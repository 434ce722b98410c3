"""What the trainer asks of the workers that hold models: the policy (with its reference) and the critic.

The trainer types against these protocols only. `dapo.workers.local` implements them in the trainer's own
process; `dapo.workers.ray_group` implements the same calls on data-parallel ranks of a Ray cluster (each
rank runs the local worker over a torch.distributed process group, `dapo.workers.parallel`). Capability
questions (may the engine's log-probs serve as π_old? how many tokens did the update compute?) are answered
by the workers, because only they know where the weights live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from dapo.rollout.base import RolloutEngine
from dapo.workers.batch import TrainBatch


@runtime_checkable
class PolicyWorkers(Protocol):
    """The trained policy, its optimiser and scheduler, and the frozen reference when a KL term needs one."""

    @property
    def has_reference(self) -> bool: ...

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> Tensor:
        """(B, T) log-probs of the response tokens under the policy (or the reference), 0 off the mask."""
        ...

    def update(
        self, batch: TrainBatch, loss: Any, groups_per_mini_batch: int, epochs: int, shuffle_seed: int | None
    ) -> dict[str, float]:
        """Mini-batch updates of whole groups; the metrics (`actor/*`)."""
        ...

    def push_weights(self, engine: RolloutEngine) -> None:
        """Bring the rollout engine's weights up to date with the policy's."""
        ...

    def engine_logprobs_are_policy_logprobs(self, engine: RolloutEngine, temperature: float) -> bool:
        """Are the log-probs the engine reports while sampling this policy's own, up to float rounding?"""
        ...

    def tokens_computed(self, batch: TrainBatch, rows: Tensor) -> int:
        """Tokens one forward over `rows` of `batch` computes (the MFU numerator's token count)."""
        ...

    def num_parameters(self) -> int: ...

    def state_dict(self) -> dict[str, Any]:
        """{"model": weights, "optimizer": ..., "scheduler": ...}: what a resumed run restores."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        """Only the policy's weights (`dapo eval --checkpoint`): no optimiser, no scheduler."""
        ...

    def save_pretrained(self, path: Path, tokenizer: Any) -> Path:
        """The policy as a Hugging Face model directory."""
        ...

    def close(self) -> None:
        """Release what the workers hold (processes, a cluster); a no-op in one process."""
        ...


@runtime_checkable
class CriticWorkers(Protocol):
    """PPO's value model, its optimiser and scheduler."""

    def compute_values(self, batch: TrainBatch) -> Tensor:
        """(B, T) values V(s_t) at every response position, 0 off the mask."""
        ...

    def update(self, batch: TrainBatch, groups_per_mini_batch: int, epochs: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...
