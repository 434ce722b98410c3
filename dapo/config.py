"""The run configuration: nested dataclasses, the single source of truth for a run.

Every field has a docstring underneath it (unit, paper value, verl key). Presets are plain functions that
return a full `Config`; `load_config` applies a YAML file and dotted command-line overrides on top of a
preset, and `Config.validate` rejects invalid settings at start with the field and the rule.

Batch sizes are counted in PROMPTS (groups) where they are algorithmic, as in verl:
`data.train_batch_size` groups of `rollout.group_size` responses make one training step, split into
`train_batch_size / actor.mini_batch_size` optimiser steps.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from dapo.algo import ADVANTAGE_ESTIMATORS, AGGREGATION_MODES, KL_ESTIMATORS, ROLLOUT_IS_LEVELS, ROLLOUT_IS_MODES
from dapo.data.tasks import BUILTIN_TASKS, LEVELS
from dapo.errors import DapoError


class ConfigError(DapoError, ValueError):
    """An invalid setting; the message names the field and the rule it breaks."""


@dataclass
class LoraConfig:
    rank: int = 0
    """r of the LoRA adapters (PEFT); 0 = full fine-tuning"""
    alpha: float = 16.0
    """α: the adapters' update is scaled by α / r"""
    dropout: float = 0.0
    """dropout on the adapters' input"""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """names of the linear layers that get adapters (Llama / Qwen2 names)"""
    export: str = "merged"
    """what `dapo train` exports as the policy: merged (a plain HF model) | adapter (PEFT's format)"""


@dataclass
class WarmStartConfig:
    steps: int = 1000
    """supervised optimiser steps on the built-in task"""
    shortcut_rate: float = 0.5
    """share of demonstrations that give the bare answer ("Answer: N") instead of the worked solution"""
    repeat_rate: float = 0.0
    """share of demonstrations that write their steps 2-3 times over before the answer (a repetition loop
    that runs past a short response cap: the CPU ablation's base, docs/ablation/README.md)"""


@dataclass
class ModelConfig:
    path: str = "builtin:tiny-1m"
    """Hugging Face model: a local directory, a hub id (needs network), or `builtin:tiny-<size>` for the tiny
    model built in code (sizes 1m, 5m, 20m) and warm-started with `dapo sft` on the built-in task."""
    tokenizer_path: str | None = None
    """tokenizer directory or hub id; None = same as `path`"""
    gguf_file: str | None = None
    """GGUF file name inside `path` (e.g. SmolLM2-135M-Instruct.Q4_1.gguf); dequantised on load"""
    dtype: str = "float32"
    """parameter dtype of the trained model: float32 | bfloat16"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (model.lora.rank > 0; needs the lora extra)"""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """the recipe that warm-starts a `builtin:tiny-<size>` model (`dapo sft`); ignored for other models"""


@dataclass
class DataConfig:
    task: str | None = "arith"
    """built-in synthetic task used when `train_files` is empty: `arith` (multi-step arithmetic as "Compute
    3+4*2-5", for the tiny char-level model) | `arith_chat` (the same problems as a chat: one worked example
    turn, then "What is 3 + 4 * 2 - 5?", for a pretrained chat model such as SmolLM2)"""
    task_level: int | list[int] = 2
    """difficulty of the built-in task (dapo.data.tasks.LEVELS, 1-5); a list such as [1, 2] mixes levels"""
    train_files: list[str] = field(default_factory=list)
    """verl-schema parquet or jsonl files to train on (e.g. ../shared/data/dapo-math-17k.parquet)"""
    val_files: list[str] = field(default_factory=list)
    """held-out sets evaluated on `trainer.test_freq`"""
    prompt_template: str | None = None
    """None, or `dapo` to wrap raw problems in the DAPO prompt (never applied twice)"""
    max_prompt_length: int = 64
    """prompt budget in tokens (verl data.max_prompt_length; paper run: 2048)"""
    truncation: str = "left"
    """what to do with longer prompts: left (keep the end, verl) | drop | error"""
    dedup: bool = True
    """drop rows whose prompt text repeats (the upstream DAPO-Math-17K is ~100x duplicated)"""
    skip_bad_rows: bool = False
    """skip malformed rows (counted and reported) instead of failing on the first one"""
    train_batch_size: int = 16
    """prompts (groups) per training step after dynamic sampling (verl data.train_batch_size; paper: 512)"""
    gen_batch_size: int = 16
    """prompts drawn per generation round (verl data.gen_batch_size; paper run: 1536 = 3 x 512)"""
    val_size: int | None = None
    """held-out prompts: the built-in task draws this many (None = 200); with `val_files`, a seeded subset of
    this many of their prompts (None = all of them)"""
    val_size_per_file: int | None = None
    """a seeded subset of this many prompts from EACH of `val_files` (None = all), so that one evaluation over
    benchmarks of different sizes (AIME's 30 problems, GSM8K's 1,319) weighs them alike; `val_size` then
    applies to what is left"""
    default_data_source: str | None = None
    """data source (reward routing, docs/rewards.md) of rows that carry none and whose file name names none,
    e.g. `aime` for a competition set such as hmmt_feb_test.jsonl"""
    seed: int = 1
    """seed of the prompt sampler's shuffling"""


