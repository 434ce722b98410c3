"""The policy worker: log-probs, the clipped-surrogate updates, the frozen reference, weights in and out.

It is the only code that knows about mini- and micro-batches of the policy, gradient accumulation and clipping.
The loss of a micro-batch comes from the pure functions in `dapo.algo`; the row weights that make the token-mean
(or any other aggregation) exact across micro-batches and ranks are computed once per mini-batch with
`algo.loss_row_weights`. One process or N ranks: the `DataParallel` strategy decides which rows are this rank's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from dapo import algo
from dapo.metrics import measure_matmul_peak
from dapo.models.loading import save_pretrained_pair
from dapo.models.lora import adapter_state_dict, is_lora, merged_weights, save_lora
from dapo.rollout.base import RolloutEngine, engine_logprobs_are_sampling_logprobs
from dapo.rollout.weight_sync import bucketed
from dapo.workers.base import PolicyLossParams, PolicySettings, PolicyUpdate, rows_to_compute
from dapo.workers.batch import TrainBatch, epochs_of_mini_batches
from dapo.workers.forward import (
    ResponseForward,
    TrainedModule,
    accumulate_gradients,
    passes,
    prefixed,
    unprefixed,
)
from dapo.workers.optim import clip_and_step, end_update, make_optimizer
from dapo.workers.parallel import SINGLE_PROCESS, DataParallel
from dapo.workers.shards import load_shards, save_shards
from dapo.workers.stats import Accumulator


class PolicyWorker:
    """Holds the trained policy, its optimiser and scheduler, and an optional frozen reference copy."""

    def __init__(self, model: nn.Module, settings: PolicySettings, parallel: DataParallel = SINGLE_PROCESS):
        s = settings
        self.model = model
        self.settings = s
        self.optim = s.optim
        self.micro_batch_max_tokens = s.micro_batch_max_tokens
        self.dp = parallel
        self.reference = None
        if s.with_reference:
            # A frozen copy of the initial policy (GRPO's π_ref); never updated, never in train mode. Each
            # rank holds a whole copy: its passes need no collective (under sequence parallelism every rank of a
            # group computes the group's rows whole: a forward without a backward keeps no activations).
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.forward = ResponseForward(
            model, s.share_prompt_forward, s.temperature, s.precision, s.activation_checkpointing, parallel.sequence
        )
        self.reference_forward = (
            ResponseForward(self.reference, s.share_prompt_forward, s.temperature, s.precision)
            if self.reference
            else None
        )
        # The optimiser is built on the wrapped parameters (FSDP2 replaces them by their shards).
        self.trainable = parallel.wrap(TrainedModule(model, self.forward.logprobs))
        self.optimizer, self.scheduler = make_optimizer(self.trainable.parameters(), s.optim)

    @torch.no_grad()
    def compute_logprobs(
        self, batch: TrainBatch, *, reference: bool = False, with_entropy: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Log-probs (B, T) of every generated token (`batch.generated_mask`) under the policy or the reference,
        and with `with_entropy` also the per-token entropies (B, T) (the trainer's passes do not need them).
        With several ranks each fills its own rows (zeros elsewhere): the sum over ranks is the whole."""
        forward = self.reference_forward if reference else self.forward
        assert forward is not None, "no reference model: enable a KL term to create one"
        logprobs_of = forward.logprobs if reference else self.trainable  # the policy's pass may be a collective
        model = forward.model
        was_training = model.training
        model.eval()
        logprobs = torch.zeros(batch.response_mask.shape)
        entropy = torch.zeros(batch.response_mask.shape)
        everything = torch.arange(batch.num_rows)
        for rows, scale in passes(self.dp, forward, batch, everything, self.micro_batch_max_tokens):
            micro = batch.select(rows).to(self.device)
            micro_logprobs, micro_entropy = logprobs_of(micro, with_entropy=with_entropy)  # entropy only if asked
            if scale == 0:
                continue  # a pass that only keeps the ranks in step
            width = micro_logprobs.shape[1]
            logprobs[rows, :width] = micro_logprobs.cpu()
            if with_entropy:
                entropy[rows, :width] = micro_entropy.cpu()
        model.train(was_training)
        if not reference:
            self.dp.after_forward_only(self.trainable)
        mask = batch.generated_mask.bool()
        logprobs = torch.where(mask, logprobs, 0.0)
        return (logprobs, torch.where(mask, entropy, 0.0)) if with_entropy else logprobs

    def update(
        self,
        batch: TrainBatch,
        loss: PolicyLossParams,
        groups_per_mini_batch: int,
        epochs: int,
        shuffle_seed: int | None,
    ) -> PolicyUpdate:
        """PPO-style updates: `epochs` passes of mini-batch optimiser steps; one scheduler step at the end."""
        self.model.train()
        stats = Accumulator()
        tokens = 0
        with self.dp.updating(self.optimizer):
            for rows in epochs_of_mini_batches(batch, groups_per_mini_batch, epochs, shuffle_seed):
                tokens += self._mini_batch_step(batch, rows, loss, stats)
        metrics = end_update(stats, self.dp, self.optimizer, self.scheduler, "actor")
        self.model.eval()
        return PolicyUpdate(metrics, tokens)

    def _mini_batch_step(self, batch: TrainBatch, rows: Tensor, params: PolicyLossParams, stats: Accumulator) -> int:
        """One optimiser step on the mini-batch `rows`; the tokens its forward passes compute on all ranks."""
        mini_mask = batch.response_mask[rows]
        legacy = params.loss_agg_mode == algo.LEGACY_TOKEN_MEAN
        # Weights over the WHOLE mini-batch: summing micro-batch losses gives exactly the mini-batch aggregate.
        weights = torch.zeros(batch.num_rows, dtype=torch.float64)
        if not legacy:
            weights[rows] = algo.loss_row_weights(
                mini_mask, params.loss_agg_mode, group_index=batch.group_index[rows],
                norm_length=params.loss_norm_length,
            )  # fmt: skip
        # Skipped rows keep their weight in `weights` (the token-mean's denominator); only their zero gradient
        # is not computed.
        computed = rows_to_compute(batch, rows, params)
        if params.skip_zero_advantage_rows:
            stats.add_scalar("actor/skipped_rows_frac", 1.0 - computed.numel() / max(1, rows.numel()))
        if computed.numel() == 0:
            # AdamW still steps on a zero gradient (moments decay, weight decay applies), as it would
            # have after a forward/backward of these rows.
            for p in self.trainable.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        losses = [0.0, 0.0]  # this rank's part of the mini-batch's policy-gradient loss and total loss

        def loss_of(micro_rows: Tensor, scale: float) -> Tensor:
            micro = batch.select(micro_rows).to(self.device)
            micro_weights = (weights[micro_rows] * scale).to(self.device)
            pg_loss, total = self._micro_loss(micro, micro_weights, scale, params, stats)
            losses[0] += float(pg_loss.detach())
            losses[1] += float(total.detach())
            return total

        my_passes = passes(self.dp, self.forward, batch, computed, self.micro_batch_max_tokens)
        if legacy:
            # verl's legacy token mean: each of this rank's micro-batches by its own token mean, weighted by its
            # share of the rank's rows; ranks averaged (DDP averages the loss_scale-multiplied losses).
            mine = [micro for micro, scale in my_passes if scale]
            share = algo.micro_batch_token_mean_weights(batch.response_mask, mine, sum(len(m) for m in mine))
            weights = share / self.dp.loss_scale
        accumulate_gradients(self.dp, self.trainable, my_passes, loss_of)
        mini_pg_loss, mini_loss = self.dp.sum(losses)
        if not math.isfinite(mini_loss):
            # Checked on the sum over ranks, so that every rank raises at the same point and none is left
            # waiting for the others in a collective.
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"non-finite policy loss ({mini_loss}) in a mini-batch of {rows.numel()} rows; nothing was applied "
                "to the weights"
            )
        stats.add_scalar("actor/pg_loss", mini_pg_loss)  # the policy-gradient part only, as verl
        stats.add_scalar("actor/total_loss", mini_loss)
        clip_and_step(self.trainable, self.optimizer, self.optim.grad_clip, stats, "actor")
        # Every rank holds the whole batch and the same `computed`: the count needs no collective.
        return self.forward.tokens_computed(batch, computed)

    def _micro_loss(
        self, micro: TrainBatch, micro_weights: Tensor, scale: float, params: PolicyLossParams, stats: Accumulator
    ) -> tuple[Tensor, Tensor]:
        """(policy-gradient part, total) of one micro-batch's loss, weighted by its rows' mini-batch weights;
        its per-token diagnostics go to `stats` (none from a weight-0 pass)."""
        logprobs, entropy = self.trainable(micro)  # (b, T) each; the entropy is differentiable too
        # Exactly on-policy (one mini-batch, one epoch): π_old = π_θ, detached.
        old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        mask = micro.response_mask
        counted = mask * scale  # a weight-0 pass registers the names with nothing in them
        # mask=: whatever the padding holds never reaches the gradient (0·NaN would be NaN)
        pg_loss, pg_stats = algo.clipped_policy_loss(
            logprobs, old, micro.advantages, params.clip_eps_low, params.clip_eps_high,
            params.dual_clip_c, params.log_ratio_clamp, mask=mask,
        )  # fmt: skip
        if micro.rollout_logprobs is not None:
            pg_loss = pg_loss * _rollout_correction(old, micro, params, scale, stats)
        pg_total = total = algo.weighted_token_sum(pg_loss, mask, micro_weights)
        stats.add_masked("actor/pg_clipfrac", pg_stats.clipped_high | pg_stats.clipped_low, counted)
        stats.add_masked("actor/pg_clipfrac_higher", pg_stats.clipped_high, counted)
        stats.add_masked("actor/pg_clipfrac_low", pg_stats.clipped_low, counted)
        stats.add_masked("actor/pg_clipfrac_lower", pg_stats.dual_clipped, counted)
        stats.add_masked("actor/ppo_kl", pg_stats.approx_kl, counted)
        # DAPO Fig. 3: the upper clip can only bind where π_old < 1/(1+ε_high), and binds on low-probability tokens.
        old_prob = torch.where(mask.bool(), old, 0.0).exp()
        stats.add_masked("actor/pg_clip_high_reachable_frac", old_prob < 1.0 / (1.0 + params.clip_eps_high), counted)
        stats.add_masked("actor/pg_clipped_high_old_prob", old_prob, counted * pg_stats.clipped_high)
        stats.add_masked("actor/ratio_mean", pg_stats.ratio, counted)
        stats.add_masked("actor/entropy", entropy.detach(), counted)
        if params.kl_loss_coef > 0 and micro.ref_logprobs is not None:
            kl = algo.kl_estimate(logprobs, micro.ref_logprobs, params.kl_loss_type or "k3", mask=mask)
            total = total + params.kl_loss_coef * algo.weighted_token_sum(kl, mask, micro_weights)
            stats.add_masked("actor/kl_loss", kl.detach(), counted)
        if params.entropy_coeff > 0:
            total = total - params.entropy_coeff * algo.weighted_token_sum(entropy, mask, micro_weights)
        return pg_total, total

    @property
    def device(self) -> torch.device:
        """Where the model computes; the batch stays on the CPU and each micro-batch is moved here."""
        return next(self.model.parameters()).device

    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    @property
    def fallback_reason(self) -> str | None:
        return self.forward.fallback_reason

    def push_weights(self, engine: RolloutEngine) -> None:
        if is_lora(self.model):  # the engine holds a plain copy: W + ΔW after every update, merged bucket by bucket
            engine.update_weights(bucketed(merged_weights(self.model), self.settings.weight_sync_bucket_bytes))
        else:
            engine.update_weights(self.model)  # free when the engine shares this module

    def full_weight_stream(self) -> Iterator[tuple[str, Tensor]]:
        """The policy's weights one unsharded tensor at a time (`DataParallel.full_tensors`: with several ranks a
        collective per tensor, which every rank must consume to the end)."""
        for name, tensor in self.dp.full_tensors(self.trainable):
            yield name.removeprefix(TrainedModule.PREFIX), tensor

    def engine_logprobs_are_policy_logprobs(self, engine: RolloutEngine, temperature: float) -> bool:
        # The engine computes float32 log-probs: they are π's only when the training forward is float32 too
        # (a bf16-mixed forward gives other log-probs).
        return (
            engine_logprobs_are_sampling_logprobs(temperature)
            and self.forward.precision == "fp32"
            and engine.reports_logprobs_of(self.model)
        )

    def release_cached_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # a DTensor shard counts its whole tensor

    def matmul_peak_flops(self, dtype: torch.dtype) -> float:
        """This process's matmul peak with its own thread count; the sum over ranks on several."""
        peak = measure_matmul_peak(torch.get_num_threads(), dtype=dtype, device=self.device.type)
        return self.dp.sum_over_processes([peak])[0]

    def full_weights(self) -> dict[str, Tensor]:
        """The policy's weights, unsharded (with several ranks: a collective, every rank must call it)."""
        return unprefixed(self.dp.full_weights(self.trainable))

    def state_dict(self, sharded: bool = False) -> dict:
        """The state a checkpoint holds: with `sharded`, only the scheduler's (the weights and the optimiser go
        through `save_shards`); else the unsharded weights and optimiser too (a collective on several ranks)."""
        if sharded:
            return {"scheduler": self.scheduler.state_dict()}
        weights, optimizer = self.dp.full_state(self.trainable, self.optimizer)
        weights = unprefixed(weights)
        if is_lora(self.model):  # the adapter only: the frozen base comes from model.path again
            weights = adapter_state_dict(weights)
        return {"model": weights, "optimizer": optimizer, "scheduler": self.scheduler.state_dict()}

    def save_shards(self, directory: Path) -> None:
        """This rank's shards of the weights and optimiser state into `directory` (a collective)."""
        save_shards(self.trainable, self.optimizer, Path(directory), adapter_only=is_lora(self.model))

    def load_state_dict(self, state: dict, shards: Path | None = None) -> None:
        """Restore a checkpoint's state: the weights and optimiser from `shards` when it was saved sharded."""
        with self.dp.updating(self.optimizer):  # the loaded moments go where an update leaves them
            if shards is not None:
                load_shards(self.trainable, self.optimizer, Path(shards), adapter_only=is_lora(self.model))
            else:
                weights = self._completed(state["model"])
                self.dp.load_full_state(self.trainable, self.optimizer, prefixed(weights), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        self.dp.load_full_state(self.trainable, None, prefixed(self._completed(weights)), None)

    def load_weights_from_shards(self, shards: Path) -> None:
        """The weights of a sharded checkpoint (no optimiser): what `dapo eval --checkpoint` needs."""
        load_shards(self.trainable, None, Path(shards), adapter_only=is_lora(self.model))

    def _completed(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """A LoRA checkpoint's adapter on top of the frozen base this worker holds (a full state loads as is)."""
        if not is_lora(self.model):
            return weights
        current = self.model.state_dict()
        missing = [k for k in adapter_state_dict(current) if k not in weights]
        if missing:
            raise ValueError(f"the checkpoint has no LoRA adapter weights for {missing[:3]}: was it trained with LoRA?")
        return {**current, **adapter_state_dict(weights)}

    def close(self) -> None:
        pass

    def save_pretrained(self, path: Path, tokenizer) -> Path:
        if is_lora(self.model):
            return save_lora(self.model, tokenizer, path, self.settings.lora_export)
        # The base model's save path: a policy trained from a GGUF checkpoint is written as plain weights.
        return save_pretrained_pair(self.model, tokenizer, path)


def _rollout_correction(
    old: Tensor, micro: TrainBatch, params: PolicyLossParams, scale: float, stats: Accumulator
) -> Tensor:
    """The rollout/training mismatch of the micro-batch's tokens (π_old as the loss uses it against the
    engine's π_rollout, always measured) and the importance weights on the surrogate (1 when off)."""
    known = micro.response_mask * micro.rollout_rows.unsqueeze(1)
    counted = known * scale
    rollout = micro.rollout_logprobs
    # log π_old − log π_rollout, in float64: (ρ − 1) − log ρ is ~1e-11 where float32 rounds at ~1e-12
    log_ratio = algo.zero_masked(old.detach() - rollout, known.bool()).double().clamp(max=40.0)
    stats.add_spread("training/rollout_probs_diff", algo.prob_abs_diff(old, rollout, known), counted)
    stats.add_spread("rollout_corr/ratio", torch.exp(log_ratio), counted)
    stats.add_masked("rollout_corr/kl", -log_ratio, counted)  # k1 of KL(π_rollout ‖ π_old), tokens from π_rollout
    stats.add_masked("rollout_corr/k3_kl", torch.expm1(log_ratio) - log_ratio, counted)
    weights, capped = algo.rollout_is_weights(
        old, rollout, known, params.rollout_is_level, params.rollout_is_mode, params.rollout_is_cap
    )
    if params.rollout_is_level != "off":
        stats.add_masked("rollout_corr/is_weight_mean", weights, counted)
        stats.add_masked("rollout_corr/is_capped_frac", capped, counted)
    return weights
