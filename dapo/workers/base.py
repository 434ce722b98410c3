"""What the trainer asks of the workers that hold models, and the typed values that cross that boundary.

The trainer types against the protocols here only. `dapo.workers.policy` and `dapo.workers.critic` implement
them in the trainer's own process; `dapo.workers.ray_group` implements the same calls on data-parallel ranks of a
Ray cluster (each rank runs those very workers over a torch.distributed process group,
`dapo.workers.parallel`). Capability questions (may the engine's log-probs serve as π_old? what is the peak of
the hardware the update runs on?) are answered by the workers, because only they know where the weights live.

The settings (`PolicySettings`, `CriticSettings`, `OptimParams`) and the loss's scalars (`PolicyLossParams`)
are frozen plain values copied out of the config once, so neither the workers nor `dapo.algo` ever see a config
object, and the same value is handed to the local worker and to every Ray rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dapo import algo
from dapo.rollout.base import RolloutEngine
from dapo.rollout.weight_sync import DEFAULT_BUCKET_MB
from dapo.workers.batch import TrainBatch

PRECISIONS = ("fp32", "bf16-mixed")


@dataclass(frozen=True)
class OptimParams:
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float
    warmup_steps: int
    schedule: str
    total_steps: int
    min_lr_ratio: float
    eps: float = 1e-8
    """AdamW's ε (torch's and verl's default). A step moves a weight by about lr·g/(|g| + ε): where |g| is
    near ε, a difference of δ in g (float rounding, e.g. another reduction order) moves it by lr·δ/ε."""


@dataclass(frozen=True)
class PolicySettings:
    """How a policy worker is built (the same value for the local worker and for every Ray rank)."""

    optim: OptimParams
    micro_batch_max_tokens: int
    """token budget of one forward/backward pass"""
    with_reference: bool = False
    """hold a frozen copy of the initial policy (π_ref) for a KL term"""
    share_prompt_forward: bool = True
    """compute each prompt once for its G responses when the shared-prefix forward covers the model"""
    temperature: float = 1.0
    """the rollout temperature: logits are divided by it, so that ratios are those of the sampling policy"""
    precision: str = "fp32"
    """fp32 | bf16-mixed (autocast over float32 weights)"""
    activation_checkpointing: bool = False
    """recompute each decoder block in the backward instead of keeping its activations"""
    lora_export: str = "merged"
    """with LoRA adapters: what save_pretrained writes (model.lora.export)"""
    weight_sync_bucket_bytes: int = DEFAULT_BUCKET_MB << 20
    """a push to an engine with its own copy travels in buckets of at most this many bytes
    (rollout.weight_sync_bucket_mb)"""


@dataclass(frozen=True)
class CriticSettings:
    """How a critic worker is built."""

    optim: OptimParams
    micro_batch_max_tokens: int
    value_clip: float | None = None
    share_prompt_forward: bool = True
    precision: str = "fp32"
    activation_checkpointing: bool = False


@dataclass(frozen=True)
class PolicyLossParams:
    """The scalars of the policy loss, copied from the config so the math never sees a config object."""

    clip_eps_low: float
    clip_eps_high: float
    dual_clip_c: float | None
    log_ratio_clamp: float | None
    loss_agg_mode: str
    loss_norm_length: float | None
    kl_loss_coef: float
    kl_loss_type: str | None
    entropy_coeff: float
    skip_zero_advantage_rows: bool = False
    rollout_is_level: str = "off"
    """importance weights π_old / π_rollout on the surrogate: off | token | sequence (algo.rollout_correction)"""
    rollout_is_mode: str = "truncate"
    rollout_is_cap: float = 2.0

    def row_gradient_is_zero_without_advantage(self) -> bool:
        """True when a response whose advantages are all 0 contributes exactly nothing to the gradient:
        the clipped surrogate is then 0 whatever the ratio, and no KL or entropy term adds its own."""
        return self.kl_loss_coef == 0 and self.entropy_coeff == 0


def rows_to_compute(batch: TrainBatch, rows: Tensor, params: PolicyLossParams) -> Tensor:
    """The rows of `rows` whose forward/backward the policy update runs: all of them, or with
    `skip_zero_advantage_rows` (and no KL/entropy term) those with a non-zero advantage at some loss token."""
    if not (params.skip_zero_advantage_rows and params.row_gradient_is_zero_without_advantage()):
        return rows
    if params.loss_agg_mode == algo.LEGACY_TOKEN_MEAN:
        return rows  # a skipped row would change its micro-batch's token count, hence every weight in it
    informative = ((batch.advantages[rows] != 0) & batch.response_mask[rows].bool()).any(dim=1)
    return rows[informative]


@dataclass(frozen=True)
class PolicyUpdate:
    """What one call of `PolicyWorkers.update` reports."""

    metrics: dict[str, float]
    """`actor/*` (and `training/*`, `rollout_corr/*`), global over ranks"""
    tokens_computed: int
    """tokens that went through the model's forward and backward, every epoch and rank (the MFU numerator)"""


