"""Presets: plain functions that return a full `Config`, by name in `PRESETS` (`dapo presets` lists them).

`dapo` is the paper's / verl's run, `grpo`, `dr_grpo` and `ppo` the other algorithms at its scale, and the
`cpu_*` presets the same algorithms sized for a 2-core CPU. The paper's Table 1 ladder, naive GRPO plus one
technique per rung, is ONE table (`ABLATION_RUNGS`: rung, the step that adds it, the paper's AIME 2024 avg@32)
from which both ladders' presets (`ablation_<rung>` at the paper's scale, `cpu_ablation_<rung>` at CPU scale),
`dapo ablate`'s ladders and its Table 1 column are generated (`dapo.ablation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dapo.config.schema import (
    ActorConfig,
    AlgoConfig,
    Config,
    ConfigError,
    DataConfig,
    DynamicSamplingConfig,
    ModelConfig,
    OverlongConfig,
    RolloutConfig,
    TrainerConfig,
    WarmStartConfig,
)


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
        val_temperature=1.0, val_top_p=0.7, val_n=32,  # AIME 2024 avg@32: 30 problems (deduplicated) x 32 samples
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


# ----------------------------------------------------------------------------- the ablation ladder (Table 1)
# Each step adds one rung's technique to the rung below; the first line of its docstring names it in the
# presets' descriptions.


def _naive_grpo(c: Config) -> None:
    """naive GRPO

    The ladder's base: the base preset already is naive GRPO (`_paper_grpo_base`, `_cpu_ablation_base`)."""


def _overlong_filtering(c: Config) -> None:
    """overlong filtering"""
    c.algo.overlong.filter = True


def _clip_higher(c: Config) -> None:
    """clip higher"""
    c.algo.clip_eps_high = 0.28


def _soft_overlong(c: Config) -> None:
    """soft overlong"""
    c.algo.overlong.enable = True
    c.algo.overlong.buffer_length = c.rollout.max_response_length // 5  # the paper's L_cache: 4096 of 20480
    c.algo.overlong.penalty_factor = 1.0


def _token_level_loss(c: Config) -> None:
    """token level loss"""
    c.algo.loss_agg_mode = "token-mean"


def _dynamic_sampling(c: Config) -> None:
    """dynamic sampling + no KL

    The paper's last row is DAPO, which has no KL term (§2.3), so this rung also drops the KL loss that naive
    GRPO keeps (docs/algorithms.md). Dual clip stays off, as in naive GRPO."""
    c.algo.dynamic_sampling = DynamicSamplingConfig(enable=True, metric="acc", max_gen_batches=10, keep_surplus=False)
    c.data.gen_batch_size = 3 * c.data.train_batch_size
    c.algo.use_kl_loss = False


def _legacy_token_mean(c: Config) -> None:
    """verl's legacy token mean (token-mean-legacy) instead of the exact one, micro-batches of one longest sequence"""
    c.algo.loss_agg_mode = "token-mean-legacy"
    # Micro-batches of one longest sequence, as verl's DAPO recipe (ppo_max_token_len_per_gpu = max prompt +
    # max response): the legacy mean depends on the split, and in one large micro-batch it IS the token mean.
    c.actor.micro_batch_max_tokens = c.data.max_prompt_length + c.rollout.max_response_length


def _group_token_mean(c: Config) -> None:
    """the per-group token mean (group-token-mean, Eq. 8 literally) instead of the mini-batch one"""
    c.algo.loss_agg_mode = "group-token-mean"


@dataclass(frozen=True)
class AblationRung:
    """One row of the paper's Table 1."""

    name: str
    """the technique the rung adds; its presets are `ablation_<name>` and `cpu_ablation_<name>`"""
    step: Callable[[Config], None]
    """what the rung changes on the config of the rung below"""
    paper_aime: int
    """the paper's AIME 2024 avg@32 for this row"""


