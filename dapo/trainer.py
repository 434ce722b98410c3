"""The single controller: one readable training step that follows DAPO's Algorithm 1.

    for each step:
        1. draw prompts, sample G responses each, score them (rule reward + overlong shaping)
        2. dynamic sampling: keep informative groups, draw again until the batch is full (or the cap hits)
        3. old log-probs (skipped when exactly on-policy), reference log-probs if a KL term is on, values if PPO
        4. advantages
        5. mini-batch updates of the actor (and the critic)
        6. new weights reach the rollout engine
        7. evaluate / checkpoint / log on their schedules

Side effects (generation, optimisation, files) are orchestrated here; the math is in `dapo.algo`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dapo import algo
from dapo.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from dapo.components import Components, build_components
from dapo.config import Config, ConfigError, config_diff
from dapo.errors import DapoError
from dapo.evaluation import evaluate, format_eval
from dapo.groups import (
    ScoredGroup,
    build_train_batch,
    groups_from_rollout,
    reward_samples,
    rollout_logprob_matrix,
    rollout_logprobs_by_row,
    sequence_mask,
)
from dapo.metrics import MetricsLogger, ProgressView, stats_dict
from dapo.rollout import RolloutEngine, SamplingParams
from dapo.runtime import measure_matmul_peak
from dapo.workers.base import CriticWorkers, PolicyWorkers
from dapo.workers.local import PolicyLossParams, rows_to_compute


class ResumeConfigError(DapoError, RuntimeError):
    """Resuming with a config that differs from the checkpoint's, without accepting the differences."""


