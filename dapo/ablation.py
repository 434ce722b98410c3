"""`dapo ablate`: the paper's Table 1 ladder run over seeds, and a report with its table and figures.

A ladder is a list of presets, each adding one technique to the one before (naive GRPO → + overlong
filtering → + Clip-Higher → + soft overlong punishment → + token-level loss → + dynamic sampling). Every
(preset, seed) is one ordinary training run under `<out>/runs/`, so a ladder is resumable: a finished run is
skipped, a killed one continues from its last checkpoint (`trainer.resume=auto`). Runs go seed by seed, so a
partial ladder already compares every rung on the first seeds.

The report (`<out>/report.md` and PNGs beside it) has:
- a Table-1-style table: held-out accuracy per rung, final and over the last evaluations, mean and a 95 %
  t-interval over seeds, and the change against the rung below with the interval of the paired
  differences (the rungs of one seed share the base and the prompts' order);
- the steps each rung needs to reach naive GRPO's late accuracy (the paper's "50 % of the steps");
- what the techniques had to act on: lengths, truncation, entropy, the clip, groups without signal;
- mean-and-band curves over seeds: held-out accuracy, entropy (with and without Clip-Higher), response
  length, the upper and lower clip fractions, generation rounds per step, all-correct and all-wrong groups;
- plain words where a step of the ladder does not move accuracy beyond the seeds' noise.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapo.config import ABLATION_PREFIXES, ABLATION_RUNGS, ConfigError, ablation_ladder, load_config
from dapo.metrics import merge_by_step, read_jsonl_metrics

# The ladders' presets, from the one table of Table 1 (`dapo.config.presets.ABLATION_RUNGS`).
LADDERS: dict[str, tuple[str, ...]] = {ladder: ablation_ladder(ladder) for ladder in ABLATION_PREFIXES}

# Variants of a ladder's last rung, shown as extra rows: the other meanings of "token-level loss".
VARIANTS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu_ablation_legacy_token_mean", "cpu_ablation_group_token_mean"),
    "paper": (),
}

# The paper's Table 1 (AIME 2024 avg@32) for the rungs of both ladders, by the technique a rung adds.
PAPER_TABLE_1: dict[str, int] = {rung.name: rung.paper_aime for rung in ABLATION_RUNGS}

# --quick: a first look in minutes (and the CI check); the numbers it gives mean nothing.
QUICK = {
    "trainer.total_steps": 2, "trainer.test_freq": 2, "data.val_size": 16, "rollout.val_n": 2,
    "data.train_batch_size": 4, "data.gen_batch_size": 4, "actor.mini_batch_size": 2,
}  # fmt: skip
# The report's late accuracy: the mean of each run's last evaluations (steps 90-120 of the CPU ladder).
LATE_EVALUATIONS = 4
# Every run: its own directory, no TensorBoard, no progress bar per run (the ladder has its own line).
EVERY_RUN = {"trainer.tensorboard": False, "trainer.progress": False, "trainer.resume": "auto"}


@dataclass(frozen=True)
class AblationPlan:
    rungs: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    quick: bool = False
    overrides: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    """presets compared with the last rung, as extra rows"""

    @property
    def presets(self) -> tuple[str, ...]:
        return (*self.rungs, *self.variants)

    def run_name(self, preset: str, seed: int) -> str:
        return f"{preset}-seed{seed}"

    def run_dir(self, preset: str, seed: int) -> Path:
        return self.out / "runs" / self.run_name(preset, seed)

    def config(self, preset: str, seed: int, base_model: str | None = None):
        settings = {**(QUICK if self.quick else {}), **EVERY_RUN}
        settings.update({"trainer.seed": seed, "trainer.output_dir": self.out / "runs"})
        settings["trainer.run_name"] = self.run_name(preset, seed)
        if base_model is not None:
            settings["model.path"] = base_model
        overrides = [f"{k}={v}" for k, v in settings.items()] + list(self.overrides)
        return load_config(preset, None, overrides)


def plan(
    ladder: str | None, presets: Sequence[str] | None, seeds: int, out: str | Path, quick: bool, overrides=()
) -> AblationPlan:
    """The runs of `dapo ablate`: `presets` if given, else the named ladder; seeds 0 … seeds − 1."""
    variants: tuple[str, ...] = ()
    if presets:
        chosen = tuple(presets)
    else:
        name = ladder or "cpu"
        if name not in LADDERS:
            raise ConfigError(f"unknown ladder {name!r}; choose one of {', '.join(LADDERS)} or give --presets")
        chosen, variants = LADDERS[name], VARIANTS[name]
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    the_plan = AblationPlan(chosen, tuple(range(seeds)), Path(out), quick, tuple(overrides), variants)
    for preset in the_plan.presets:  # every preset and override is checked before the first run
        the_plan.config(preset, 0)
    return the_plan


# ------------------------------------------------------------------------------------------------ runs


def is_finished(plan: AblationPlan, preset: str, seed: int) -> bool:
    return (plan.run_dir(preset, seed) / "finished.json").exists()


def run_all(plan: AblationPlan, say: Callable[[str], None] = print) -> None:
    """Every (preset, seed) not finished yet, seed by seed; a finished run writes `finished.json`."""
    from dapo.sft import ensure_builtin_base
    from dapo.trainer import Trainer

    todo = [(p, s) for s in plan.seeds for p in plan.presets if not is_finished(plan, p, s)]
    say(f"[ablate] {len(plan.presets)} presets x {len(plan.seeds)} seeds: {len(todo)} runs to do in {plan.out}")
    base_model = None
    for i, (preset, seed) in enumerate(todo, 1):
        config = plan.config(preset, seed)
        if config.model.path.startswith("builtin:"):
            # one warm-started base for every rung, where the main job keeps it (not under --out)
            default = load_config(preset, None, [o for o in plan.overrides if not o.startswith("trainer.output_dir")])
            base_model = str(ensure_builtin_base(default, say=say))
            config = plan.config(preset, seed, base_model)
        say(f"[ablate] run {i}/{len(todo)}: {preset}, seed {seed}")
        trainer = Trainer(config, log_to_console=False)
        try:
            final = trainer.train()
        finally:
            trainer.close()
        (plan.run_dir(preset, seed) / "finished.json").write_text(json.dumps({"step": trainer.counters.step, **final}))


# ---------------------------------------------------------------------------------------------- report


def _t_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (a 95 % two-sided interval)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    return table.get(df, 2.0)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); the half-width is NaN for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, _t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_interval(below: dict[int, float], above: dict[int, float]) -> tuple[float, float, int]:
    """(mean, 95 % half-width, pairs) of `above - below` over the seeds both have. Rungs of one seed share
    the base, the prompts' order and the sampling seed, so the paired difference removes what the seeds
    share, and its interval is narrower than one built from the two rungs' own intervals."""
    seeds = sorted(set(below) & set(above))
    if not seeds:
        return math.nan, math.nan, 0
    mean, half = mean_interval([above[s] - below[s] for s in seeds])
    return mean, half, len(seeds)