@dataclass
class RewardConfig:
    custom_function: str | None = None
    """your own reward: "module:function" or "path/file.py:function", either verl's
    compute_score(data_source, solution_str, ground_truth, extra_info) or TRL's batched
    fn(prompts, completions, **columns); None = route by data_source (docs/rewards.md)"""
    scorer_mode: str = "default"
    """DAPO "Answer:" scorer: default (never accepts a wrong answer; fixes verl's false negatives) | verl (verl's
    verdict, verdict for verdict)"""
    on_error: str = "raise"
    """a reward function that raises: raise (stop, naming the sample) | score_as_failure (−1, counted)"""
    num_workers: int = 0
    """worker processes for symbolic (math-verify) checks; 0 = one worker, started when first needed"""


@dataclass
class RolloutConfig:
    engine: str = "builtin"
    """builtin (KV-cached batched sampler, CPU default) | vllm"""
    group_size: int = 8
    """G, responses sampled per prompt (verl rollout.n; paper: 16)"""
    max_response_length: int = 48
    """L_max, the generation cap in tokens, EOS included (paper: 20480)"""
    temperature: float = 1.0
    """training sampling temperature (paper/verl: 1.0)"""
    top_p: float = 1.0
    """training nucleus sampling (verl: 1.0)"""
    top_k: int = 0
    """training top-k; 0 = off (verl: -1)"""
    val_temperature: float = 1.0
    """validation temperature (paper: 1.0)"""
    val_top_p: float = 0.7
    """validation top-p (paper: 0.7)"""
    val_n: int = 4
    """samples per validation prompt: avg@k, pass@k and maj@k use k = val_n"""
    dtype: str = "float32"
    """the engine's weights: float32 (the built-in engine then shares the trained module in one process) |
    bfloat16 (its own bf16 copy, refreshed after every update; vLLM's dtype). π_old is then recomputed, and
    the mismatch is logged (training/rollout_probs_diff_*); algo.rollout_correction corrects for it"""
    max_rows_in_flight: int = 0
    """rows (prompt x sample) the built-in engine decodes at once; larger requests (an evaluation of
    thousands of prompts) run in waves of whole prompts. 0 = as many as a quarter of this machine's memory
    holds (KV cache + logits per row)"""


@dataclass
class OverlongConfig:
    enable: bool = True
    """soft overlong punishment, DAPO Eq. 13 (verl reward_model.overlong_buffer.enable)"""
    buffer_length: int = 16
    """L_cache in tokens (paper: 4096)"""
    penalty_factor: float = 1.0
    """scales the penalty (verl overlong_buffer.penalty_factor; paper: 1.0)"""
    filter: bool = False
    """overlong filtering: truncated responses get no loss (paper §3.4; not in verl's recipe)"""


@dataclass
class DynamicSamplingConfig:
    enable: bool = True
    """drop groups whose metric is all equal and draw again until the batch is full (DAPO §3.2, Eq. 11)"""
    metric: str = "acc"
    """per-response metric to filter on: acc (binary accuracy, verl DAPO) | score (rule score) | reward (shaped)"""
    max_gen_batches: int = 10
    """cap on generation rounds per training step, 0 = unlimited (verl filter_groups.max_num_gen_batches)"""
    keep_surplus: bool = True
    """keep informative groups beyond the batch for the next step (Algorithm 1's buffer); False = discard (verl)"""
    stop_when_full: bool = False
    """score each wave of rollout.max_rows_in_flight rows as it arrives and stop the round at the first wave
    that fills the batch; the prompts not generated start the next round (verl generates whole rounds)"""