@dataclass
class Counters:
    """What a checkpoint must restore besides weights and RNG for a resumed run to continue exactly."""

    step: int = 0
    kl_reward_coef: float = 0.0


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: Config, *, log_to_console: bool = True, components: Components | None = None):
        self.cfg = config.validate()
        torch.set_num_threads(config.trainer.num_threads)
        seed_everything(config.trainer.seed)
        self.run_dir = Path(config.trainer.output_dir) / config.trainer.run_name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say = print if log_to_console else (lambda *_: None)

        parts = components or build_components(config, say=self.say)
        self.tokenizer, self.data, self.reward_fn = parts.tokenizer, parts.data, parts.reward_fn
        self.engine: RolloutEngine = parts.engine
        self.policy: PolicyWorkers = parts.policy
        self.critic: CriticWorkers | None = parts.critic
        self.sampling = parts.sampling
        self.rollout_logprobs_are_policy_logprobs = parts.rollout_logprobs_are_policy_logprobs
        self.counters = Counters(kl_reward_coef=config.algo.kl_reward_coef)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=config.trainer.keep_last)
        self.num_params = self.policy.num_parameters()
        # The peak of the dtype the update's matmuls run in: bf16 under bf16-mixed or bf16 parameters.
        bf16 = config.actor.precision == "bf16-mixed" or config.model.dtype == "bfloat16"
        peak_dtype = torch.bfloat16 if bf16 else torch.float32
        self.peak_flops = measure_matmul_peak(config.trainer.num_threads, dtype=peak_dtype)
        resumed_step = self._maybe_resume()
        self.logger = MetricsLogger(
            self.run_dir,
            tensorboard=config.trainer.tensorboard,
            wandb_project=config.trainer.wandb_project,
            wandb_run_name=config.trainer.run_name,
            config=config.to_dict(),
            resume_step=resumed_step,
        )
        (self.run_dir / "config.yaml").write_text(config.to_yaml())

    # ------------------------------------------------------------------------------------------ the loop

    def train(self) -> dict[str, float]:
        cfg = self.cfg.trainer
        progress = ProgressView(cfg.total_steps, initial_step=self.counters.step, disable=not cfg.progress)
        last: dict[str, float] = {}
        try:
            if self.counters.step == 0 and cfg.val_before_train and self.data.val_records:
                last = self._evaluate_and_log(0, progress)
            while self.counters.step < cfg.total_steps:
                step = self.counters.step + 1
                metrics = self.train_step(step)
                self.counters.step = step
                final = step == cfg.total_steps
                if self.data.val_records and cfg.test_freq > 0 and (step % cfg.test_freq == 0 or final):
                    val = self._evaluate(step)
                    metrics.update(val)
                    progress.write(f"[eval @ step {step}] {format_eval(val)}")
                self.logger.log(step, metrics)
                progress.update(step, metrics)
                if final or (cfg.save_freq > 0 and step % cfg.save_freq == 0):
                    self.save_checkpoint()
                last = metrics
        finally:
            progress.close()
            self.logger.close()
        return last

    def train_step(self, step: int) -> dict[str, float]:
        cfg, timer = self.cfg, Timer()
        metrics: dict[str, float] = {}
        with timer("step"):
            # 1-2. Sample, score, and keep informative groups until the batch is full (DAPO Alg. 1, lines 3-7).
            groups, sampling_metrics = self.sampling.collect(step, lambda r: self._generation_round(step, r, timer))
            metrics.update(sampling_metrics)
            batch = build_train_batch(groups, self.tokenizer.pad_token_id, cfg.algo.overlong.filter)
            all_tokens = sequence_mask(groups)  # (B, T) every generated token, truncated ones included
            # The engine's π_rollout, for the mismatch metrics and the rollout correction. It reports untempered
            # log-probs, which are the trainer's (logits / T) only at temperature 1.
            known = rollout_logprobs_by_row(groups, all_tokens.shape[1]) if cfg.rollout.temperature == 1.0 else None
            if known is not None:
                batch = batch.replace(rollout_logprobs=known[0] * all_tokens, rollout_rows=known[1])

            # 3. Old log-probs: skipped when the update is exactly on-policy (one mini-batch, one epoch), where
            #    π_old = π_θ and the worker uses its own detached log-probs (the in-reward KL still needs them).
            on_policy = cfg.actor.ppo_epochs == 1 and cfg.actor.mini_batch_size == cfg.data.train_batch_size
            old_logprobs = None
            if not on_policy or cfg.algo.use_kl_in_reward:
                with timer("old_log_prob"):
                    old_logprobs = self._logprobs_from_rollout(groups, all_tokens)
                    metrics["train/old_logprobs_from_rollout"] = float(old_logprobs is not None)
                    if old_logprobs is None:
                        old_logprobs = self.policy.compute_logprobs(batch.replace(response_mask=all_tokens))
            if not on_policy:
                batch = batch.replace(old_logprobs=old_logprobs)
            if self.policy.has_reference:
                with timer("ref"):
                    ref_logprobs = self.policy.compute_logprobs(batch.replace(response_mask=all_tokens), reference=True)
                batch = batch.replace(ref_logprobs=ref_logprobs)

            # 4. Advantages (DAPO Eq. 9 for the group estimators; Eqs. 2-3 for GAE).
            with timer("adv"):
                batch = self._with_advantages(batch, groups, all_tokens, old_logprobs, timer, metrics)

            # 5. Policy (and critic) updates: mini-batches of whole groups, exact loss aggregation.
            if self.critic is not None:
                with timer("update_critic"):
                    metrics.update(self.critic.update(batch, cfg.actor.mini_batch_size, cfg.actor.ppo_epochs))
            if self.critic is None or step > cfg.critic.warmup_steps:
                with timer("update_actor"):
                    shuffle_seed = cfg.trainer.seed * 7919 + step if cfg.actor.shuffle else None
                    metrics.update(
                        self.policy.update(
                            batch, self._loss_params(), cfg.actor.mini_batch_size, cfg.actor.ppo_epochs, shuffle_seed
                        )
                    )

            # 6. New weights reach the rollout engine (free when it shares the trainer's module).
            with timer("update_weights"):
                self.policy.push_weights(self.engine)
        metrics.update(self._data_metrics(groups, batch, all_tokens))
        metrics.update(self.engine.counters())
        metrics.update({f"timing_s/{k}": v for k, v in timer.seconds.items()})
        metrics.update(self._perf_metrics(batch, timer))
        return metrics

    # ------------------------------------------------------------------------------ 1-2. dynamic sampling

    def _logprobs_from_rollout(self, groups: list[ScoredGroup], all_tokens: Tensor) -> Tensor | None:
        """π_old as the built-in engine computed it while sampling, when that is the training model's own
        log-prob up to float rounding (actor.reuse_rollout_logprobs); None when it must be recomputed."""
        if not self.rollout_logprobs_are_policy_logprobs:
            return None
        logprobs = rollout_logprob_matrix(groups, all_tokens.shape[1])
        return None if logprobs is None else logprobs * all_tokens

    def _generation_round(self, step: int, round_index: int, timer: Timer) -> Iterator[tuple[list[ScoredGroup], dict]]:
        """Draw gen_batch_size prompts, sample G responses each, score them (DAPO Alg. 1, lines 3-5): as one
        part, or wave by wave with algo.dynamic_sampling.stop_when_full. Closed before its last wave, it gives
        the prompts not generated back to the data sampler."""
        records = self.data.sampler.next_batch()
        prompts = [self.data.prompt_ids[r.uid] for r in records]
        n, sampling, seed = self.cfg.rollout.group_size, self._train_sampling(), self._seed(step, round_index)
        if not self.sampling.settings.stop_when_full:
            with timer("gen"):
                rollout = self.engine.generate(prompts, n, sampling, seed)
            yield self._scored(step, records, rollout, timer)
            return
        per_wave = max(1, self.cfg.rollout.max_rows_in_flight // n)
        waves = self.engine.generate_waves(prompts, n, sampling, seed, per_wave)
        done = 0
        try:
            while done < len(records):
                with timer("gen"):
                    rollout = next(waves)
                part = records[done : done + rollout.num_prompts]
                done += len(part)
                yield self._scored(step, part, rollout, timer)
        finally:
            waves.close()
            self.data.sampler.give_back(records[done:])

    def _scored(self, step: int, records, rollout, timer: Timer) -> tuple[list[ScoredGroup], dict]:
        """The groups of `rollout` (the responses to `records`), scored, and the reward metrics."""
        prompts = [self.data.prompt_ids[r.uid] for r in records]
        with timer("reward"):
            scored = self.reward_fn(
                reward_samples(records, [self.data.prompt_text[r.uid] for r in records], rollout, self._decode)
            )
        bad = torch.nonzero(~torch.isfinite(scored.rewards)).flatten().tolist()
        if bad:
            record = records[bad[0] // rollout.n]
            raise FloatingPointError(
                f"step {step}: the reward of response {bad[0] % rollout.n} to prompt {record.uid} "
                f"(data source {record.data_source!r}) is {float(scored.rewards[bad[0]])}; "
                f"{len(bad)} non-finite rewards in this round. Nothing was applied to the weights."
            )
        return groups_from_rollout(records, prompts, rollout, scored), scored.metrics

    # ------------------------------------------------------------------------------------ 4. advantages

    def _with_advantages(self, batch, groups, all_tokens, old_logprobs, timer, metrics):
        cfg = self.cfg.algo
        rewards = torch.tensor([g.rewards for g in groups])  # (P, G) shaped rewards
        token_rewards = algo.token_level_rewards(rewards.reshape(-1), all_tokens)  # (B, T), reward on the last token
        if cfg.use_kl_in_reward and self.policy.has_reference:
            # In-reward KL (InstructGPT-style): −β·KL_t on every token. GAE sees it per token; the group
            # estimators see its sum per response (the same total).
            token_kl = algo.kl_estimate(old_logprobs, batch.ref_logprobs, cfg.kl_reward_type, mask=all_tokens)
            token_rewards = algo.kl_penalized_token_rewards(
                token_rewards, token_kl, self.counters.kl_reward_coef, all_tokens
            )
            rewards = token_rewards.sum(dim=1).reshape(rewards.shape)
            observed = float(algo.masked_mean(token_kl, all_tokens))
            metrics["actor/reward_kl_penalty"] = observed
            metrics["actor/reward_kl_penalty_coeff"] = self.counters.kl_reward_coef
            if cfg.kl_ctrl == "adaptive":
                self.counters.kl_reward_coef = algo.adaptive_kl_coef(
                    self.counters.kl_reward_coef, observed, cfg.kl_target, cfg.kl_horizon, all_tokens.shape[0]
                )
        metrics.update(stats_dict("critic/rewards", rewards.reshape(-1)))
        if cfg.adv_estimator == "gae":
            with timer("values"):
                values = self.critic.compute_values(batch.replace(response_mask=all_tokens))
            advantages, returns = algo.gae_advantages(token_rewards, values, all_tokens, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = algo.masked_whiten(advantages, all_tokens)
            metrics.update(stats_dict("critic/values", values, all_tokens.bool()))
            metrics.update(stats_dict("critic/returns", returns, all_tokens.bool()))
            metrics["critic/vf_explained_var"] = float(algo.explained_variance(values, returns, all_tokens))
            batch = batch.replace(old_values=values, returns=returns)
        else:
            estimator = algo.GROUP_ADVANTAGES[cfg.adv_estimator]
            per_response = estimator(rewards, cfg.adv_eps).reshape(-1)
            advantages = algo.broadcast_to_tokens(per_response, all_tokens)
        metrics.update(stats_dict("critic/advantages", advantages, all_tokens.bool()))
        return batch.replace(advantages=advantages)

    def _loss_params(self) -> PolicyLossParams:
        a, r = self.cfg.algo, self.cfg.rollout
        return PolicyLossParams(
            clip_eps_low=a.clip_eps_low,
            clip_eps_high=a.clip_eps_high,
            dual_clip_c=a.dual_clip_c,
            log_ratio_clamp=a.log_ratio_clamp,
            loss_agg_mode=a.loss_agg_mode,
            loss_norm_length=float(a.loss_norm_length or r.max_response_length),
            kl_loss_coef=a.kl_loss_coef if a.use_kl_loss else 0.0,
            kl_loss_type=a.kl_loss_type,
            entropy_coeff=a.entropy_coeff,
            skip_zero_advantage_rows=self.cfg.actor.skip_zero_advantage_rows,
            rollout_is_level=a.rollout_correction.level,
            rollout_is_mode=a.rollout_correction.mode,
            rollout_is_cap=a.rollout_correction.cap,
        )

    # ---------------------------------------------------------------------------------------- metrics

    def _data_metrics(self, groups, batch, all_tokens) -> dict[str, float]:
        lengths = all_tokens.sum(dim=1)
        prompt_lengths = torch.tensor([float(len(g.prompt_ids)) for g in groups for _ in range(g.size)])
        scores = torch.tensor([s for g in groups for s in g.scores])
        shaped = torch.tensor([s for g in groups for s in g.rewards])
        acc = torch.tensor([float(a) for g in groups for a in g.acc])
        truncated = torch.tensor([float(t) for g in groups for t in g.truncated])
        out = {
            **stats_dict("critic/score", shaped),
            **stats_dict("reward/rule_score", scores),
            "train/acc/mean": float(acc.mean()),
            **stats_dict("response_length", lengths),
            "response_length/clip_ratio": float(truncated.mean()),
            **stats_dict("prompt_length", prompt_lengths),
            "train/loss_tokens": float(batch.response_mask.sum()),
        }
        return out

    def _perf_metrics(self, batch, timer: Timer) -> dict[str, float]:
        tokens = float(batch.attention_mask.sum())
        step_s = timer.seconds.get("step", float("nan"))
        update_s = timer.seconds.get("update_actor", 0.0)
        # Training costs ~6N FLOPs per token (forward + backward), per epoch, on the tokens the update computes.
        computed = rows_to_compute(batch, torch.arange(batch.num_rows), self._loss_params())
        tokens_computed = self.policy.tokens_computed(batch, computed)
        update_flops = 6.0 * self.num_params * tokens_computed * self.cfg.actor.ppo_epochs
        return {
            "perf/total_num_tokens": tokens,
            "perf/time_per_step": step_s,
            "perf/throughput": tokens / step_s if step_s > 0 else float("nan"),
            # MFU against the CPU matmul peak measured at start; not meaningful on a GPU, so NaN there.
            "perf/mfu/actor": (update_flops / update_s / self.peak_flops)
            if update_s > 0 and self.cfg.trainer.device == "cpu"
            else float("nan"),
        }

    # ------------------------------------------------------------------------------------- sampling, seeds

    def _train_sampling(self) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(
            temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_response_length
        )

    def _val_sampling(self) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(temperature=r.val_temperature, top_p=r.val_top_p, max_new_tokens=r.max_response_length)

    def _decode(self, token_ids) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _seed(self, step: int, round_index: int) -> int:
        # A distinct, reproducible seed per (run seed, step, generation round): resume needs no RNG state for it.
        return (self.cfg.trainer.seed * 1_000_003 + step * 1009 + round_index) % 2**31

    # ------------------------------------------------------------------------------------ 7. evaluation

    def _evaluate(self, step: int, progress: bool | None = None) -> dict[str, float]:
        start = time.perf_counter()
        records = self.data.val_records
        metrics = evaluate(
            self.engine,
            [self.data.prompt_ids[r.uid] for r in records],
            [self.data.prompt_text[r.uid] for r in records],
            records,
            self.reward_fn,
            self._val_sampling(),
            self.cfg.rollout.val_n,
            seed=(self.cfg.trainer.seed * 7_777_777 + step) % 2**31,
            decode=self._decode,
            progress=self.cfg.trainer.progress if progress is None else progress,
        )
        metrics["timing_s/testing"] = time.perf_counter() - start
        return metrics

    def evaluate_now(self, progress: bool = True) -> dict[str, float]:
        """Evaluate the current policy on the validation set (`dapo eval`), with a progress bar over prompts;
        nothing is logged."""
        if not self.data.val_records:
            raise ConfigError("no validation data: set data.val_files (or use the built-in task)")
        return self._evaluate(self.counters.step, progress)

    def _evaluate_and_log(self, step: int, progress: ProgressView) -> dict[str, float]:
        metrics = self._evaluate(step)
        self.logger.log(step, metrics)
        progress.write(f"[eval @ step {step}] {format_eval(metrics)}")
        return metrics

    # ------------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        state = {
            **self.policy.state_dict(),  # model, optimizer, scheduler
            "rng": capture_rng_state(),
            "sampler": self.data.sampler.state_dict(),
            "dynamic_sampling": self.sampling.state_dict(),
            "counters": {
                "step": self.counters.step,
                "kl_reward_coef": self.counters.kl_reward_coef,
            },
            "config": self.cfg.to_dict(),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        return self.checkpoints.save(self.counters.step, state)

    def _maybe_resume(self) -> int | None:
        mode = self.cfg.trainer.resume
        if mode == "disable":
            return None
        if mode == "auto":
            if self.checkpoints.latest_step() is None:
                return None
            step, state = self.checkpoints.load()
        else:
            path = Path(mode)
            manager = CheckpointManager(path.parent, keep_last=self.cfg.trainer.keep_last)
            step, state = manager.load(int(path.name.rsplit("_", 1)[-1]))
        differences = config_diff(state["config"], self.cfg.to_dict())
        # Where the run trains (one process or N ranks) and how long it is do not change its math.
        neutral = ("trainer.total_steps", "trainer.resume", "trainer.backend", "ray.", "ray:")
        differences = [d for d in differences if not d.startswith(neutral)]
        if differences and not self.cfg.trainer.accept_config_changes:
            raise ResumeConfigError(
                "the checkpoint was written with a different config:\n  "
                + "\n  ".join(differences)
                + "\nSet trainer.accept_config_changes=true to resume anyway, or trainer.resume=disable to start over."
            )
        self.policy.load_state_dict(state)
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.data.sampler.load_state_dict(state["sampler"])
        self.sampling.load_state_dict(state["dynamic_sampling"])
        counters = state["counters"]
        self.counters.step = counters["step"]
        self.counters.kl_reward_coef = counters["kl_reward_coef"]
        restore_rng_state(state["rng"])
        self.policy.push_weights(self.engine)
        self.say(f"resumed from step {step} ({self.checkpoints.step_dir(step)})")
        return step

    def export(self, path: str | Path) -> Path:
        """Write the trained policy as a Hugging Face model directory (model + tokenizer + run config)."""
        path = self.policy.save_pretrained(Path(path), self.tokenizer)
        (path / "dapo_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        return path

    def close(self) -> None:
        self.engine.close()
        self.reward_fn.close()
        if self.critic is not None:
            self.critic.close()
        self.policy.close()
