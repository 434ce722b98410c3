"""Workers that hold a model for training, in the trainer's own process (CPU default, or one GPU).

The policy worker computes log-probs and runs the mini-batch updates; the critic worker does the same
for a value model. They are the only code that knows about micro-batches, gradient accumulation and
gradient clipping. The loss of a micro-batch comes from the pure functions in `dapo.algo`; the row weights
that make the token-mean (or any other aggregation) exact across micro-batches are computed once per
mini-batch with `loss_row_weights`.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dapo import algo
from dapo.models.loading import save_pretrained_pair
from dapo.models.lora import adapter_state_dict, is_lora, merged_state_dict, save_lora
from dapo.models.shared_prefix import SharedPrefixForward
from dapo.rollout.base import RolloutEngine
from dapo.workers.batch import (
    TrainBatch,
    batch_from_prompts,
    forward_tokens,
    grouped_micro_batches,
    micro_batches,
    mini_batches,
    position_ids,
    prompt_sharing,
)
from dapo.workers.parallel import SINGLE_PROCESS, DataParallel

PRECISIONS = ("fp32", "bf16-mixed")


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


def lr_factor(step: int, warmup_steps: int, schedule: str, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at training step `step` (0-based, one scheduler step per training step).

    Linear warm-up: (step + 1) / warmup_steps for the first warmup_steps steps (so step 0 already trains;
    verl's factor min(1, step / warmup) gives 0 at step 0, i.e. a wasted step). Then constant (verl/DAPO),
    or a cosine from 1 down to min_lr_ratio at total_steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rows_to_compute(batch: TrainBatch, rows: Tensor, params: PolicyLossParams) -> Tensor:
    """The rows of `rows` whose forward/backward the policy update runs: all of them, or with
    `skip_zero_advantage_rows` (and no KL/entropy term) those with a non-zero advantage at some loss token."""
    if not (params.skip_zero_advantage_rows and params.row_gradient_is_zero_without_advantage()):
        return rows
    if params.loss_agg_mode == algo.LEGACY_TOKEN_MEAN:
        return rows  # a skipped row would change its micro-batch's token count, hence every weight in it
    informative = ((batch.advantages[rows] != 0) & batch.response_mask[rows].bool()).any(dim=1)
    return rows[informative]


def make_optimizer(params, optim: OptimParams) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, optim.warmup_steps, optim.schedule, optim.total_steps, optim.min_lr_ratio),
    )
    return optimizer, scheduler


def _row_lengths(batch: TrainBatch) -> list[int]:
    return batch.attention_mask.sum(dim=1).tolist()


def _hf_response_logits(model: nn.Module, micro: TrainBatch) -> Tensor:
    """Logits that predict each response token, (b, T, V), from the model's own forward over padded rows."""
    out = model(
        input_ids=micro.input_ids,
        attention_mask=micro.attention_mask.long(),
        position_ids=position_ids(micro.attention_mask),
        use_cache=False,
    )
    width = micro.response_ids.shape[1]
    return out.logits[:, micro.prompt_width - 1 : micro.prompt_width - 1 + width]