@dataclass
class RolloutCorrectionConfig:
    level: str = "off"
    """importance weights ρ = π_old / π_rollout on the surrogate, for a rollout engine whose numerics differ
    from the trainer's (vLLM, bf16): off | token | sequence (ρ of the whole response)"""
    mode: str = "truncate"
    """truncate: w = min(ρ, cap) (TIS) | mask: w = ρ below the cap, 0 above"""
    cap: float = 2.0
    """C of the truncation or mask (verl and TRL use 2)"""


@dataclass
class AlgoConfig:
    adv_estimator: str = "grpo"
    """grpo (group mean/std, DAPO Eq. 9) | drgrpo (mean only) | rloo (leave-one-out) | gae (PPO, needs a critic)"""
    adv_eps: float = 1e-6
    """ε added to the group std (verl: 1e-6)"""
    gamma: float = 1.0
    """GAE discount γ (DAPO Eq. 2-3)"""
    lam: float = 1.0
    """GAE λ"""
    whiten_advantages: bool = True
    """whiten GAE advantages over the batch (PPO practice; group estimators are never whitened)"""
    clip_eps_low: float = 0.2
    """ε_low of the ratio clip (DAPO Eq. 10; paper 0.2)"""
    clip_eps_high: float = 0.28
    """ε_high of the ratio clip, Clip-Higher (DAPO Eq. 10; paper 0.28, PPO/GRPO 0.2)"""
    dual_clip_c: float | None = 10.0
    """dual-clip bound c > 1 for negative advantages, None = off (verl clip_ratio_c; DAPO scripts: 10)"""
    log_ratio_clamp: float | None = 20.0
    """clamp log π/π_old to ±this before exp() (verl HEAD: 20)"""
    loss_agg_mode: str = "token-mean"
    """token-mean (DAPO Eq. 12) | seq-mean-token-mean (GRPO) | seq-mean-token-sum | seq-mean-token-sum-norm
    (Dr. GRPO) | group-token-mean (Eq. 8 literally)"""
    loss_norm_length: int | None = None
    """L of seq-mean-token-sum-norm; None = rollout.max_response_length"""
    use_kl_loss: bool = False
    """add β·KL(π_θ‖π_ref) to the loss (GRPO); needs a frozen reference model"""
    kl_loss_coef: float = 0.001
    """β of the KL loss (verl kl_loss_coef: 0.001)"""
    kl_loss_type: str = "k3"
    """KL estimator of the loss: k1 | abs | k2 | k3 (verl low_var_kl = k3)"""
    use_kl_in_reward: bool = False
    """subtract β·KL from the per-token reward (InstructGPT-style PPO)"""
    kl_reward_coef: float = 0.001
    """initial β of the in-reward KL"""
    kl_reward_type: str = "k1"
    """KL estimator in the reward"""
    kl_ctrl: str = "fixed"
    """in-reward KL coefficient: fixed | adaptive (Ziegler et al. 2019)"""
    kl_target: float = 0.1
    """target KL of the adaptive controller"""
    kl_horizon: int = 10000
    """horizon of the adaptive controller, in samples"""
    entropy_coeff: float = 0.0
    """entropy bonus coefficient (DAPO: 0)"""
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    """overlong reward shaping (DAPO §3.4)"""
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    """dynamic sampling (DAPO §3.2)"""


