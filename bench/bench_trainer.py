"""Seconds per RL step: our `dapo.trainer.Trainer` against TRL's `GRPOTrainer` configured as DAPO.

Both systems train the SAME model directory (a tiny char-level model built with `dapo.models`, briefly
warm-started on the built-in arith task so that responses are real worked solutions that end with EOS,
saved with `save_pretrained_pair` and loaded by both through `from_pretrained`), on the same prompts
(`dapo.data.make_arith_records`, rendered by the tokenizer's chat template in both), with the same
settings: P prompts x G responses x up to L new tokens, temperature 1, one optimiser step per RL step,
Clip-Higher (0.2 / 0.28), token-mean loss, no KL, truncated responses masked out of the loss, no
dynamic sampling (TRL has none), no overlong shaping, no validation, one thread, fp32 unless
`--precisions` names bf16 (ours `actor.precision=bf16-mixed`, TRL `bf16=True`; both given, the four runs
are interleaved).

    TRL: GRPOConfig(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0,
                    mask_truncated_completions=True, use_vllm=False, bf16=False,
                    gradient_checkpointing=False, per_device_train_batch_size=P*G, num_generations=G)
    ours: data.train_batch_size = data.gen_batch_size = actor.mini_batch_size = P, rollout.group_size = G,
          rollout.max_response_length = L, algo.overlong.filter = true, algo.overlong.enable = false,
          algo.dynamic_sampling.enable = false, trainer.num_threads = 1

What is timed:
    ours: wall time of `Trainer.train_step(step)` (everything one RL step does); phases from its
          `timing_s/*` metrics.
    TRL:  wall time between consecutive `on_step_end` callbacks of `GRPOTrainer.train` (generation,
          scoring, loss, backward, optimiser, bookkeeping); phases by wrapping its `_generate_single_turn`
          (gen), `_calculate_rewards` (reward), `_generate_and_score_completions` (everything before the
          loss: gen + reward + advantages + tokenisation) and `compute_loss` (forward + loss); backward and
          the optimiser step are the rest of the step.
`--mini-batches 2` splits each RL step into two optimiser steps (ours: actor.mini_batch_size = P/2; TRL:
steps_per_generation = 2, per_device_train_batch_size = P*G/2): the second one is off-policy, so both
systems also compute old log-probs (TRL's no-grad `_get_per_token_logps_and_entropies` pass is timed as
its old_log_prob phase).

The first `--warmup` steps of every run are excluded. Runs of the two systems are interleaved (ABBA
order over `--repeats`), every run with a fresh trainer on the same saved model. Work is measured in
generated tokens (EOS included): both sample from the same model, but sampling noise makes response
lengths differ a little, so the report gives seconds per step AND seconds per 1k generated tokens,
medians over all timed steps, and the TRL / ours ratio of each. TRL computes every response; ours skips
the forward/backward of zero-advantage responses (exact, `actor.skip_zero_advantage_rows`, on by default;
`--no-skip` turns it off), so the share of all-equal groups matters: the base is warm-started long enough
(`--sft-steps`) to solve some level-`--level` problems, and the report gives the training accuracy and the
share of responses ours skipped. Ours also computes each prompt once for its G responses, on packed tokens
(`actor.share_prompt_forward`, the same function; `--no-share` uses the model's own padded forward, as TRL).
The report also sets each step against the 1-thread matmul peak of its precision, measured in the same run:
the workload's useful FLOPs (2N a generated token, 6N a trained prompt or response token of every row, the
same for both systems) over the step's time, and per phase.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_trainer.py            # 1m+5m ~10 min, 20m ~20 min more
    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_trainer.py --quick    # ~3 min
    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_trainer.py --mini-batches 2 --sizes 1m 5m
    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_trainer.py --no-skip --precisions fp32 bf16 --sizes 5m 20m
The first run builds and caches the warm-started base models (--cache): 1m ~1 min, 5m ~2.5 min,
20m ~10 min on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dapo.config import Config
from dapo.data import make_arith_records, render_prompt
from dapo.metrics import measure_matmul_peak
from dapo.models import load_model_and_tokenizer, num_parameters
from dapo.rewards import score_dapo
from dapo.sft import SftSettings, base_model_name, build_base_model
from dapo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
OURS, TRL = "ours", "trl"
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Workload:
    """What one RL step does, identical for both systems."""

    prompts: int = 8
    """P, prompts (groups) per RL step"""
    group_size: int = 8
    """G, responses per prompt"""
    mini_batches: int = 1
    """optimiser steps per RL step; > 1 makes the later ones off-policy, so both systems compute old log-probs"""
    max_new_tokens: int = 64
    """L, cap on generated tokens per response (EOS included)"""
    level: int = 4
    """arith difficulty: level 4 solutions are ~40 tokens, partly solved by the base (informative groups)"""
    skip_zero_advantage_rows: bool = True
    """ours only (TRL has no such option): False makes ours compute every row, as TRL does"""
    share_prompt_forward: bool = True
    """ours only: False runs the log-prob passes and the update through the model's own padded forward, as TRL"""
    precision: str = "fp32"
    """fp32 | bf16: ours actor.precision=bf16-mixed (bf16 autocast over fp32 master weights; the engine stays
    float32, the faster one on this CPU), TRL bf16=True (its own autocast, generation included)"""
    lr: float = 2e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0