def _accuracy_key(rows: Sequence[dict]) -> str | None:
    keys = sorted({k for r in rows for k in r if k.startswith("val-core/") and "/acc/mean@" in k})
    return keys[0] if keys else None


@dataclass
class RungResult:
    preset: str
    rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # seed -> metrics rows by step

    def curve(self, seed: int, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.rows[seed] if isinstance(r.get(key), int | float)]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        return [s for s, _ in points], [v for _, v in points]

    def final_accuracy(self, key: str) -> list[float]:
        return list(self.final_by_seed(key).values())

    def final_by_seed(self, key: str) -> dict[int, float]:
        """Per seed, the last evaluation."""
        return {seed: ys[-1] for seed in self.rows if (ys := self.curve(seed, key)[1])}

    def late_by_seed(self, key: str, last: int = LATE_EVALUATIONS) -> dict[int, float]:
        """Per seed, the mean of the last `last` evaluations: a plateau's level with a quarter of one
        evaluation's sampling noise, where the last one alone is a single draw."""
        return {seed: statistics.fmean(ys[-last:]) for seed in self.rows if (ys := self.curve(seed, key)[1])}

    def mean_over_steps(self, seed: int, key: str, first: int | None = None, last: int | None = None) -> float:
        """The mean of a training metric over the run's first `first` or last `last` logged steps (NaN if none)."""
        ys = self.curve(seed, key)[1]
        ys = ys[:first] if first is not None else ys[-last:] if last is not None else ys
        return statistics.fmean(ys) if ys else math.nan

    def steps_to_reach(self, key: str, target: float) -> list[float]:
        """Per seed, the first evaluated step whose accuracy reaches `target` (NaN if never)."""
        out = []
        for seed in self.rows:
            xs, ys = self.curve(seed, key)
            out.append(next((float(x) for x, y in zip(xs, ys, strict=True) if x > 0 and y >= target), math.nan))
        return out