@dataclass
class ActorConfig:
    lr: float = 1e-4
    """AdamW learning rate (paper: 1e-6 for 32B; 1e-4 suits the 1M-parameter CPU default)"""
    lr_warmup_steps: int = 2
    """linear warm-up in TRAINING steps (verl DAPO: 10, paper: 20)"""
    lr_schedule: str = "constant"
    """constant (after warm-up; verl) | cosine (to min_lr_ratio at trainer.total_steps)"""
    min_lr_ratio: float = 0.0
    """final lr / lr of the cosine schedule"""
    weight_decay: float = 0.1
    """AdamW weight decay (verl DAPO: 0.1)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas"""
    grad_clip: float = 1.0
    """max global grad norm; a non-finite norm skips the step (verl: 1.0)"""
    mini_batch_size: int = 4
    """prompts per optimiser step (verl ppo_mini_batch_size; paper: 32 -> 16 updates per step)"""
    ppo_epochs: int = 1
    """passes over the batch per training step"""
    micro_batch_max_tokens: int = 8192
    """token budget of one forward/backward micro-batch (verl ppo_max_token_len_per_gpu): rows x longest
    row with the HF forward, distinct prompts + responses with share_prompt_forward"""
    share_prompt_forward: bool = True
    """compute each prompt once for all its responses, on packed tokens, in every log-prob pass, the update
    and the critic (Llama/Qwen2 models; checked against the model's own forward at start, used otherwise):
    the same logits and gradients up to float rounding, without G-1 of every G prompt copies and without
    padding (2.1x fewer tokens on the trainer benchmark's batches)"""
    precision: str = "fp32"
    """compute precision of the training forward and backward (policy, reference, critic): fp32 |
    bf16-mixed (bf16 autocast over float32 master weights; gradients, optimiser state, log-probs, KL, entropy
    and every reduction stay float32). bf16-mixed turns reuse_rollout_logprobs off: the float32 engine's
    log-probs are no longer the trainer's"""
    reuse_rollout_logprobs: bool = True
    """take π_old from the log-probs the built-in engine computed while sampling, instead of a recomputing
    pass, when they are the training model's own: same module, float32, rollout.temperature = 1, every
    group sampled this step (else recompute, as verl). Equal up to float rounding (~1e-6)"""
    shuffle: bool = False
    """shuffle sequences between mini-batches (verl: False)"""
    skip_zero_advantage_rows: bool = True
    """skip the forward/backward of responses whose advantage is 0 at every token when no KL or entropy
    loss term is on: exact (their gradient is 0 and the token-mean still counts their tokens), and
    actor/entropy, clip fractions and ppo_kl are then measured over the computed responses only"""


@dataclass
class CriticConfig:
    lr: float = 1e-4
    """critic AdamW learning rate (PPO only)"""
    value_clip: float | None = 0.5
    """clip range of the value loss, None = unclipped (verl cliprange_value: 0.5)"""
    warmup_steps: int = 0
    """training steps that update only the critic before the actor starts"""
    weight_decay: float = 0.0
    """critic AdamW weight decay"""
    grad_clip: float = 1.0
    """critic max grad norm"""


@dataclass
class TrainerConfig:
    total_steps: int = 100
    """training steps (a step = one batch of train_batch_size informative groups)"""
    seed: int = 0
    """global seed: model init, sampling, shuffling"""
    output_dir: str = "runs"
    """runs are written to <output_dir>/<run_name>"""
    run_name: str = "dapo-cpu"
    """name of this run (directory, TensorBoard, W&B)"""
    save_freq: int = 10
    """checkpoint every N steps (and at the end); 0 = only at the end"""
    keep_last: int = 2
    """checkpoints kept on disk"""
    resume: str = "auto"
    """auto (latest checkpoint of this run if any) | disable | a path to a global_step_N directory"""
    accept_config_changes: bool = False
    """allow resuming with a config that differs from the saved one (the differences are printed)"""
    test_freq: int = 20
    """evaluate every N steps; 0 = never (also before training and at the end, if val data exists)"""
    val_before_train: bool = True
    """evaluate before the first step"""
    num_threads: int = 2
    """torch CPU threads"""
    device: str = "cpu"
    """cpu | cuda"""
    gpu_memory_gb: float = 80.0
    """memory of each GPU: what `dapo train --dry-run` checks a GPU recipe's plan against"""
    tensorboard: bool = True
    """write TensorBoard event files"""
    wandb_project: str | None = None
    """log to Weights & Biases under this project (needs the wandb extra)"""
    progress: bool = True
    """live progress bar"""
    backend: str = "local"
    """where the policy (and reference, critic) train: local (this process) | ray (data-parallel ranks on a
    Ray cluster, torch.distributed inside; see the ray section and docs/distributed.md)"""