# ------------------------------------------------------------------------------------------- the model


def base_model(size: str, level: int, sft_steps: int, cache: Path) -> Path:
    """The tiny model warm-started on arith (cached: the SFT is set-up, not benchmark)."""
    settings = SftSettings(steps=sft_steps, shortcut_rate=0.0)
    out = cache / base_model_name(size, level, settings)
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(min(2, os.cpu_count() or 1))  # set-up only; timed runs use one thread
        build_base_model(size, level, out, settings, say=print)
    return out


# ------------------------------------------------------------------------------------------------ ours


def our_config(model_dir: Path, w: Workload, run_dir: Path) -> Config:
    c = Config()
    c.model.path = str(model_dir)
    c.data.task, c.data.task_level = "arith", w.level
    c.data.train_batch_size = c.data.gen_batch_size = w.prompts
    c.data.val_size = 1
    c.rollout.group_size = w.group_size
    c.rollout.max_response_length = w.max_new_tokens
    c.rollout.temperature, c.rollout.top_p, c.rollout.top_k = 1.0, 1.0, 0
    c.algo.adv_estimator = "grpo"
    c.algo.clip_eps_low, c.algo.clip_eps_high = 0.2, 0.28
    c.algo.loss_agg_mode = "token-mean"
    c.algo.use_kl_loss = c.algo.use_kl_in_reward = False
    c.algo.overlong.enable = False
    c.algo.overlong.filter = True  # = TRL's mask_truncated_completions
    c.algo.dynamic_sampling.enable = False
    c.actor.mini_batch_size = w.prompts // w.mini_batches  # 1 mini-batch: exactly on-policy, no old log-probs
    c.actor.ppo_epochs = 1
    c.actor.skip_zero_advantage_rows = w.skip_zero_advantage_rows
    c.actor.share_prompt_forward = w.share_prompt_forward
    c.actor.precision = "bf16-mixed" if w.precision == "bf16" else "fp32"
    c.actor.lr, c.actor.lr_warmup_steps = w.lr, 0
    c.actor.weight_decay, c.actor.grad_clip = w.weight_decay, w.grad_clip
    c.trainer.seed = w.seed
    c.trainer.num_threads = 1
    c.trainer.output_dir, c.trainer.run_name = str(run_dir), "ours"
    c.trainer.resume = "disable"
    c.trainer.test_freq, c.trainer.val_before_train = 0, False
    c.trainer.tensorboard, c.trainer.progress = False, False
    c.trainer.save_freq = 0
    return c.validate()


def run_ours(model_dir: Path, w: Workload, warmup: int, steps: int, work: Path) -> dict:
    trainer = Trainer(our_config(model_dir, w, work), log_to_console=False)
    step_s, tokens, phases, acc, skipped = [], [], [], [], []
    try:
        for step in range(1, warmup + steps + 1):
            start = time.perf_counter()
            m = trainer.train_step(step)
            elapsed = time.perf_counter() - start
            assert torch.get_num_threads() == 1
            if step > warmup:
                step_s.append(elapsed)
                tokens.append(m["response_length/mean"] * w.prompts * w.group_size)
                acc.append(m["train/acc/mean"])
                skipped.append(m.get("actor/skipped_rows_frac", 0.0))
                timing = {k.removeprefix("timing_s/"): v for k, v in m.items() if k.startswith("timing_s/")}
                timing.pop("step", None)
                timing["other"] = elapsed - sum(timing.values())
                phases.append(timing)
    finally:
        trainer.logger.close()
    return {"step_s": step_s, "tokens": tokens, "phases": phases, "acc": acc, "skipped": skipped}