def load_results(plan: AblationPlan) -> list[RungResult]:
    results = []
    for preset in plan.presets:
        rung = RungResult(preset)
        for seed in plan.seeds:
            path = plan.run_dir(preset, seed) / "metrics.jsonl"
            if is_finished(plan, preset, seed) and path.exists():
                rung.rows[seed] = merge_by_step(read_jsonl_metrics(path))
        results.append(rung)
    return results


def technique(preset: str) -> str:
    """The technique a ladder rung adds, from its name (`cpu_ablation_clip_higher` → `clip_higher`)."""
    return preset.split("ablation_", 1)[-1]


def _percent(mean: float, half: float) -> str:
    if math.isnan(half):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * half:.1f}"


def write_report(plan: AblationPlan, title: str = "Ablation") -> Path:
    """`<out>/report.md` and its figures from the finished runs; returns the report's path."""
    everything = [r for r in load_results(plan) if r.rows]
    results = [r for r in everything if r.preset in plan.rungs]
    variants = [r for r in everything if r.preset in plan.variants]
    plan.out.mkdir(parents=True, exist_ok=True)
    report = plan.out / "report.md"
    if not results:
        report.write_text(f"# {title}\n\nNo finished rung yet under {plan.out / 'runs'}.\n")
        return report
    key = _accuracy_key([r for rung in everything for rows in rung.rows.values() for r in rows])
    lines = [f"# {title}", ""]
    lines += [
        f"{len(results)} rungs × seeds {sorted({s for r in results for s in r.rows})}"
        + (" (--quick: a smoke run, not a result)" if plan.quick else "")
        + f"; held-out metric `{key}`: the last evaluation of each run, and the mean of its last "
        f"{LATE_EVALUATIONS} evaluations (the comparisons use it); ± is a 95 % t-interval over seeds, and for a "
        "change between rungs over the paired differences of the seeds.",
        "",
    ]
    if key is None:
        lines.append("The runs logged no held-out accuracy (set data.val_files or use the built-in task).")
        report.write_text("\n".join(lines) + "\n")
        return report
    lines += _table(results, key)
    if variants:
        lines += ["", *_variant_table(results[-1], variants, key)]
    lines += ["", *_steps_to_baseline(results + variants, key)]
    lines += ["", *_acted_on_table(results + variants)]
    lines += ["", "## Directions", "", *_honest_words(itertools.pairwise(results), key, technique)]
    if len(results) > 2:
        everything_at_once = [(results[0], results[-1])]
        lines += _honest_words(
            everything_at_once, key, lambda p: f"all of them together ({technique(p)} vs the first rung)"
        )
    lines += _honest_words(
        [(results[-1], v) for v in variants], key, lambda p: f"{technique(p)} instead of the token mean"
    )
    lines += ["", "## Figures", ""]
    for name, png in _figures(results + variants, key, plan.out):
        lines.append(f"![{name}]({png.name})")
    report.write_text("\n".join(lines) + "\n")
    return report