@dataclass
class RayConfig:
    """The Ray cluster (trainer.backend=ray). The policy, reference and critic share one worker group of
    data-parallel ranks (colocated, as verl's default); generation and the reward step run in the driver or
    on actors of their own (rollout_workers, reward_workers)."""

    address: str = ""
    """empty = start a local, loopback-only cluster for this run; `auto` or `host:port` = join a running one
    (`ray start --head` on the head node)"""
    train_workers: int = 1
    """data-parallel training ranks (actors), one torch.distributed process group"""
    cpus_per_worker: float = 1.0
    """CPUs reserved per rank (its torch threads); one placement-group bundle each"""
    gpus_per_worker: float = 0.0
    """GPUs per rank; > 0 uses NCCL instead of gloo"""
    strategy: str = "ddp"
    """ddp (every rank holds the whole model and optimiser state) | fsdp2 (fully_shard: parameters,
    gradients and optimiser state sharded over the ranks; bf16-mixed uses its MixedPrecisionPolicy)"""
    collective_timeout_s: float = 120.0
    """a rank that waits longer than this in a collective (a peer died or hangs) raises instead of waiting
    for gloo's default of 30 minutes"""
    startup_timeout_s: float = 120.0
    """how long to wait for the cluster to grant the ranks' resources before failing with what is missing"""
    rollout_workers: int = 0
    """generation actors, each with its own engine (rollout.engine) and copy of the weights; 0 = the engine
    runs in the driver. Set rollout.max_rows_in_flight to make a seeded run's tokens independent of this"""
    placement: str = "colocated"
    """colocated: rollout workers share the training ranks' bundles (the two phases alternate, as in verl's
    hybrid engine; at most ray.train_workers of them) | split: rollout workers get resources of their own"""
    cpus_per_rollout_worker: float = 1.0
    """CPUs per rollout worker (split placement; colocated ones use the rank's)"""
    gpus_per_rollout_worker: float = 0.0
    """GPUs per rollout worker (split placement)"""
    max_rollout_restarts: int = 2
    """rollout worker deaths survived per run (the worker is restarted and its prompts generated again,
    counted in rollout/worker_restarts); one more stops the run. Also the restarts of each reward worker"""
    reward_workers: int = 0
    """scoring actors, each with the run's reward function; a batch is scored in K chunks at once. 0 = the
    reward step runs in the driver. Worth it for slow scorers (a custom function calling a sandbox or judge)"""
    cpus_per_reward_worker: float = 1.0
    """CPUs per reward worker"""