# ------------------------------------------------------------------------------------------------- TRL


def _timed(record: Callable[[float, object], None], fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        record(time.perf_counter() - start, out)
        return out

    return wrapper


def chat_messages(record) -> list[dict[str, str]]:
    """A record's messages as TRL's dataset (and the chat template) takes them."""
    return [{"role": m.role, "content": m.content} for m in record.messages]


def arith_reward(completions, ground_truth, **_) -> list[float]:
    """The DAPO rule reward (+1 / -1) on the arith answer: the scorer our trainer routes "arith" to."""
    return [
        score_dapo(c[0]["content"] if isinstance(c, list) else c, gt).score
        for c, gt in zip(completions, ground_truth, strict=True)
    ]


def run_trl(model_dir: Path, w: Workload, warmup: int, steps: int, work: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    records = make_arith_records("train", 4000, seed=1, level=w.level)
    dataset = Dataset.from_list([{"prompt": chat_messages(r), "ground_truth": r.ground_truth} for r in records])
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=torch.float32)
    args = GRPOConfig(
        output_dir=str(work / "trl"),
        # DAPO as TRL defines it
        loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, mask_truncated_completions=True,
        scale_rewards="group", num_iterations=1,
        # the workload: P prompts x G responses, one optimiser step per generation round
        per_device_train_batch_size=w.prompts * w.group_size // w.mini_batches, num_generations=w.group_size,
        gradient_accumulation_steps=1, steps_per_generation=w.mini_batches, max_completion_length=w.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, max_steps=(warmup + steps) * w.mini_batches,
        # same optimiser, same precision, CPU, no vLLM, nothing the other system does not do
        learning_rate=w.lr, weight_decay=w.weight_decay, max_grad_norm=w.grad_clip, lr_scheduler_type="constant",
        warmup_steps=0, use_vllm=False, use_cpu=True, bf16=w.precision == "bf16", fp16=False,
        gradient_checkpointing=False,
        report_to="none", logging_steps=10**6, save_strategy="no", disable_tqdm=True, seed=w.seed,
        dataloader_num_workers=0, log_completions=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=arith_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    cur: dict[str, float] = {}
    gen_tokens: list[int] = []

    def add(name: str) -> Callable[[float, object], None]:
        def record(seconds: float, _out: object) -> None:
            cur[name] = cur.get(name, 0.0) + seconds

        return record

    def record_gen(seconds: float, out: object) -> None:
        add("gen")(seconds, out)
        completion_ids = out[0]
        gen_tokens.append(sum(len(c) for c in completion_ids))  # EOS included, nothing after it

    trainer._generate_single_turn = _timed(record_gen, trainer._generate_single_turn)
    rewards: list[float] = []

    def record_reward(seconds: float, out: object) -> None:
        add("reward")(seconds, out)
        rewards.append(float((out > 0).float().mean()))  # (B*G, num_funcs) rule scores, +1 = correct

    trainer._calculate_rewards = _timed(record_reward, trainer._calculate_rewards)
    trainer._generate_and_score_completions = _timed(add("prepare"), trainer._generate_and_score_completions)
    trainer.compute_loss = _timed(add("forward_loss"), trainer.compute_loss)
    logps_fn = trainer._get_per_token_logps_and_entropies
    timed_logps = _timed(add("old_log_prob"), logps_fn)

    def logps(*args, **kwargs):  # without grad it is the old (or reference) log-prob pass, not the loss forward
        return logps_fn(*args, **kwargs) if torch.is_grad_enabled() else timed_logps(*args, **kwargs)

    trainer._get_per_token_logps_and_entropies = logps

    ends: list[float] = []
    per_step: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, _args, state, *_, **__):
            if state.global_step % w.mini_batches:
                return  # an RL step ends with its last optimiser step
            ends.append(time.perf_counter())
            per_step.append(dict(cur))
            cur.clear()
            assert torch.get_num_threads() == 1

    trainer.add_callback(StepClock())
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(io.StringIO()):  # TRL prints its end-of-training summary
        trainer.train()
    assert len(ends) == warmup + steps and len(gen_tokens) == warmup + steps, (len(ends), len(gen_tokens))
    step_s, tokens, phases = [], [], []
    acc = rewards[warmup : warmup + steps]
    for i in range(warmup, warmup + steps):
        elapsed = ends[i] - ends[i - 1]  # everything between the ends of two RL steps
        p = per_step[i]
        # TRL computes old log-probs inside _generate_and_score_completions when the step is off-policy.
        old = p.get("old_log_prob", 0.0)
        phases.append(
            {
                "gen": p["gen"],
                "reward": p["reward"],
                "old_log_prob": old,
                "prepare_other": p["prepare"] - p["gen"] - p["reward"] - old,
                "forward_loss": p["forward_loss"],
                "backward_optim_other": elapsed - p["prepare"] - p["forward_loss"],
            }
        )
        step_s.append(elapsed)
        tokens.append(gen_tokens[i])
    return {"step_s": step_s, "tokens": tokens, "phases": phases, "acc": acc}


# ------------------------------------------------------------------------------------------- reporting


def _median_phases(phases: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for p in phases for k in p})
    return {k: statistics.median(p.get(k, 0.0) for p in phases) for k in names}


