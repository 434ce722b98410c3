"""The rules of a valid `Config`: `validate` rejects an invalid setting at start with the field and the rule.

This is the one module of `dapo.config` that imports the tuples of valid choices from `dapo.algo` (advantage
estimators, aggregation modes, KL kinds, rollout-correction levels and modes) and `dapo.data.tasks` (the
built-in tasks and their levels). `Config.validate` calls `validate` here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dapo.algo import ADVANTAGE_ESTIMATORS, AGGREGATION_MODES, KL_ESTIMATORS, ROLLOUT_IS_LEVELS, ROLLOUT_IS_MODES
from dapo.config.schema import Config, ConfigError
from dapo.data.tasks import BUILTIN_TASKS, LEVELS

CHECKPOINT_FORMATS = ("auto", "full", "sharded")


def validate(config: Config) -> Config:
    """Raise ConfigError naming the first field that breaks a rule; return `config` when all hold."""
    for check in _CHECKS:
        check(config)
    return config


def _require(condition: bool, field_path: str, rule: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{field_path} = {value!r}: {rule}")


def _one_of(field_path: str, value: Any, allowed: tuple) -> None:
    _require(value in allowed, field_path, f"must be one of {', '.join(map(str, allowed))}", value)


def _check_choices(c: Config) -> None:
    _one_of("algo.adv_estimator", c.algo.adv_estimator, ADVANTAGE_ESTIMATORS)
    _one_of("algo.loss_agg_mode", c.algo.loss_agg_mode, AGGREGATION_MODES)
    _one_of("algo.kl_loss_type", c.algo.kl_loss_type, KL_ESTIMATORS)
    _one_of("algo.kl_reward_type", c.algo.kl_reward_type, KL_ESTIMATORS)
    _one_of("algo.kl_ctrl", c.algo.kl_ctrl, ("fixed", "adaptive"))
    _one_of("algo.rollout_correction.level", c.algo.rollout_correction.level, ROLLOUT_IS_LEVELS)
    _one_of("algo.rollout_correction.mode", c.algo.rollout_correction.mode, ROLLOUT_IS_MODES)
    cap = c.algo.rollout_correction.cap
    _require(cap > 0, "algo.rollout_correction.cap", "must be > 0", cap)
    _require(
        c.algo.rollout_correction.level == "off" or c.rollout.temperature == 1.0,
        "algo.rollout_correction.level",
        "needs rollout.temperature = 1: the engines report untempered log-probs, the trainer tempered ones",
        c.algo.rollout_correction.level,
    )
    _one_of("algo.dynamic_sampling.metric", c.algo.dynamic_sampling.metric, ("acc", "score", "reward"))
    _one_of("rollout.engine", c.rollout.engine, ("builtin", "vllm"))
    _one_of("reward.scorer_mode", c.reward.scorer_mode, ("default", "verl"))
    _one_of("reward.on_error", c.reward.on_error, ("raise", "score_as_failure"))
    _one_of("data.truncation", c.data.truncation, ("left", "drop", "error"))
    _one_of("data.prompt_template", c.data.prompt_template, (None, "dapo"))
    _one_of("data.task", c.data.task, (None, *BUILTIN_TASKS))
    for name in ("prompt_key", "answer_key"):
        key = getattr(c.data, name)
        _require(
            key is None or (isinstance(key, str) and key.strip() == key != ""),
            f"data.{name}",
            "must be a column name (a non-empty string without surrounding spaces) or null (recognised from the file)",
            key,
        )
    _require(
        c.data.prompt_key is None or c.data.prompt_key != c.data.answer_key,
        "data.answer_key",
        "must name another column than data.prompt_key",
        c.data.answer_key,
    )
    levels = c.data.task_level if isinstance(c.data.task_level, list) else [c.data.task_level]
    _require(
        bool(levels) and all(level in LEVELS for level in levels),
        "data.task_level",
        f"must be a level of {sorted(LEVELS)} or a non-empty list of them",
        c.data.task_level,
    )
    _one_of("actor.lr_schedule", c.actor.lr_schedule, ("constant", "cosine"))
    _one_of("model.dtype", c.model.dtype, ("float32", "bfloat16"))
    w = c.model.warm_start
    _require(w.steps >= 1, "model.warm_start.steps", "must be ≥ 1", w.steps)
    for name in ("shortcut_rate", "repeat_rate"):
        _require(getattr(w, name) >= 0.0, f"model.warm_start.{name}", "must be ≥ 0", getattr(w, name))
    _require(
        w.shortcut_rate + w.repeat_rate < 1.0,
        "model.warm_start.repeat_rate",
        "shortcut_rate + repeat_rate must stay below 1 (some demonstrations must be plain worked solutions)",
        w.repeat_rate,
    )
    _one_of("rollout.dtype", c.rollout.dtype, ("float32", "bfloat16"))
    lora = c.model.lora
    _require(lora.rank >= 0, "model.lora.rank", "must be ≥ 0 (0 = full fine-tuning)", lora.rank)
    _one_of("model.lora.export", lora.export, ("merged", "adapter"))
    if lora.rank > 0:
        _require(
            c.trainer.backend == "local", "model.lora.rank", "LoRA runs with trainer.backend=local only", lora.rank
        )
        _require(not c.uses_critic, "model.lora.rank", "LoRA is for the policy; PPO's critic needs rank 0", lora.rank)
        _require(bool(lora.target_modules), "model.lora.target_modules", "must name at least one layer", [])
    _one_of("actor.precision", c.actor.precision, ("fp32", "bf16-mixed"))
    _one_of("trainer.device", c.trainer.device, ("cpu", "cuda"))
    _one_of("trainer.backend", c.trainer.backend, ("local", "ray"))
    _one_of("ray.strategy", c.ray.strategy, ("ddp", "fsdp2"))
    _require(c.ray.train_workers >= 1, "ray.train_workers", "must be ≥ 1", c.ray.train_workers)
    _require(c.ray.cpus_per_worker > 0, "ray.cpus_per_worker", "must be > 0", c.ray.cpus_per_worker)
    _require(c.ray.gpus_per_worker >= 0, "ray.gpus_per_worker", "must be ≥ 0", c.ray.gpus_per_worker)
    _require(c.ray.collective_timeout_s > 0, "ray.collective_timeout_s", "must be > 0", c.ray.collective_timeout_s)
    _one_of("ray.placement", c.ray.placement, ("colocated", "split"))
    _require(c.ray.rollout_workers >= 0, "ray.rollout_workers", "must be ≥ 0", c.ray.rollout_workers)
    _require(c.ray.reward_workers >= 0, "ray.reward_workers", "must be ≥ 0", c.ray.reward_workers)
    _require(
        c.ray.cpus_per_reward_worker >= 0, "ray.cpus_per_reward_worker", "must be ≥ 0", c.ray.cpus_per_reward_worker
    )
    _require(c.ray.max_rollout_restarts >= 0, "ray.max_rollout_restarts", "must be ≥ 0", c.ray.max_rollout_restarts)
    _check_engine_parallelism(c)
    if c.trainer.backend == "local":  # these workers are Ray actors: with the local backend they would do nothing
        for name in ("rollout_workers", "reward_workers"):
            value = getattr(c.ray, name)
            _require(value == 0, f"ray.{name}", "needs trainer.backend=ray (set it, or set this to 0)", value)
    _one_of("ray.offload", c.ray.offload, ("none", "optimizer", "all"))
    if c.ray.offload == "all":
        _require(c.ray.strategy == "fsdp2", "ray.offload", "all (CPUOffloadPolicy) needs ray.strategy=fsdp2", "all")
    sp = c.ray.sequence_parallel
    _require(sp >= 1, "ray.sequence_parallel", "must be ≥ 1", sp)
    _require(
        c.ray.train_workers % sp == 0, "ray.sequence_parallel",
        f"must divide ray.train_workers ({c.ray.train_workers}): the ranks form a data x sequence mesh", sp,
    )  # fmt: skip
    if sp > 1:
        _require(c.trainer.backend == "ray", "ray.sequence_parallel", "needs trainer.backend=ray", sp)
        _require(
            c.actor.share_prompt_forward, "ray.sequence_parallel",
            "splits the shared-prefix forward's packed tokens: needs actor.share_prompt_forward=true", sp,
        )  # fmt: skip
    if c.ray.rollout_workers > 0 and c.ray.placement == "colocated":
        _require(
            c.ray.rollout_workers <= c.ray.train_workers,
            "ray.rollout_workers",
            f"colocated rollout workers share the training ranks' bundles: at most ray.train_workers "
            f"({c.ray.train_workers}), or set ray.placement=split",
            c.ray.rollout_workers,
        )


def _check_clip(c: Config) -> None:
    a = c.algo
    _require(
        0.0 <= a.clip_eps_low < 1.0, "algo.clip_eps_low", "must be in [0, 1): the ratio must stay > 0", a.clip_eps_low
    )
    _require(a.clip_eps_high >= 0.0, "algo.clip_eps_high", "must be ≥ 0", a.clip_eps_high)
    if a.dual_clip_c is not None:
        _require(a.dual_clip_c > 1.0, "algo.dual_clip_c", "must be > 1 (or null to disable)", a.dual_clip_c)
    _require(0.0 <= a.gamma <= 1.0, "algo.gamma", "must be in [0, 1]", a.gamma)
    _require(0.0 <= a.lam <= 1.0, "algo.lam", "must be in [0, 1]", a.lam)
    _require(a.kl_loss_coef >= 0.0, "algo.kl_loss_coef", "must be ≥ 0", a.kl_loss_coef)
    _require(a.kl_reward_coef >= 0.0, "algo.kl_reward_coef", "must be ≥ 0", a.kl_reward_coef)
    _require(a.entropy_coeff >= 0.0, "algo.entropy_coeff", "must be ≥ 0", a.entropy_coeff)


def _check_overlong(c: Config) -> None:
    o = c.algo.overlong
    if o.enable:
        _require(
            o.buffer_length > 0,
            "algo.overlong.buffer_length",
            "must be > 0 when overlong shaping is on",
            o.buffer_length,
        )
        _require(
            o.buffer_length <= c.rollout.max_response_length,
            "algo.overlong.buffer_length",
            f"L_cache must not exceed L_max = rollout.max_response_length ({c.rollout.max_response_length})",
            o.buffer_length,
        )
        _require(o.penalty_factor >= 0.0, "algo.overlong.penalty_factor", "must be ≥ 0", o.penalty_factor)


def _check_batches(c: Config) -> None:
    d, r, a = c.data, c.rollout, c.actor
    _require(d.train_batch_size >= 1, "data.train_batch_size", "must be ≥ 1", d.train_batch_size)
    _require(d.gen_batch_size >= 1, "data.gen_batch_size", "must be ≥ 1", d.gen_batch_size)
    _require(r.group_size >= 1, "rollout.group_size", "must be ≥ 1", r.group_size)
    if c.algo.adv_estimator != "gae":
        _require(
            r.group_size >= 2,
            "rollout.group_size",
            f"group-relative advantages ({c.algo.adv_estimator}) need at least 2 responses per prompt",
            r.group_size,
        )
    if not c.algo.dynamic_sampling.enable:
        _require(
            d.gen_batch_size >= d.train_batch_size,
            "data.gen_batch_size",
            f"without dynamic sampling one round must fill the batch (≥ data.train_batch_size = {d.train_batch_size})",
            d.gen_batch_size,
        )
    _require(a.mini_batch_size >= 1, "actor.mini_batch_size", "must be ≥ 1", a.mini_batch_size)
    _require(
        a.mini_batch_size <= d.train_batch_size,
        "actor.mini_batch_size",
        f"a mini-batch cannot be larger than the batch (data.train_batch_size = {d.train_batch_size})",
        a.mini_batch_size,
    )
    _require(
        d.train_batch_size % a.mini_batch_size == 0,
        "actor.mini_batch_size",
        f"must divide data.train_batch_size ({d.train_batch_size}) so every optimiser step has the same size",
        a.mini_batch_size,
    )
    _require(a.ppo_epochs >= 1, "actor.ppo_epochs", "must be ≥ 1", a.ppo_epochs)
    _require(r.max_response_length >= 1, "rollout.max_response_length", "must be ≥ 1", r.max_response_length)
    rows = r.max_rows_in_flight
    _require(rows >= 0, "rollout.max_rows_in_flight", "must be ≥ 0 (0 = from memory)", rows)
    _require(d.max_prompt_length >= 1, "data.max_prompt_length", "must be ≥ 1", d.max_prompt_length)
    _require(d.val_size is None or d.val_size >= 1, "data.val_size", "must be ≥ 1 (or null: the default)", d.val_size)
    per_file = d.val_size_per_file
    _require(per_file is None or per_file >= 1, "data.val_size_per_file", "must be ≥ 1 (or null: all)", per_file)
    longest = d.max_prompt_length + r.max_response_length
    _require(
        a.micro_batch_max_tokens >= longest,
        "actor.micro_batch_max_tokens",
        f"must hold one full sequence (max_prompt_length + max_response_length = {longest})",
        a.micro_batch_max_tokens,
    )
    ds = c.algo.dynamic_sampling
    _require(
        ds.max_gen_batches >= 0,
        "algo.dynamic_sampling.max_gen_batches",
        "must be ≥ 0 (0 = unlimited)",
        ds.max_gen_batches,
    )
    _require(
        not ds.stop_when_full or rows > 0,
        "rollout.max_rows_in_flight",
        "must be > 0 with algo.dynamic_sampling.stop_when_full=true (it sets the wave a round can stop after)",
        rows,
    )


def _check_sampling(c: Config) -> None:
    r = c.rollout
    _require(
        r.temperature > 0.0, "rollout.temperature", "must be > 0 for training (sampling, not greedy)", r.temperature
    )
    _require(0.0 < r.top_p <= 1.0, "rollout.top_p", "must be in (0, 1]", r.top_p)
    _require(r.top_k >= 0, "rollout.top_k", "must be ≥ 0 (0 = off)", r.top_k)
    _require(r.val_temperature >= 0.0, "rollout.val_temperature", "must be ≥ 0 (0 = greedy)", r.val_temperature)
    _require(0.0 < r.val_top_p <= 1.0, "rollout.val_top_p", "must be in (0, 1]", r.val_top_p)
    _require(r.val_n >= 1, "rollout.val_n", "must be ≥ 1", r.val_n)


def _check_engine_parallelism(c: Config) -> None:
    ro, tp = c.rollout, c.rollout.tensor_parallel_size
    _require(0.0 < ro.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization", "must be in (0, 1]",
             ro.gpu_memory_utilization)  # fmt: skip
    _require(ro.max_num_batched_tokens >= 0, "rollout.max_num_batched_tokens", "must be ≥ 0 (0 = vLLM's default)",
             ro.max_num_batched_tokens)  # fmt: skip
    _require(
        ro.weight_sync_bucket_mb >= 1, "rollout.weight_sync_bucket_mb", "must be ≥ 1 (MB)", ro.weight_sync_bucket_mb
    )
    _require(ro.kv_cache_gb >= 0.0, "rollout.kv_cache_gb", "must be ≥ 0 (0 = from gpu_memory_utilization)",
             ro.kv_cache_gb)  # fmt: skip
    _require(tp >= 1, "rollout.tensor_parallel_size", "must be ≥ 1", tp)
    _require(ro.sleep_level in (0, 1, 2), "rollout.sleep_level", "must be 0, 1 or 2", ro.sleep_level)
    if ro.sleep_level:  # the built-in engine holds nothing of its own to give back
        _require(ro.engine == "vllm", "rollout.sleep_level", "> 0 needs rollout.engine=vllm", ro.sleep_level)
    if tp > 1:
        _require(ro.engine == "vllm", "rollout.tensor_parallel_size", "> 1 needs rollout.engine=vllm", tp)
        split = c.trainer.backend == "ray" and c.ray.rollout_workers > 0 and c.ray.placement == "split"
        _require(
            split, "rollout.tensor_parallel_size",
            "> 1 needs Ray rollout workers with GPUs of their own: trainer.backend=ray, ray.rollout_workers ≥ 1, "
            "ray.placement=split (a colocated engine lives in one training rank's bundle, one GPU)", tp,
        )  # fmt: skip
        _require(
            c.ray.gpus_per_rollout_worker == tp, "ray.gpus_per_rollout_worker",
            f"must equal rollout.tensor_parallel_size ({tp}): the engine's GPUs are its worker's",
            c.ray.gpus_per_rollout_worker,
        )  # fmt: skip


def _check_optim(c: Config) -> None:
    a = c.actor
    _require(a.lr > 0.0, "actor.lr", "must be > 0", a.lr)
    _require(a.lr_warmup_steps >= 0, "actor.lr_warmup_steps", "must be ≥ 0", a.lr_warmup_steps)
    _require(a.grad_clip > 0.0, "actor.grad_clip", "must be > 0", a.grad_clip)
    _require(0.0 <= a.min_lr_ratio <= 1.0, "actor.min_lr_ratio", "must be in [0, 1]", a.min_lr_ratio)
    _require(c.trainer.total_steps >= 0, "trainer.total_steps", "must be ≥ 0", c.trainer.total_steps)
    _require(c.trainer.keep_last >= 1, "trainer.keep_last", "must be ≥ 1", c.trainer.keep_last)
    _require(
        c.trainer.checkpoint_format in CHECKPOINT_FORMATS, "trainer.checkpoint_format",
        f"must be one of {', '.join(CHECKPOINT_FORMATS)}", c.trainer.checkpoint_format,
    )  # fmt: skip
    if c.algo.loss_agg_mode == "seq-mean-token-sum-norm" and c.algo.loss_norm_length is not None:
        _require(c.algo.loss_norm_length > 0, "algo.loss_norm_length", "must be > 0", c.algo.loss_norm_length)


_CHECKS: tuple[Callable[[Config], None], ...] = (
    _check_choices,
    _check_clip,
    _check_overlong,
    _check_batches,
    _check_sampling,
    _check_optim,
)