@dataclass
class Config:
    """A complete run. Build with a preset function, then `load_config` applies YAML and overrides."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def uses_critic(self) -> bool:
        return self.algo.adv_estimator == "gae"

    @property
    def uses_reference(self) -> bool:
        return self.algo.use_kl_loss or self.algo.use_kl_in_reward

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)

    def validate(self) -> Config:
        """Raise ConfigError naming the first field that breaks a rule; return self when all hold."""
        for check in _CHECKS:
            check(self)
        return self


# ----------------------------------------------------------------------------- validation rules


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


def _check_optim(c: Config) -> None:
    a = c.actor
    _require(a.lr > 0.0, "actor.lr", "must be > 0", a.lr)
    _require(a.lr_warmup_steps >= 0, "actor.lr_warmup_steps", "must be ≥ 0", a.lr_warmup_steps)
    _require(a.grad_clip > 0.0, "actor.grad_clip", "must be > 0", a.grad_clip)
    _require(0.0 <= a.min_lr_ratio <= 1.0, "actor.min_lr_ratio", "must be in [0, 1]", a.min_lr_ratio)
    _require(c.trainer.total_steps >= 0, "trainer.total_steps", "must be ≥ 0", c.trainer.total_steps)
    _require(c.trainer.keep_last >= 1, "trainer.keep_last", "must be ≥ 1", c.trainer.keep_last)
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


# ----------------------------------------------------------------------------- presets


def cpu_dapo() -> Config:
    """DAPO on the built-in arithmetic task with the tiny model: the README's main command (~minutes on 2 cores).

    Same algorithm as `dapo()` (Clip-Higher 0.2/0.28, token-mean, dynamic sampling on acc, soft overlong
    punishment, no KL); only the sizes shrink to fit a CPU.
    """
    return Config()


def dapo() -> Config:
    """The paper's / verl's DAPO run (Qwen2.5-32B base on DAPO-Math-17K; AIME 2024 avg@32 = 50)."""
    c = Config()
    c.model = ModelConfig(path="Qwen/Qwen2.5-32B", dtype="bfloat16")
    c.data = DataConfig(
        task=None,
        train_files=["../shared/data/dapo-math-17k.parquet"],
        val_files=["../shared/data/aime-2024.parquet"],
        prompt_template="dapo",
        max_prompt_length=2048,
        train_batch_size=512,
        gen_batch_size=1536,
    )
    c.rollout = RolloutConfig(
        engine="vllm", group_size=16, max_response_length=20480, temperature=1.0, top_p=1.0,
        val_temperature=1.0, val_top_p=0.7, val_n=1,
    )  # fmt: skip
    c.algo = AlgoConfig(
        adv_estimator="grpo", clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=10.0, loss_agg_mode="token-mean",
        overlong=OverlongConfig(enable=True, buffer_length=4096, penalty_factor=1.0, filter=False),
        dynamic_sampling=DynamicSamplingConfig(enable=True, metric="acc", max_gen_batches=10, keep_surplus=False),
    )  # fmt: skip
    c.actor = ActorConfig(
        lr=1e-6, lr_warmup_steps=10, lr_schedule="constant", weight_decay=0.1, grad_clip=1.0, mini_batch_size=32,
        ppo_epochs=1, micro_batch_max_tokens=22528,
    )  # fmt: skip
    c.trainer = TrainerConfig(total_steps=400, save_freq=5, test_freq=5, run_name="dapo-qwen2.5-32b", device="cuda")
    return c


def _paper_grpo_base() -> Config:
    """The paper's naive GRPO baseline at the DAPO run's scale (Table 1, first row: AIME 30)."""
    c = dapo()
    c.algo = AlgoConfig(
        adv_estimator="grpo", clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=None,
        loss_agg_mode="seq-mean-token-mean", use_kl_loss=True, kl_loss_coef=0.001, kl_loss_type="k3",
        overlong=OverlongConfig(enable=False, filter=False),
        dynamic_sampling=DynamicSamplingConfig(enable=False),
    )  # fmt: skip
    c.data.gen_batch_size = c.data.train_batch_size
    c.trainer.run_name = "grpo-qwen2.5-32b"
    return c


def grpo() -> Config:
    """GRPO as DeepSeekMath defines it: ε = 0.2 both sides, sample-level loss, k3 KL to a frozen reference.

    This is also the first row of the paper's ablation ladder ("naive GRPO", Table 1). The paper does not
    say whether its naive GRPO kept the KL term; we keep it (β = 0.001, verl's default), because that is
    GRPO as defined, and DAPO §2.3 presents removing KL as one of its changes.
    """
    return _paper_grpo_base()


def _ablation(*steps: Callable[[Config], None], base: Callable[[], Config] | None = None) -> Callable[[], Config]:
    def preset() -> Config:
        c = (base or _paper_grpo_base)()
        for step in steps:
            step(c)
        return c

    scale = "Paper" if base is None else "CPU"
    preset.__doc__ = f"{scale} ablation rung: naive GRPO" + "".join(
        " + " + s.__name__.strip("_").replace("_", " ") for s in steps
    )
    return preset


def _cpu_ablation_base() -> Config:
    """Naive GRPO in the CPU ablation's setting, where the techniques of Table 1 have room to act (why it is
    shaped so, with the pilot runs: docs/ablation/README.md): the CPU default's task, from a base whose warm
    start also taught a repetition loop (the steps written 2-3 times over), so that a tail of its responses
    runs past a 40-token cap that the worked solutions (≤ 28 tokens) never reach, as long reasoning overruns
    the paper's; two epochs over the batch, so that the ratio leaves 1; lr 3e-5, a third of the CPU
    default's, so that learning spreads over ~30 steps instead of peaking by step 10; 120 steps."""
    c = cpu_dapo()
    c.algo = _paper_grpo_base().algo
    c.model.warm_start = WarmStartConfig(steps=1500, shortcut_rate=0.5, repeat_rate=0.1)
    c.rollout.max_response_length = 40
    c.actor.ppo_epochs = 2
    c.actor.lr = 3e-5
    c.trainer.total_steps = 120
    c.trainer.test_freq = 10
    c.trainer.save_freq = 20
    c.trainer.run_name = "cpu-ablation"
    return c


def _cpu_ablation(*steps: Callable[[Config], None]) -> Callable[[], Config]:
    return _ablation(*steps, base=_cpu_ablation_base)


def _overlong_filtering(c: Config) -> None:
    c.algo.overlong.filter = True


def _clip_higher(c: Config) -> None:
    c.algo.clip_eps_high = 0.28