def summarise(runs: list[dict]) -> dict:
    step_s = [s for r in runs for s in r["step_s"]]
    tokens = [t for r in runs for t in r["tokens"]]
    phases = [p for r in runs for p in r["phases"]]
    per_1k = [1000.0 * s / t for s, t in zip(step_s, tokens, strict=True)]
    gen_per_1k = [1000.0 * p["gen"] / t for p, t in zip(phases, tokens, strict=True)]
    # The update: everything after the rollout is scored (forward, loss, backward, clip, optimiser).
    update = [
        p.get("update_actor", 0.0) + p.get("forward_loss", 0.0) + p.get("backward_optim_other", 0.0) for p in phases
    ]
    out = {
        "median_s_per_step": statistics.median(step_s),
        "median_tokens_per_step": statistics.median(tokens),
        "mean_tokens_per_step": statistics.fmean(tokens),
        "median_s_per_1k_tokens": statistics.median(per_1k),
        "run_medians_s_per_step": [statistics.median(r["step_s"]) for r in runs],
        "run_loadavg_1m": [r.get("loadavg_1m") for r in runs],
        "median_gen_s_per_1k_tokens": statistics.median(gen_per_1k),
        "median_update_s": statistics.median(update),
        "phases_median_s": _median_phases(phases),
        "step_s": step_s,
        "tokens": tokens,
    }
    accs = [a for r in runs for a in r.get("acc", [])]
    if accs:
        out["mean_train_acc"] = statistics.fmean(accs)
    skipped = [x for r in runs for x in r.get("skipped", [])]
    if skipped:
        out["mean_skipped_rows_frac"] = statistics.fmean(skipped)
    return out


def prompt_tokens(tokenizer, level: int, num: int = 256) -> float:
    """Mean prompt length in tokens, as both systems render it (the tokenizer's chat template)."""
    records = make_arith_records("train", num, seed=1, level=level)
    return statistics.fmean(
        len(tokenizer(render_prompt(r, tokenizer), add_special_tokens=False)["input_ids"]) for r in records
    )


def fractions_of_peak(summary: dict, params: int, prompt_len: float, w: Workload, peak: float) -> dict:
    """The step's useful work against the matmul peak of its precision, whole step and per phase. Useful work
    is what the workload needs, the same for both systems: 2N FLOPs a generated token, and 6N a trained
    token, prompt and response of every row (no credit for tokens a system skips or shares, no charge for
    padding or recomputation)."""
    gen_tokens = summary["median_tokens_per_step"]
    gen_flops = 2.0 * params * gen_tokens
    train_flops = 6.0 * params * (w.prompts * w.group_size * prompt_len + gen_tokens)
    gen_s = summary["phases_median_s"].get("gen", float("nan"))
    return {
        "useful_gflops_per_step": (gen_flops + train_flops) / 1e9,
        "step": (gen_flops + train_flops) / summary["median_s_per_step"] / peak,
        "generation": gen_flops / gen_s / peak,
        "update": train_flops / summary["median_update_s"] / peak,
    }