@runtime_checkable
class PolicyWorkers(Protocol):
    """The trained policy, its optimiser and scheduler, and the frozen reference when a KL term needs one."""

    @property
    def has_reference(self) -> bool: ...

    def compute_logprobs(self, batch: TrainBatch, *, reference: bool = False) -> Tensor:
        """(B, T) log-probs of the response tokens under the policy (or the reference), 0 off the mask."""
        ...

    def update(
        self,
        batch: TrainBatch,
        loss: PolicyLossParams,
        groups_per_mini_batch: int,
        epochs: int,
        shuffle_seed: int | None,
    ) -> PolicyUpdate:
        """Mini-batch updates of whole groups."""
        ...

    def push_weights(self, engine: RolloutEngine) -> None:
        """Bring the rollout engine's weights up to date with the policy's."""
        ...

    def engine_logprobs_are_policy_logprobs(self, engine: RolloutEngine, temperature: float) -> bool:
        """Are the log-probs the engine reports while sampling this policy's own, up to float rounding?"""
        ...

    @property
    def fallback_reason(self) -> str | None:
        """Why the shared-prefix forward is not used (None when it is)."""
        ...

    def num_parameters(self) -> int: ...

    def matmul_peak_flops(self, dtype: torch.dtype) -> float:
        """The summed matmul peak (FLOP/s) of the processes that run the update, measured where they run and
        with their thread counts (the MFU denominator)."""
        ...

    def state_dict(self, sharded: bool = False) -> dict[str, Any]:
        """{"model": weights, "optimizer": ..., "scheduler": ...}: what a resumed run restores. With `sharded`,
        {"scheduler": ...} only: the weights and optimiser state are written by `save_shards`."""
        ...

    def save_shards(self, directory: Path) -> None:
        """Every rank writes its own shards of the weights and optimiser state into `directory`
        (`torch.distributed.checkpoint`); no rank gathers the model."""
        ...

    def load_state_dict(self, state: dict[str, Any], shards: Path | None = None) -> None:
        """Restore `state`; the weights and optimiser from the `shards` directory when it was saved sharded
        (on any number of ranks)."""
        ...

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        """Only the policy's weights (`dapo eval --checkpoint`): no optimiser, no scheduler."""
        ...

    def load_weights_from_shards(self, shards: Path) -> None:
        """Only the weights, from a sharded checkpoint's directory."""
        ...

    def save_pretrained(self, path: Path, tokenizer: Any) -> Path:
        """The policy as a Hugging Face model directory."""
        ...

    def release_cached_memory(self) -> None:
        """Return the device allocator's cached blocks (after an update) to the device, where the ranks run, so that
        a colocated engine can take them."""
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

    def state_dict(self, sharded: bool = False) -> dict[str, Any]: ...

    def save_shards(self, directory: Path) -> None: ...

    def load_state_dict(self, state: dict[str, Any], shards: Path | None = None) -> None: ...

    def close(self) -> None: ...