def _soft_overlong(c: Config) -> None:
    c.algo.overlong.enable = True
    c.algo.overlong.buffer_length = c.rollout.max_response_length // 5  # the paper's L_cache: 4096 of 20480
    c.algo.overlong.penalty_factor = 1.0


def _token_level_loss(c: Config) -> None:
    c.algo.loss_agg_mode = "token-mean"


def _dynamic_sampling(c: Config) -> None:
    c.algo.dynamic_sampling = DynamicSamplingConfig(enable=True, metric="acc", max_gen_batches=10, keep_surplus=False)
    c.data.gen_batch_size = 3 * c.data.train_batch_size


def _no_kl(c: Config) -> None:
    c.algo.use_kl_loss = False


def _legacy_token_mean(c: Config) -> None:
    c.algo.loss_agg_mode = "token-mean-legacy"
    # Micro-batches of one longest sequence, as verl's DAPO recipe (ppo_max_token_len_per_gpu = max prompt +
    # max response): the legacy mean depends on the split, and in one large micro-batch it IS the token mean.
    c.actor.micro_batch_max_tokens = c.data.max_prompt_length + c.rollout.max_response_length


def _group_token_mean(c: Config) -> None:
    c.algo.loss_agg_mode = "group-token-mean"


def dr_grpo() -> Config:
    """Dr. GRPO (arXiv:2503.20783): no std scaling, constant-normaliser loss, no KL, at the DAPO run's scale."""
    c = _paper_grpo_base()
    c.algo.adv_estimator = "drgrpo"
    c.algo.loss_agg_mode = "seq-mean-token-sum-norm"
    c.algo.use_kl_loss = False
    c.trainer.run_name = "drgrpo-qwen2.5-32b"
    return c


def ppo() -> Config:
    """PPO with GAE and a critic (DAPO Eqs. 1-3), one response per prompt, ε = 0.2, token-mean loss."""
    c = dapo()
    c.rollout.group_size = 1
    c.algo = AlgoConfig(
        adv_estimator="gae", gamma=1.0, lam=1.0, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=3.0,
        loss_agg_mode="token-mean", overlong=OverlongConfig(enable=False),
        dynamic_sampling=DynamicSamplingConfig(enable=False),
    )  # fmt: skip
    c.data.train_batch_size = 1024
    c.data.gen_batch_size = 1024
    c.actor.mini_batch_size = 256
    c.trainer.run_name = "ppo-qwen2.5-32b"
    return c


def _cpu_scale(paper: Callable[[], Config], run_name: str) -> Callable[[], Config]:
    """Keep the algorithm of a paper-scale preset, take every size from `cpu_dapo()`."""

    def preset() -> Config:
        c = cpu_dapo()
        c.algo = paper().algo
        c.algo.overlong.buffer_length = min(c.algo.overlong.buffer_length, cpu_dapo().algo.overlong.buffer_length)
        c.algo.dynamic_sampling.max_gen_batches = cpu_dapo().algo.dynamic_sampling.max_gen_batches
        c.algo.dynamic_sampling.keep_surplus = cpu_dapo().algo.dynamic_sampling.keep_surplus
        if c.algo.adv_estimator == "gae":
            c.rollout.group_size = 1
            c.data.train_batch_size = c.data.gen_batch_size = 64
            c.actor.mini_batch_size = 16
            c.algo.lam = 0.95
        c.trainer.run_name = run_name
        return c

    preset.__doc__ = (
        f"CPU-sized (tiny model, arith task) {paper.__name__}: " + (paper.__doc__ or "").strip().splitlines()[0]
    )
    return preset


# The steps from naive GRPO to the ladder's last rung (DAPO with overlong filtering).
_LAST_RUNG = (_overlong_filtering, _clip_higher, _soft_overlong, _token_level_loss, _dynamic_sampling, _no_kl)