def shared_prefix_problem(model: nn.Module) -> str | None:
    """None if the shared-prefix forward covers `model` (a causal LM or a critic's decoder body) and
    reproduces its decoder's final hidden states on a small batch (two prompts of different lengths, rows of
    different lengths); else why not. Heads are plain linear layers on those states, so this covers logits
    and values alike."""
    try:
        forward = SharedPrefixForward(model)
    except NotImplementedError as e:
        return str(e)
    g = torch.Generator().manual_seed(0)
    weight = forward.decoder.embed_tokens.weight
    prompts = [torch.randint(0, weight.shape[0], (k,), generator=g) for k in (5, 2)]
    responses = torch.randint(0, weight.shape[0], (3, 4), generator=g)
    lengths = torch.tensor([4, 1, 3])
    group_index = torch.tensor([0, 0, 1])
    batch = batch_from_prompts(prompts, group_index, responses, lengths)
    ids, mask = batch.input_ids.to(weight.device), batch.attention_mask.to(weight.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward.decoder(
                input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False
            )
            width = batch.prompt_width
            want = out.last_hidden_state[:, width - 1 : width - 1 + responses.shape[1]].float()
            hidden, index = forward.response_hidden(prompts, group_index, responses, lengths)
            got = hidden[index].float()
    except Exception as e:  # an architecture variant the ops do not cover
        return repr(e)
    finally:
        model.train(was_training)
    real = mask[:, batch.prompt_width :]
    worst = float((got - want)[real].abs().max())
    tol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    return None if worst <= tol else f"hidden states differ from the model's forward by {worst:.2g} (> {tol})"


class ResponseForward:
    """How a worker gets the logits of response tokens (or, for a critic's body, the final hidden states under
    its value head), and how it cuts a mini-batch for it.

    "shared_prefix" (when asked for, the model is covered and the self-check agrees): each prompt computed
    once per micro-batch for all its responses, packed tokens (`dapo.models.shared_prefix`); micro-batches
    keep a prompt's rows together. "hf": the model's own forward over left/right-padded rows; micro-batches
    sorted by length. Both give the same logits up to float rounding.
    """

    def __init__(self, model: nn.Module, share_prompts: bool, temperature: float = 1.0, precision: str = "fp32"):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model
        self.temperature = temperature
        self.precision = precision
        self.fallback_reason = shared_prefix_problem(model) if share_prompts else "not asked for"
        self.shared = SharedPrefixForward(model) if self.fallback_reason is None else None

    @property
    def name(self) -> str:
        return "shared_prefix" if self.shared is not None else "hf"

    def micro_batches(self, batch: TrainBatch, rows: Tensor, max_tokens: int) -> list[Tensor]:
        if self.shared is not None:
            return grouped_micro_batches(batch, rows, max_tokens)
        return micro_batches(_row_lengths(batch), rows, max_tokens)

    def tokens_computed(self, batch: TrainBatch, rows: Tensor) -> int:
        """Tokens that go through the model when `rows` are computed (for the MFU estimate)."""
        return forward_tokens(batch, rows, self.shared is not None)

    def compute_context(self):
        """The autocast region of the model's forward: bf16 matmuls over float32 (master) weights for
        "bf16-mixed"; nothing for "fp32". Gradients, the optimiser state and every reduction stay float32."""
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")

    def logits(self, micro: TrainBatch) -> Tensor:
        """Logits of the distribution the responses were sampled from: the model's, divided by the rollout
        temperature (as verl and TRL do), so that ratios, KL and entropy are those of the sampling policy.
        Float32 in every precision: log-probs, KL and entropy are computed from them in float32."""
        with self.compute_context():
            if self.shared is None:
                logits = _hf_response_logits(self.model, micro)
            else:
                prompts, row_prompt, response_lengths = prompt_sharing(micro)
                logits = self.shared.response_logits(prompts, row_prompt, micro.response_ids, response_lengths)
        logits = logits.float()  # a no-op in fp32
        return logits if self.temperature == 1.0 else logits / self.temperature

    def shared_hidden(self, micro: TrainBatch) -> tuple[Tensor, Tensor]:
        """With the shared-prefix forward: the final hidden states that predict response tokens and their
        (b, T) index (`SharedPrefixForward.response_hidden`)."""
        prompts, row_prompt, response_lengths = prompt_sharing(micro)
        with self.compute_context():
            return self.shared.response_hidden(prompts, row_prompt, micro.response_ids, response_lengths)


def _rollout_correction(
    old: Tensor, micro: TrainBatch, params: PolicyLossParams, scale: float, stats: _Accumulator
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


class _Accumulator:
    """Token-weighted sums of per-token diagnostics across micro-batches (exact masked means at the end)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.per_token: set[str] = set()
        self.maxes: dict[str, float] = {}

    def add_masked(self, name: str, values: Tensor, mask: Tensor) -> None:
        """Sums in float32 at least (bf16 values are widened), in float64 for float64 values."""
        mask = mask.bool()
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        self.sums[name] += float(torch.where(mask, values, 0.0).sum())
        self.counts[name] += float(mask.sum())
        self.per_token.add(name)

    def add_spread(self, name: str, values: Tensor, mask: Tensor) -> None:
        """`{name}_mean`, `{name}_std` and `{name}_max` of the masked values. The sums are float64: the std
        comes from E[x²] − E[x]², which float32 cannot resolve for ratios within 1e-4 of 1."""
        values = values.double()
        self.add_masked(f"{name}_mean", values, mask)
        self.add_masked(f"{name}{_SQUARES}", values * values, mask)
        largest = float(torch.where(mask.bool(), values, -math.inf).max()) if values.numel() else -math.inf
        self.maxes[f"{name}_max"] = max(self.maxes.get(f"{name}_max", -math.inf), largest)

    def reduce_per_token(self, dp: DataParallel) -> None:
        """Add up the per-token sums and counts of all ranks (each computed its own rows), and take the
        maxima over ranks; the scalars are already global. Every rank registers the same names (weight-0
        passes add zeros)."""
        names = sorted(self.per_token)
        totals = dp.sum([self.sums[n] for n in names] + [self.counts[n] for n in names])
        for i, name in enumerate(names):
            self.sums[name], self.counts[name] = totals[i], totals[len(names) + i]
        max_names = sorted(self.maxes)
        for name, value in zip(max_names, dp.max([self.maxes[n] for n in max_names]), strict=True):
            self.maxes[name] = value

    def add_scalar(self, name: str, value: float) -> None:
        self.sums[name] += value
        self.counts[name] += 1.0

    def means(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}
        for key in [k for k in out if k.endswith(_SQUARES)]:
            name = key.removesuffix(_SQUARES)
            out[f"{name}_std"] = math.sqrt(max(0.0, out.pop(key) - out[f"{name}_mean"] ** 2))
        out.update({k: v for k, v in self.maxes.items() if math.isfinite(v)})
        return out


_SQUARES = "/__squares"  # the hidden mean of squares behind a `_std` (never logged)


def _clip_and_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float, stats: _Accumulator, prefix: str
) -> None:
    """Clip the global grad norm; skip the step (and count it) when the norm is not finite."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm of sharded gradients is a DTensor
        grad_norm = grad_norm.full_tensor()
    if torch.isfinite(grad_norm):
        optimizer.step()
        stats.add_scalar(f"{prefix}/grad_norm", float(grad_norm))
        stats.sums[f"{prefix}/num_skipped_steps"] += 0.0
    else:
        stats.sums[f"{prefix}/num_skipped_steps"] += 1.0
    stats.counts[f"{prefix}/num_skipped_steps"] = 1.0
    optimizer.zero_grad(set_to_none=True)


class TrainedModule(nn.Module):
    """The model a worker trains, with the worker's training pass as its forward: DDP and FSDP2 act in a
    module's forward and backward, so the pass they wrap must be the whole of it (the shared-prefix forward
    reads the weights directly instead of calling the model)."""

    PREFIX = "model."

    def __init__(self, model: nn.Module, compute):
        super().__init__()
        self.model = model
        self._compute = compute

    def forward(self, micro: TrainBatch) -> Tensor:
        return self._compute(micro)


def _unprefixed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix(TrainedModule.PREFIX): v for k, v in state.items()}


def _prefixed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {TrainedModule.PREFIX + k: v for k, v in state.items()}


def _passes(dp: DataParallel, forward: ResponseForward, batch: TrainBatch, rows: Tensor, max_tokens: int):
    """This rank's micro-batches of `rows` (whole groups), padded with weight-0 passes over a real row to the
    busiest rank's count: pairs (micro-batch rows, weight scale 1 or 0)."""
    mine = dp.shard(batch, rows)
    return dp.pad(forward.micro_batches(batch, mine, max_tokens), filler=rows[:1])


def _accumulate_gradients(dp: DataParallel, trainable: nn.Module, passes, loss_of) -> None:
    """Backward of `loss_of(rows, scale)` for each pass, gradients reduced over ranks on the last one."""
    for i, (rows, scale) in enumerate(passes):
        with dp.grad_sync(trainable, enabled=i == len(passes) - 1):
            (loss_of(rows, scale) * dp.loss_scale).backward()


class PolicyWorker:
    """Holds the trained policy, its optimiser and scheduler, and an optional frozen reference copy."""

    def __init__(
        self,
        model: nn.Module,
        optim: OptimParams,
        *,
        with_reference: bool,
        micro_batch_max_tokens: int,
        share_prompt_forward: bool = True,
        temperature: float = 1.0,
        precision: str = "fp32",
        parallel: DataParallel = SINGLE_PROCESS,
        lora_export: str = "merged",
    ):
        self.model = model
        self.lora_export = lora_export  # with LoRA adapters: what save_pretrained writes (model.lora.export)
        self.optim = optim
        self.micro_batch_max_tokens = micro_batch_max_tokens
        self.dp = parallel
        self.reference = None
        if with_reference:
            # A frozen copy of the initial policy (GRPO's π_ref); never updated, never in train mode. Each
            # rank holds a whole copy: its passes need no collective.
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.forward = ResponseForward(model, share_prompt_forward, temperature, precision)
        self.reference_forward = (
            ResponseForward(self.reference, share_prompt_forward, temperature, precision) if self.reference else None
        )
        # The optimiser is built on the wrapped parameters (FSDP2 replaces them by their shards).
        self.trainable = parallel.wrap(TrainedModule(model, self.forward.logits))
        self.optimizer, self.scheduler = make_optimizer(self.trainable.parameters(), optim)

    @torch.no_grad()
    def compute_logprobs(
        self, batch: TrainBatch, *, reference: bool = False, with_entropy: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Log-probs (B, T) of the response tokens under the policy or the reference, and with
        `with_entropy` also the per-token entropies (B, T) (the trainer's passes do not need them).
        With several ranks each fills its own rows (zeros elsewhere): the sum over ranks is the whole."""
        forward = self.reference_forward if reference else self.forward
        assert forward is not None, "no reference model: enable a KL term to create one"
        logits_of = forward.logits if reference else self.trainable  # the policy's pass may be a collective
        model = forward.model
        was_training = model.training
        model.eval()
        logprobs = torch.zeros(batch.response_mask.shape)
        entropy = torch.zeros(batch.response_mask.shape)
        everything = torch.arange(batch.num_rows)
        for rows, scale in _passes(self.dp, forward, batch, everything, self.micro_batch_max_tokens):
            micro = batch.select(rows)
            logits = logits_of(micro)
            if scale == 0:
                continue  # a pass that only keeps the ranks in step
            width = logits.shape[1]
            logprobs[rows, :width] = algo.token_logprobs(logits, micro.response_ids)
            if with_entropy:
                entropy[rows, :width] = algo.entropy_from_logits(logits)
        model.train(was_training)
        if not reference:
            self.dp.after_forward_only(self.trainable)
        mask = batch.response_mask.bool()
        logprobs = torch.where(mask, logprobs, 0.0)
        return (logprobs, torch.where(mask, entropy, 0.0)) if with_entropy else logprobs

    def update(
        self,
        batch: TrainBatch,
        loss: PolicyLossParams,
        groups_per_mini_batch: int,
        epochs: int,
        shuffle_seed: int | None,
    ) -> dict[str, float]:
        """PPO-style updates: `epochs` passes of mini-batch optimiser steps; one scheduler step at the end."""
        self.model.train()
        stats = _Accumulator()
        generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
        for _ in range(epochs):
            for rows in mini_batches(batch, groups_per_mini_batch, generator):
                self._mini_batch_step(batch, rows, loss, stats)
        stats.reduce_per_token(self.dp)
        stats.add_scalar("actor/lr", self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()
        self.model.eval()
        return stats.means()

    def _mini_batch_step(self, batch: TrainBatch, rows: Tensor, params: PolicyLossParams, stats: _Accumulator) -> None:
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
            micro = batch.select(micro_rows)
            pg_loss, total = self._micro_loss(micro, weights[micro_rows] * scale, scale, params, stats)
            losses[0] += float(pg_loss.detach())
            losses[1] += float(total.detach())
            return total

        passes = _passes(self.dp, self.forward, batch, computed, self.micro_batch_max_tokens)
        if legacy:
            # verl's legacy token mean: each of this rank's micro-batches by its own token mean, weighted by its
            # share of the rank's rows; ranks averaged (DDP averages the loss_scale-multiplied losses).
            mine = [micro for micro, scale in passes if scale]
            share = algo.micro_batch_token_mean_weights(batch.response_mask, mine, sum(len(m) for m in mine))
            weights = share / self.dp.loss_scale
        _accumulate_gradients(self.dp, self.trainable, passes, loss_of)
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
        _clip_and_step(self.trainable, self.optimizer, self.optim.grad_clip, stats, "actor")

    def _micro_loss(
        self, micro: TrainBatch, micro_weights: Tensor, scale: float, params: PolicyLossParams, stats: _Accumulator
    ) -> tuple[Tensor, Tensor]:
        """(policy-gradient part, total) of one micro-batch's loss, weighted by its rows' mini-batch weights;
        its per-token diagnostics go to `stats` (none from a weight-0 pass)."""
        logits = self.trainable(micro)
        logprobs = algo.token_logprobs(logits, micro.response_ids)
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
        stats.add_masked("actor/ratio_mean", pg_stats.ratio, counted)
        with torch.no_grad():
            stats.add_masked("actor/entropy", algo.entropy_from_logits(logits.detach()), counted)
        if params.kl_loss_coef > 0 and micro.ref_logprobs is not None:
            kl = algo.kl_estimate(logprobs, micro.ref_logprobs, params.kl_loss_type or "k3", mask=mask)
            total = total + params.kl_loss_coef * algo.weighted_token_sum(kl, mask, micro_weights)
            stats.add_masked("actor/kl_loss", kl.detach(), counted)
        if params.entropy_coeff > 0:
            entropy = algo.entropy_from_logits(logits)
            total = total - params.entropy_coeff * algo.weighted_token_sum(entropy, mask, micro_weights)
        return pg_total, total

    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    def push_weights(self, engine: RolloutEngine) -> None:
        if is_lora(self.model):  # the engine holds a plain copy: W + ΔW after every update
            engine.update_weights(merged_state_dict(self.model))
        else:
            engine.update_weights(self.model)  # free when the engine shares this module

    def engine_logprobs_are_policy_logprobs(self, engine: RolloutEngine, temperature: float) -> bool:
        # The engine reports untempered float32 log-probs: they are π's only at temperature 1, and only when
        # the training forward is float32 too (a bf16-mixed forward gives other log-probs).
        return temperature == 1.0 and self.forward.precision == "fp32" and engine.reports_logprobs_of(self.model)

    def tokens_computed(self, batch: TrainBatch, rows: Tensor) -> int:
        return self.forward.tokens_computed(batch, rows)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # a DTensor shard counts its whole tensor

    def full_weights(self) -> dict[str, Tensor]:
        """The policy's weights, unsharded (with several ranks: a collective, every rank must call it)."""
        return _unprefixed(self.dp.full_weights(self.trainable))

    def state_dict(self) -> dict:
        weights, optimizer = self.dp.full_state(self.trainable, self.optimizer)
        weights = _unprefixed(weights)
        if is_lora(self.model):  # the adapter only: the frozen base comes from model.path again
            weights = adapter_state_dict(weights)
        return {"model": weights, "optimizer": optimizer, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        weights = self._completed(state["model"])
        self.dp.load_full_state(self.trainable, self.optimizer, _prefixed(weights), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        self.dp.load_full_state(self.trainable, None, _prefixed(self._completed(weights)), None)

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
            return save_lora(self.model, tokenizer, path, self.lora_export)
        # The base model's save path: a policy trained from a GGUF checkpoint is written as plain weights.
        return save_pretrained_pair(self.model, tokenizer, path)


class ValueModel(nn.Module):
    """A critic: the policy's transformer body (a copy) with a scalar head on every position."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.body = copy.deepcopy(policy.get_decoder())
        hidden = policy.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        with torch.autocast(hidden.device.type, enabled=False):  # the head stays float32 under bf16-mixed
            return self.head(hidden.float()).squeeze(-1)


class CriticWorker:
    """Holds the value model of PPO and its own optimiser. Like the policy, it computes each prompt once for
    its responses when the shared-prefix forward covers the body (`share_prompt_forward`)."""

    def __init__(
        self,
        policy: nn.Module,
        optim: OptimParams,
        value_clip: float | None,
        micro_batch_max_tokens: int,
        share_prompt_forward: bool = True,
        precision: str = "fp32",
        parallel: DataParallel = SINGLE_PROCESS,
    ):
        self.model = ValueModel(policy)
        self.optim = optim
        self.value_clip = value_clip
        self.micro_batch_max_tokens = micro_batch_max_tokens
        self.dp = parallel
        # micro-batching, hidden states and the precision of the body's forward
        self.forward = ResponseForward(self.model.body, share_prompt_forward, precision=precision)
        self.trainable = parallel.wrap(TrainedModule(self.model, self._values))
        self.optimizer, self.scheduler = make_optimizer(self.trainable.parameters(), optim)

    def _values(self, micro: TrainBatch) -> Tensor:
        # V(s_t) for response token t is read at the position that predicts it (the state before emitting it).
        # The value head runs in float32 on the (possibly bf16) hidden states: values are targets' scale.
        if self.forward.shared is not None:
            hidden, index = self.forward.shared_hidden(micro)
            return self.model.head(hidden.float()).squeeze(-1)[index]
        with self.forward.compute_context():
            values = self.model(micro.input_ids, micro.attention_mask.long(), position_ids(micro.attention_mask))
        width = micro.response_ids.shape[1]
        return values[:, micro.prompt_width - 1 : micro.prompt_width - 1 + width]

    @torch.no_grad()
    def compute_values(self, batch: TrainBatch) -> Tensor:
        """(B, T) values; with several ranks each fills its own rows (zeros elsewhere)."""
        self.model.eval()
        values = torch.zeros(batch.response_mask.shape)
        everything = torch.arange(batch.num_rows)
        for rows, scale in _passes(self.dp, self.forward, batch, everything, self.micro_batch_max_tokens):
            v = self.trainable(batch.select(rows))
            if scale:
                values[rows, : v.shape[1]] = v
        self.dp.after_forward_only(self.trainable)
        return values * batch.response_mask

    def update(self, batch: TrainBatch, groups_per_mini_batch: int, epochs: int) -> dict[str, float]:
        self.model.train()
        stats = _Accumulator()
        for _ in range(epochs):
            for rows in mini_batches(batch, groups_per_mini_batch, None):
                weights = torch.zeros(batch.num_rows, dtype=torch.float64)
                weights[rows] = algo.loss_row_weights(batch.response_mask[rows], "token-mean")
                losses = [0.0]

                def loss_of(micro_rows: Tensor, scale: float, weights=weights, losses=losses) -> Tensor:
                    micro = batch.select(micro_rows)
                    loss, clipped = algo.clipped_value_loss(
                        self.trainable(micro), micro.old_values, micro.returns, self.value_clip,
                        mask=micro.response_mask,
                    )  # fmt: skip
                    total = algo.weighted_token_sum(loss, micro.response_mask, weights[micro_rows] * scale)
                    losses[0] += float(total.detach())
                    stats.add_masked("critic/vf_clipfrac", clipped, micro.response_mask * scale)
                    return total

                passes = _passes(self.dp, self.forward, batch, rows, self.micro_batch_max_tokens)
                _accumulate_gradients(self.dp, self.trainable, passes, loss_of)
                stats.add_scalar("critic/vf_loss", self.dp.sum(losses)[0])
                _clip_and_step(self.trainable, self.optimizer, self.optim.grad_clip, stats, "critic")
        stats.reduce_per_token(self.dp)
        stats.add_scalar("critic/lr", self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()
        self.model.eval()
        return stats.means()

    def state_dict(self) -> dict:
        weights, optimizer = self.dp.full_state(self.trainable, self.optimizer)
        return {"model": _unprefixed(weights), "optimizer": optimizer, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dp.load_full_state(self.trainable, self.optimizer, _prefixed(state["model"]), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        pass