# The one table of the ladder: presets, `dapo ablate`'s ladders and its Table 1 column all come from it.
ABLATION_RUNGS: tuple[AblationRung, ...] = (
    AblationRung("naive_grpo", _naive_grpo, 30),
    AblationRung("overlong_filtering", _overlong_filtering, 36),
    AblationRung("clip_higher", _clip_higher, 38),
    AblationRung("soft_overlong", _soft_overlong, 41),
    AblationRung("token_level_loss", _token_level_loss, 42),
    AblationRung("dynamic_sampling", _dynamic_sampling, 50),
)
# The preset-name prefix of each ladder (`dapo ablate --ladder`).
ABLATION_PREFIXES: dict[str, str] = {"cpu": "cpu_ablation_", "paper": "ablation_"}

# The steps from naive GRPO to the ladder's last rung: DAPO's techniques plus overlong filtering, without dual
# clip (it stays off, as in naive GRPO; `dapo()` has dual_clip_c=10).
_LAST_RUNG = tuple(rung.step for rung in ABLATION_RUNGS)


def ablation_ladder(ladder: str) -> tuple[str, ...]:
    """The preset names of a ladder (`cpu` or `paper`), from naive GRPO to the last rung."""
    return tuple(ABLATION_PREFIXES[ladder] + rung.name for rung in ABLATION_RUNGS)


def _label(step: Callable[[Config], None]) -> str:
    return (step.__doc__ or step.__name__).strip().splitlines()[0]


def _ablation(
    scale: str, base: Callable[[], Config], steps: tuple[Callable[[Config], None], ...]
) -> Callable[[], Config]:
    """A preset: `base()` with `steps` applied in order, described by their labels."""

    def preset() -> Config:
        c = base()
        for step in steps:
            step(c)
        return c

    described = " + ".join(_label(s) for s in steps)
    if steps == _LAST_RUNG:
        described += (
            " (DAPO's techniques plus overlong filtering, without dual clip: dapo() and cpu_dapo() have dual_clip_c=10)"
        )
    preset.__doc__ = f"{scale} ablation rung: {described}"
    return preset


def _variant(step: Callable[[Config], None]) -> Callable[[], Config]:
    """The CPU ladder's last rung with one more step: the other meanings of "token-level loss"."""
    preset = _ablation("CPU", _cpu_ablation_base, (*_LAST_RUNG, step))
    preset.__doc__ = f"CPU ablation variant: the last rung (cpu_ablation_dynamic_sampling) with {_label(step)}"
    return preset


def _ladder(scale: str, base: Callable[[], Config]) -> dict[str, Callable[[], Config]]:
    prefix = ABLATION_PREFIXES[scale.lower()]
    return {prefix + r.name: _ablation(scale, base, _LAST_RUNG[: i + 1]) for i, r in enumerate(ABLATION_RUNGS)}


PRESETS: dict[str, Callable[[], Config]] = {
    "cpu_dapo": cpu_dapo,
    "cpu_grpo": _cpu_scale(grpo, "grpo-cpu"),
    "cpu_drgrpo": _cpu_scale(dr_grpo, "drgrpo-cpu"),
    "cpu_ppo": _cpu_scale(ppo, "ppo-cpu"),
    "dapo": dapo,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "ppo": ppo,
    # The paper's progressive ablation (Table 1), whose first rung is the `grpo` preset itself.
    **(_ladder("Paper", _paper_grpo_base) | {"ablation_naive_grpo": grpo}),
    # The same ladder at CPU scale (`dapo ablate --ladder cpu`; docs/ablation/).
    **_ladder("CPU", _cpu_ablation_base),
    # The last rung with the two other meanings of "token-level loss" (docs/algorithms.md): the report's extra rows.
    "cpu_ablation_legacy_token_mean": _variant(_legacy_token_mean),
    "cpu_ablation_group_token_mean": _variant(_group_token_mean),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