PRESETS: dict[str, Callable[[], Config]] = {
    "cpu_dapo": cpu_dapo,
    "cpu_grpo": _cpu_scale(grpo, "grpo-cpu"),
    "cpu_drgrpo": _cpu_scale(dr_grpo, "drgrpo-cpu"),
    "cpu_ppo": _cpu_scale(ppo, "ppo-cpu"),
    "dapo": dapo,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "ppo": ppo,
    # The paper's progressive ablation (Table 1; AIME 2024 avg@32 of each row in the comment).
    "ablation_naive_grpo": grpo,  # 30
    "ablation_overlong_filtering": _ablation(_overlong_filtering),  # 36
    "ablation_clip_higher": _ablation(_overlong_filtering, _clip_higher),  # 38
    "ablation_soft_overlong": _ablation(_overlong_filtering, _clip_higher, _soft_overlong),  # 41
    "ablation_token_level_loss": _ablation(_overlong_filtering, _clip_higher, _soft_overlong, _token_level_loss),  # 42
    "ablation_dynamic_sampling": _ablation(
        _overlong_filtering, _clip_higher, _soft_overlong, _token_level_loss, _dynamic_sampling, _no_kl
    ),  # 50 (= DAPO, with overlong filtering)
    # The same ladder at CPU scale (`dapo ablate --ladder cpu`; docs/ablation/).
    "cpu_ablation_naive_grpo": _cpu_ablation(),
    "cpu_ablation_overlong_filtering": _cpu_ablation(_overlong_filtering),
    "cpu_ablation_clip_higher": _cpu_ablation(_overlong_filtering, _clip_higher),
    "cpu_ablation_soft_overlong": _cpu_ablation(_overlong_filtering, _clip_higher, _soft_overlong),
    "cpu_ablation_token_level_loss": _cpu_ablation(
        _overlong_filtering, _clip_higher, _soft_overlong, _token_level_loss
    ),
    "cpu_ablation_dynamic_sampling": _cpu_ablation(
        _overlong_filtering, _clip_higher, _soft_overlong, _token_level_loss, _dynamic_sampling, _no_kl
    ),
    # The last rung with the two other meanings of "token-level loss" (docs/algorithms.md): the report's extra rows.
    "cpu_ablation_legacy_token_mean": _cpu_ablation(*_LAST_RUNG, _legacy_token_mean),
    "cpu_ablation_group_token_mean": _cpu_ablation(*_LAST_RUNG, _group_token_mean),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------- YAML, overrides, diffs


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Convert a YAML/override value to the field's declared type, or raise ConfigError naming the field."""
    origin, args = get_origin(annotation), get_args(annotation)
    if value is None:
        if type(None) in args or annotation is Any:
            return None
        raise ConfigError(f"{path} = null: this field cannot be null")
    if origin in (list,):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} = {value!r}: expected a list")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{path} = {value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin in (types.UnionType, Union):  # X | Y: the first alternative the value fits
        for alternative in args:
            with contextlib.suppress(ConfigError):
                return _coerce(value, alternative, path)
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"{path} = {value!r}: expected {names}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r}: expected true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {value!r}: expected an integer")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} = {value!r}: expected a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} = {value!r}: expected a string")
        return value
    return value


def _apply_mapping(target: Any, values: Mapping[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(target))
    known = {f.name for f in fields(target)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown field {path!r}; {prefix or 'top level '}fields are: {', '.join(sorted(known))}")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} is a section; give a mapping of its fields, not {value!r}")
            _apply_mapping(current, value, f"{path}.")
        else:
            setattr(target, key, _coerce(value, hints[key], path))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` overrides; values are parsed as YAML (`0.28`, `true`, `null`, `[a, b]`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        dotted, raw = item.split("=", 1)
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        nested: dict[str, Any] = {}
        cursor = nested
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            cursor = cursor.setdefault(key, {})
        cursor[keys[-1]] = value
        _apply_mapping(config, nested, "")
    return config


def load_config(
    preset_name: str = "cpu_dapo", yaml_path: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Preset, then YAML file, then command-line overrides; validated."""
    config = preset(preset_name)
    if yaml_path is not None:
        text = Path(yaml_path).read_text()
        values = yaml.safe_load(text) or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{yaml_path}: the top level must be a mapping of sections")
        _apply_mapping(config, values, "")
    apply_overrides(config, overrides or [])
    return config.validate()


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Rebuild a Config saved with `to_dict` (e.g. from a checkpoint); unknown fields are errors."""
    config = Config()
    _apply_mapping(config, values, "")
    return config


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two `to_dict()` trees: ["actor.lr: 1e-05 -> 2e-05", ...]."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += config_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, docstring) of every field, read from the attribute docstrings in this file."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if is_field and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    rows = []
    instance = cls()
    for f in fields(cls):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            rows += field_docs(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(value), docs.get(f.name, "")))
    return rows
