"""The single controller: one readable training step that follows DAPO's Algorithm 1.

    for each step:
        1. draw prompts, sample G responses each, score them (rule reward + overlong shaping)
        2. dynamic sampling: keep informative groups, draw again until the batch is full (or the cap hits)
        3. old log-probs (skipped when exactly on-policy), reference log-probs if a KL term is on, values if PPO
        4. advantages
        5. mini-batch updates of the actor (and the critic)
        6. new weights reach the rollout engine
        7. evaluate / checkpoint / log on their schedules

The trainer talks only to stages (`dapo.step`) and interfaces (`RolloutEngine`, `RewardFunction`,
`PolicyWorkers`, `CriticWorkers`); which objects stand behind them is decided in `dapo.components`. The math is
in `dapo.algo`; side effects (generation, optimisation, files) happen behind those interfaces.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dapo.checkpoint import CheckpointManager, ShardedState, ShardedWrite, capture_rng_state, restore_rng_state
from dapo.components import Components, build_components
from dapo.config import Config, ConfigError, config_diff
from dapo.errors import DapoError
from dapo.metrics import MetricsLogger, ProgressView, Timer, stats_dict
from dapo.rollout.lifecycle import EngineLifecycle
from dapo.step.advantages import behaviour_logprobs, with_advantages
from dapo.step.evaluation import evaluate, format_eval
from dapo.step.groups import ScoredGroup, build_train_batch
from dapo.workers.base import CriticWorkers, PolicyWorkers
from dapo.workers.batch import TrainBatch


class ResumeConfigError(DapoError, RuntimeError):
    """Resuming with a config that differs from the checkpoint's, without accepting the differences."""