def bench_size(size: str, w: Workload, args: argparse.Namespace, work: Path, peaks: dict[str, float]) -> list[dict]:
    """Both systems in every precision of `args.precisions`, interleaved (ABBA over the combinations)."""
    model_dir = base_model(size, w.level, args.sft_steps, args.cache)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    params = num_parameters(model)
    del model
    prompt_len = prompt_tokens(tokenizer, w.level)
    combos = [(name, p) for p in args.precisions for name in (OURS, TRL)]
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in combos}
    runners = {OURS: run_ours, TRL: run_trl}
    for r in range(args.repeats):
        for name, precision in combos if r % 2 == 0 else combos[::-1]:  # ABBA: drift hits every run alike
            run_dir = Path(tempfile.mkdtemp(dir=work))
            load_before = os.getloadavg()[0]
            result = runners[name](model_dir, replace(w, precision=precision), args.warmup, args.steps, run_dir)
            result["loadavg_1m"] = [load_before, os.getloadavg()[0]]  # > 1 means other work shared the cores
            shutil.rmtree(run_dir, ignore_errors=True)
            runs[name, precision].append(result)
            print(
                f"[{size} {precision}] repeat {r + 1}/{args.repeats} {name:>4}: "
                f"median {statistics.median(result['step_s']):.2f} s/step, "
                f"{statistics.fmean(result['tokens']):.0f} tokens/step",
                flush=True,
            )
    out = []
    for precision in args.precisions:
        ours, trl = summarise(runs[OURS, precision]), summarise(runs[TRL, precision])
        for summary in (ours, trl):
            summary["fraction_of_peak"] = fractions_of_peak(summary, params, prompt_len, w, peaks[precision])
        out.append(
            {
                "size": size,
                "precision": precision,
                "parameters": params,
                "mean_prompt_tokens": prompt_len,
                OURS: ours,
                TRL: trl,
                "ratio_trl_over_ours_s_per_step": trl["median_s_per_step"] / ours["median_s_per_step"],
                "ratio_trl_over_ours_s_per_1k_tokens": trl["median_s_per_1k_tokens"] / ours["median_s_per_1k_tokens"],
                "ratio_trl_over_ours_gen_s_per_1k_tokens": trl["median_gen_s_per_1k_tokens"]
                / ours["median_gen_s_per_1k_tokens"],
                "ratio_trl_over_ours_update_s": trl["median_update_s"] / ours["median_update_s"],
                "paired_ratios_s_per_step": [
                    statistics.median(t["step_s"]) / statistics.median(o["step_s"])
                    for o, t in zip(runs[OURS, precision], runs[TRL, precision], strict=True)
                ],
            }
        )
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| size | precision | params | ours s/step | TRL s/step | ratio | ours tok/step | TRL tok/step "
        "| ours s/1k tok | TRL s/1k tok | ratio at equal work |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, t = r[OURS], r[TRL]
        lines.append(
            f"| {r['size']} | {r['precision']} | {r['parameters'] / 1e6:.1f}M | {o['median_s_per_step']:.2f} "
            f"| {t['median_s_per_step']:.2f} "
            f"| {r['ratio_trl_over_ours_s_per_step']:.2f}x | {o['mean_tokens_per_step']:.0f} | "
            f"{t['mean_tokens_per_step']:.0f} | {o['median_s_per_1k_tokens']:.3f} | {t['median_s_per_1k_tokens']:.3f} "
            f"| {r['ratio_trl_over_ours_s_per_1k_tokens']:.2f}x |"
        )
    lines += [
        "",
        "| size | precision | gen s/1k tok ours | gen s/1k tok TRL | gen ratio | update s ours | update s TRL "
        "| update ratio | train acc ours / TRL | responses ours skipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, t = r[OURS], r[TRL]
        lines.append(
            f"| {r['size']} | {r['precision']} | {o['median_gen_s_per_1k_tokens']:.3f} "
            f"| {t['median_gen_s_per_1k_tokens']:.3f} "
            f"| {r['ratio_trl_over_ours_gen_s_per_1k_tokens']:.2f}x | {o['median_update_s']:.2f} "
            f"| {t['median_update_s']:.2f} | {r['ratio_trl_over_ours_update_s']:.2f}x "
            f"| {o.get('mean_train_acc', float('nan')):.2f} / {t.get('mean_train_acc', float('nan')):.2f} "
            f"| {100 * o.get('mean_skipped_rows_frac', 0.0):.0f}% |"
        )
    lines += [
        "",
        "Useful work against the matmul peak of the precision used (whole step / generation / update):",
        "",
        "| size | precision | useful GFLOP a step | ours | TRL |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        o, t = r[OURS]["fraction_of_peak"], r[TRL]["fraction_of_peak"]
        cells = [" / ".join(f"{100 * f[k]:.0f} %" for k in ("step", "generation", "update")) for f in (o, t)]
        gflops = o["useful_gflops_per_step"]
        lines.append(f"| {r['size']} | {r['precision']} | {gflops:.1f} | {cells[0]} | {cells[1]} |")
    lines += ["", "Phases (median s per step):", ""]
    for r in results:
        for name in (OURS, TRL):
            phases = ", ".join(f"{k} {v:.3f}" for k, v in r[name]["phases_median_s"].items())
            lines.append(f"- {r['size']} {r['precision']} {name}: {phases}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1m", "5m", "20m"])
    parser.add_argument("--repeats", type=int, default=4, help="runs per system and size (interleaved, ABBA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every run")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument(
        "--mini-batches", type=int, default=1, help="optimiser steps per RL step (2 = off-policy: old log-probs)"
    )
    parser.add_argument("--sft-steps", type=int, default=500, help="warm-start steps of the base model (cached)")
    parser.add_argument("--no-skip", action="store_true", help="ours also computes zero-advantage rows (as TRL does)")
    parser.add_argument(
        "--no-share", action="store_true", help="ours uses the model's own padded forward (no shared-prefix forward)"
    )
    parser.add_argument("--level", type=int, default=Workload.level, help="arith level of prompts and warm start")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="run both systems in each (interleaved); bf16 = ours bf16-mixed, TRL bf16=True",
    )
    parser.add_argument("--quick", action="store_true", help="~3 minutes: sizes 1m and 5m, 2 repeats x 2 steps")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dapo-bench-trainer")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.steps = ["1m", "5m"], 2, 2
    name = "trainer" + (f"-mb{args.mini_batches}" if args.mini_batches > 1 else "")
    name += ("-noskip" if args.no_skip else "") + ("-noshare" if args.no_share else "")
    name += "" if args.precisions == ["fp32"] else "-" + "-".join(args.precisions)
    name += "-quick" if args.quick else ""
    out = args.out or ROOT / "bench" / "results" / f"{name}.json"
    warnings.filterwarnings("ignore")
    w = Workload(
        mini_batches=args.mini_batches,
        level=args.level,
        skip_zero_advantage_rows=not args.no_skip,
        share_prompt_forward=not args.no_share,
    )
    if w.prompts % w.mini_batches:
        parser.error(f"--mini-batches must divide the {w.prompts} prompts of a step")
    work = Path(tempfile.mkdtemp(prefix="dapo-bench-trainer-"))
    results: list[dict] = []
    # The matmul peaks the step is measured against, one thread as the runs, in this run.
    peaks = {p: measure_matmul_peak(1, 1024, dtype=PEAK_DTYPES[p]) for p in ("fp32", "bf16")}
    print("matmul peaks, 1 thread: " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()), flush=True)
    try:
        for size in args.sizes:
            results.extend(bench_size(size, w, args, work, peaks))
            write_report(out, w, args, results, peaks)  # a size at a time: a long run that stops keeps what it measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    print(f"\nwritten to {out}")


def write_report(out: Path, w: Workload, args: argparse.Namespace, results: list[dict], peaks: dict) -> None:
    import transformers
    import trl

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "threads": 1,
            "matmul_peak_gflops_1_thread": {p: v / 1e9 for p, v in peaks.items()},
        },
        "workload": {**asdict(w), "sft_steps": args.sft_steps},
        "protocol": {"repeats": args.repeats, "warmup_steps": args.warmup, "timed_steps_per_run": args.steps},
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