def _paired_text(mean: float, half: float, _pairs: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{100 * mean:+.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")


def _final_and_late(rung: RungResult, key: str) -> tuple[str, str]:
    """The table cells of a rung's final and late accuracy, mean ± interval over seeds."""
    final = _percent(*mean_interval(rung.final_accuracy(key)))
    return final, _percent(*mean_interval(list(rung.late_by_seed(key).values())))


def _table(results: list[RungResult], key: str) -> list[str]:
    lines = [
        f"| rung | adds | held-out accuracy, %: final | last {LATE_EVALUATIONS} evaluations "
        f"| vs the rung below, points (paired, last {LATE_EVALUATIONS}) | paper (AIME 2024) |",
        "|---|---|---|---|---|---|",
    ]
    previous: RungResult | None = None
    for rung in results:
        final, late = _final_and_late(rung, key)
        delta = (
            ""
            if previous is None
            else _paired_text(*paired_interval(previous.late_by_seed(key), rung.late_by_seed(key)))
        )
        paper = PAPER_TABLE_1.get(technique(rung.preset), "")
        lines.append(f"| `{rung.preset}` | {technique(rung.preset)} | {final} | {late} | {delta} | {paper} |")
        previous = rung
    return lines


def _variant_table(last: RungResult, variants: list[RungResult], key: str) -> list[str]:
    """The last rung again with other loss aggregations: the three meanings of "token-level loss"."""
    lines = [
        f'The last rung with the other meanings of "token-level loss" (`{last.preset}` uses the exact token '
        "mean over the mini-batch):",
        "",
        f"| variant | loss aggregation | held-out accuracy, %: final | last {LATE_EVALUATIONS} evaluations "
        f"| vs the last rung, points (paired, last {LATE_EVALUATIONS}) |",
        "|---|---|---|---|---|",
    ]
    for rung in variants:
        final, late = _final_and_late(rung, key)
        delta = _paired_text(*paired_interval(last.late_by_seed(key), rung.late_by_seed(key)))
        mode = load_config(rung.preset).algo.loss_agg_mode
        lines.append(f"| `{rung.preset}` | `{mode}` | {final} | {late} | {delta} |")
    return lines


# What each rung's techniques had to act on: (column, metric key, steps: ("first" | "last", n) or ("all", 0)).
ACTED_ON = (
    ("response length, tokens (last 20 steps)", "response_length/mean", ("last", 20)),
    ("truncated, % (first 20 steps)", "response_length/clip_ratio", ("first", 20)),
    ("truncated, % (last 20 steps)", "response_length/clip_ratio", ("last", 20)),
    ("entropy (first 10 steps)", "actor/entropy", ("first", 10)),
    ("entropy (last 20 steps)", "actor/entropy", ("last", 20)),
    ("upper clip, % of tokens", "actor/pg_clipfrac_higher", ("all", 0)),
    ("all correct, % (last 20 steps)", "train/all_correct_group_frac", ("last", 20)),
    ("all wrong, % (last 20 steps)", "train/all_wrong_group_frac", ("last", 20)),
    ("generation rounds a step", "train/num_gen_batches", ("all", 0)),
    ("seconds a step", "timing_s/step", ("all", 0)),
)
_PERCENT_COLUMNS = {"response_length/clip_ratio", "actor/pg_clipfrac_higher", "train/all_correct_group_frac",
                    "train/all_wrong_group_frac"}  # fmt: skip


def _acted_on_table(results: list[RungResult]) -> list[str]:
    """Per rung, the mean over seeds of what the techniques act on: lengths, truncation, entropy, the clip,
    the groups without signal, the generation rounds; and what a step cost."""
    lines = [
        "What the techniques had to act on (mean over seeds; training batches, before any filtering):",
        "",
        "| rung | " + " | ".join(column for column, _, _ in ACTED_ON) + " |",
        "|---|" + "---|" * len(ACTED_ON),
    ]
    for rung in results:
        cells = []
        for _, key, (where, n) in ACTED_ON:
            span = {"first": {"first": n}, "last": {"last": n}, "all": {}}[where]
            values = [v for seed in rung.rows if not math.isnan(v := rung.mean_over_steps(seed, key, **span))]
            if not values:
                cells.append("—")
                continue
            value = statistics.fmean(values)
            cells.append(f"{100 * value:.1f}" if key in _PERCENT_COLUMNS else f"{value:.3g}")
        lines.append(f"| `{rung.preset}` | " + " | ".join(cells) + " |")
    return lines


def _steps_to_baseline(results: list[RungResult], key: str) -> list[str]:
    baseline, _ = mean_interval(list(results[0].late_by_seed(key).values()))
    lines = [
        f"Steps to reach the first rung's late accuracy ({100 * baseline:.1f} %, the mean of its last "
        f"{LATE_EVALUATIONS} evaluations: a level it holds, not its luckiest draw), first evaluation at or above "
        "it, mean over the seeds that reach it (the paper: DAPO needs 50 % of naive GRPO's steps):",
        "",
        "| rung | steps | seeds that reach it | vs the first rung's steps |",
        "|---|---|---|---|",
    ]
    first_steps = None
    for rung in results:
        steps = rung.steps_to_reach(key, baseline)
        reached = [s for s in steps if not math.isnan(s)]
        mean_steps = statistics.fmean(reached) if reached else math.nan
        if first_steps is None:
            first_steps = mean_steps
        ratio = mean_steps / first_steps if reached and first_steps else math.nan
        shown = f"{mean_steps:.0f}" if reached else "never"
        ratio_text = f"{ratio:.2f}" if not math.isnan(ratio) else "—"
        lines.append(f"| `{rung.preset}` | {shown} | {len(reached)}/{len(steps)} | {ratio_text} |")
    return lines


def _honest_words(pairs, key: str, label: Callable[[str], str]) -> list[str]:
    """For each (below, rung) pair, the paired change of the late accuracy and whether it is beyond the seeds'
    noise; every rung of the paper's Table 1 raised accuracy."""
    lines = []
    for below, rung in pairs:
        delta, half, n = paired_interval(below.late_by_seed(key), rung.late_by_seed(key))
        what = label(rung.preset)
        change = f"{100 * delta:+.1f} points"
        if n < 2:
            lines.append(f"- {what}: {change} with {n} seed{'s' * (n != 1)}: no interval, no conclusion.")
            continue
        interval = f"(± {100 * half:.1f}, paired over {n} seeds)"
        if abs(delta) <= half:
            lines.append(f"- {what}: {change} {interval}: within the seeds' noise, not resolved at this scale.")
        elif delta < 0:
            lines.append(f"- {what}: {change} {interval}: the paper's direction is not reproduced.")
        else:
            lines.append(f"- {what}: {change} {interval}: the paper's direction.")
    return lines


# Figures: (file name, title, y label, [(metric key, label)]); "*" is replaced by the held-out key.
FIGURES = (
    ("accuracy.png", "Held-out accuracy", "accuracy", [("*", "held-out")]),
    ("entropy.png", "Policy entropy", "nats per token", [("actor/entropy", "entropy")]),
    ("response_length.png", "Mean response length", "tokens", [("response_length/mean", "length")]),
    (
        "clip_fractions.png", "Clip fractions", "fraction of tokens",
        [("actor/pg_clipfrac_higher", "upper (r > 1+ε_high)"), ("actor/pg_clipfrac_low", "lower (r < 1−ε_low)")],
    ),
    ("generation_rounds.png", "Generation rounds per step", "rounds", [("train/num_gen_batches", "rounds")]),
    (
        "group_outcomes.png", "Groups with no signal", "fraction of generated groups",
        [("train/all_correct_group_frac", "all correct"), ("train/all_wrong_group_frac", "all wrong")],
    ),
)  # fmt: skip


def mean_band(rung: RungResult, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every seed logged `key` at, and the mean, min and max over seeds there."""
    curves = [dict(zip(*rung.curve(seed, key), strict=True)) for seed in rung.rows]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = [[c[s] for c in curves] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _figures(results: list[RungResult], accuracy_key: str, out: Path) -> list[tuple[str, Path]]:
    from dapo.report import pyplot, smoothed

    plt = pyplot()
    colors = plt.get_cmap("tab10")  # distinct hues: the rungs are categories, not a scale
    made = []
    for file_name, title, ylabel, series in FIGURES:
        fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 4.2), squeeze=False)
        drawn = False
        for ax, (key, label) in zip(axes[0], series, strict=True):
            key = accuracy_key if key == "*" else key
            on_this_axis = False
            for i, rung in enumerate(results):
                steps, mean, low, high = mean_band(rung, key)
                if not steps:
                    continue
                drawn = on_this_axis = True
                color = colors(i % 10)
                sparse = key == accuracy_key or len(steps) < 12  # evaluations: points, never smoothed
                shown = mean if sparse else smoothed(mean)
                ax.plot(steps, shown, color=color, marker="o" if sparse else None, lw=1.8, label=technique(rung.preset))
                ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
            ax.set_title(f"{title}: {label}" if len(series) > 1 else title)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if on_this_axis:
                ax.legend(fontsize=8, title="rung (line: mean; band: min-max over seeds)", title_fontsize=8)
        if drawn:
            fig.tight_layout()
            fig.savefig(out / file_name, dpi=100)
            made.append((title, out / file_name))
        plt.close(fig)
    return made