@dataclass
class Counters:
    """What a checkpoint must restore besides weights and RNG for a resumed run to continue exactly."""

    step: int = 0
    kl_reward_coef: float = 0.0


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

        self.parts = parts = components or build_components(config, say=self.say)
        self.tokenizer, self.data, self.reward_fn = parts.tokenizer, parts.data, parts.reward_fn
        self.engine, self.rounds, self.sampling = parts.engine, parts.rounds, parts.sampling
        self.policy: PolicyWorkers = parts.policy
        self.critic: CriticWorkers | None = parts.critic
        self.counters = Counters(kl_reward_coef=config.algo.kl_reward_coef)
        self.lifecycle = EngineLifecycle(self.engine, config.rollout.sleep_level, self.policy.release_cached_memory)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=config.trainer.keep_last)
        self.num_params = self.policy.num_parameters()
        # The peak of the dtype the update's matmuls run in, where they run (the ranks, on Ray).
        peak_dtype = torch.bfloat16 if config.update_dtype_is_bf16 else torch.float32
        self.peak_flops = self.policy.matmul_peak_flops(peak_dtype)
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
        cfg, parts, timer = self.cfg, self.parts, Timer()
        with timer("step"):
            # 1-2. Sample, score, and keep informative groups until the batch is full (DAPO Alg. 1, lines 3-7).
            groups, metrics = self.sampling.collect(step, self.rounds.draw(step, timer))
            self.lifecycle.after_generation()  # a colocated engine sleeps while the ranks train
            batch = build_train_batch(
                groups, self.tokenizer.pad_token_id, cfg.algo.overlong.filter, parts.rollout_logprobs_usable
            )
            # 3. π_old (skipped when exactly on-policy) and π_ref (when a KL term is on).
            batch, old_logprobs, logprob_metrics = behaviour_logprobs(self.policy, batch, parts.logprobs, timer)
            metrics.update(logprob_metrics)
            # 4. Advantages (DAPO Eq. 9 for the group estimators; Eqs. 2-3 for GAE).
            with timer("adv"):
                rewards = torch.tensor([g.rewards for g in groups])  # (P, G) shaped rewards
                batch, self.counters.kl_reward_coef, adv_metrics = with_advantages(
                    batch, rewards, old_logprobs, self.counters.kl_reward_coef, self.critic, parts.advantages, timer
                )
            metrics.update(adv_metrics)
            # 5. Policy (and critic) updates: mini-batches of whole groups, exact loss aggregation.
            tokens_computed = self._update(step, batch, timer, metrics)
            # 6. New weights reach the rollout engine (free when it shares the trainer's module), waking it.
            with timer("update_weights"):
                self.lifecycle.push(self.policy)
        metrics.update(self._data_metrics(groups, batch))
        metrics.update(self.engine.counters())
        metrics.update({f"timing_s/{k}": v for k, v in timer.seconds.items()})
        metrics.update(self._perf_metrics(batch, timer, tokens_computed))
        return metrics

    def _update(self, step: int, batch: TrainBatch, timer: Timer, metrics: dict[str, float]) -> int:
        """The critic's and the actor's updates (the actor after critic.warmup_steps); the tokens the actor's
        forward and backward passes computed."""
        actor = self.cfg.actor
        if self.critic is not None:
            with timer("update_critic"):
                metrics.update(self.critic.update(batch, actor.mini_batch_size, actor.ppo_epochs))
        if self.critic is not None and step <= self.cfg.critic.warmup_steps:
            return 0
        with timer("update_actor"):
            shuffle_seed = self.cfg.trainer.seed * 7919 + step if actor.shuffle else None
            update = self.policy.update(batch, self.parts.loss, actor.mini_batch_size, actor.ppo_epochs, shuffle_seed)
        metrics.update(update.metrics)
        return update.tokens_computed

    # ---------------------------------------------------------------------------------------- metrics

    def _data_metrics(self, groups: list[ScoredGroup], batch: TrainBatch) -> dict[str, float]:
        def per_response(values) -> torch.Tensor:
            return torch.tensor([float(v) for g in groups for v in values(g)])

        return {
            **stats_dict("critic/score", per_response(lambda g: g.rewards)),
            **stats_dict("reward/rule_score", per_response(lambda g: g.scores)),
            "train/acc/mean": float(per_response(lambda g: g.acc).mean()),
            **stats_dict("response_length", batch.generated_mask.sum(dim=1)),
            "response_length/clip_ratio": float(per_response(lambda g: g.truncated).mean()),
            **stats_dict("prompt_length", per_response(lambda g: [len(g.prompt_ids)] * g.size)),
            "train/loss_tokens": float(batch.response_mask.sum()),
        }

    def _perf_metrics(self, batch: TrainBatch, timer: Timer, tokens_computed: int) -> dict[str, float]:
        tokens = float(batch.attention_mask.sum())
        step_s = timer.seconds.get("step", float("nan"))
        update_s = timer.seconds.get("update_actor", 0.0)
        # Training costs ~6N FLOPs per token (forward + backward), on the tokens the update computed.
        update_flops = 6.0 * self.num_params * tokens_computed
        return {
            "perf/total_num_tokens": tokens,
            "perf/time_per_step": step_s,
            "perf/throughput": tokens / step_s if step_s > 0 else float("nan"),
            # MFU against the matmul peak measured at start where the update runs (its device and dtype).
            "perf/mfu/actor": (update_flops / update_s / self.peak_flops) if update_s > 0 else float("nan"),
        }

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
            self.parts.val_sampling,
            self.cfg.rollout.val_n,
            seed=(self.cfg.trainer.seed * 7_777_777 + step) % 2**31,
            decode=self.rounds.decode,
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
        sharded = self.cfg.sharded_checkpoints
        state = {
            **self.policy.state_dict(sharded),  # model, optimizer, scheduler (scheduler only when sharded)
            "rng": capture_rng_state(),
            "sampler": self.data.sampler.state_dict(),
            "dynamic_sampling": self.sampling.state_dict(),
            "counters": dataclasses.asdict(self.counters),
            "config": self.cfg.to_dict(),
        }
        if sharded:  # every rank writes its own shards into the checkpoint being saved
            state["policy_shards"] = ShardedWrite(self.policy.save_shards)
        if self.critic is not None:
            state["critic"] = self.critic.state_dict(sharded)
            if sharded:
                state["critic_shards"] = ShardedWrite(self.critic.save_shards)
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
        differences = config_diff(state["config"], self.cfg.to_dict(), defaults=Config().to_dict())
        # Where the run trains (one process or N ranks), how long it is and how it saves do not change its math.
        neutral = ("trainer.total_steps", "trainer.resume", "trainer.backend", "trainer.checkpoint_format", "ray")
        differences = [d for d in differences if not d.startswith(neutral)]
        if differences and not self.cfg.trainer.accept_config_changes:
            raise ResumeConfigError(
                "the checkpoint was written with a different config:\n  "
                + "\n  ".join(differences)
                + "\nSet trainer.accept_config_changes=true to resume anyway, or trainer.resume=disable to start over."
            )
        # Either format loads, whatever trainer.checkpoint_format says now: the file layout is not the run's math.
        self.policy.load_state_dict(state, shards=_shards_path(state, "policy_shards"))
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"], shards=_shards_path(state, "critic_shards"))
        self.data.sampler.load_state_dict(state["sampler"])
        self.sampling.load_state_dict(state["dynamic_sampling"])
        self.counters = Counters(**state["counters"])
        restore_rng_state(state["rng"])
        self.lifecycle.push(self.policy)
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


def _shards_path(state: dict, key: str) -> Path | None:
    """The verified directory of a sharded checkpoint piece, None when the checkpoint is in the full format."""
    piece = state.get(key)
    return piece.path if isinstance(piece, ShardedState) else None
