"""Evaluation: avg@k, pass@k (unbiased) and maj@k of a policy on any prompt set, per data source.

`pass_at_k` and `majority_correct` are pure; `evaluate` generates and scores (side effects).
Metric names follow verl: `val-core/<source>/acc/mean@k` for the headline number, everything else under
`val-aux/<source>/...`.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from dapo.data import PromptRecord
from dapo.rewards import RewardFunction, last_number_matches, parse_number
from dapo.rollout import RolloutEngine, SamplingParams, concat_rollouts
from dapo.rollout.base import waves_one_by_one
from dapo.step.groups import groups_from_rollout, reward_samples

PROMPTS_PER_CALL = 128  # an evaluation generates this many prompts per engine call, so its progress shows


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021, arXiv:2107.03374, Eq. 1), for one problem.

        pass@k = 1 − C(n − c, k) / C(n, k)

    the probability that at least one of k samples drawn without replacement from the n generated
    ones is correct. C(n − c, k) / C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i) is computed as that running product
    (Chen et al.'s numerically stable form): no factorials, so no overflow for large n.

    Edge cases (pinned by tests/step/test_evaluation.py): c = 0 gives 0; n − c < k (every k-subset holds a correct
    sample, in particular c = n or k = n with c ≥ 1) gives 1. ValueError unless 1 ≤ k ≤ n and 0 ≤ c ≤ n.
    """
    if not 1 <= k <= num_samples:
        raise ValueError(f"need 1 ≤ k ≤ n, got k={k}, n={num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"need 0 ≤ c ≤ n, got c={num_correct}, n={num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    fail = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def majority_correct(preds: Sequence[str | None], acc: Sequence[bool]) -> bool:
    """maj@k for one problem: is the most frequent extracted answer a correct one?

    Conventions (pinned by tests/step/test_evaluation.py):
        * responses with no extracted answer (None) do not vote; no answer at all counts as wrong.
        * a tie in votes goes to the tied answer that appears FIRST in `preds` (response order), so the
          result is deterministic and does not depend on hash order.
        * the winning answer counts as correct if ANY response that gave it was scored correct. Responses
          with the same normalised answer normally share their score; when they do not (e.g. a format
          check failed on one of them), the answer itself is judged, not its worst write-up.
    """
    if len(preds) != len(acc):
        raise ValueError(f"preds and acc must have one entry per response, got {len(preds)} and {len(acc)}")
    votes = Counter(p for p in preds if p is not None)
    if not votes:
        return False
    winner = max(votes, key=lambda p: (votes[p], -preds.index(p)))
    return any(a for p, a in zip(preds, acc, strict=True) if p == winner)


def evaluate(
    engine: RolloutEngine,
    prompts: Sequence[Sequence[int]],
    prompt_texts: Sequence[str],
    records: Sequence[PromptRecord],
    reward_fn: RewardFunction,
    sampling: SamplingParams,
    n: int,
    seed: int,
    decode,
    progress: bool = False,
    prompts_per_call: int = PROMPTS_PER_CALL,
) -> dict[str, float]:
    """Generate n responses per prompt, score them, and return val-core / val-aux metrics per data source.

    `decode(token_ids) -> str` turns a response into text (special tokens skipped). The prompts are generated
    `prompts_per_call` at a time (part i seeded `wave_seed(seed, i)`), with a progress bar over prompts when
    `progress` is set.
    """
    from tqdm.auto import tqdm

    parts = []
    bar = tqdm(total=len(prompts), desc="eval", unit="prompt", disable=not progress, mininterval=_bar_interval())
    with bar:
        for part in waves_one_by_one(engine, prompts, n, sampling, seed, prompts_per_call):
            parts.append(part)
            bar.update(part.num_prompts)
    rollout = parts[0] if len(parts) == 1 else concat_rollouts(parts)
    samples = reward_samples(records, prompt_texts, rollout, decode)
    groups = groups_from_rollout(records, prompts, rollout, reward_fn(samples))
    lenient = [last_number_matches(s.response, s.ground_truth) for s in samples]
    per_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p, (record, group) in enumerate(zip(records, groups, strict=True)):
        per_source[record.data_source].append(
            {
                "acc": list(group.acc),
                "score": list(group.scores),
                "preds": list(group.preds),
                "length": [len(r) for r in group.response_ids],
                "lenient": lenient[p * n : p * n + n],
                "numeric": parse_number(record.ground_truth) is not None,
            }
        )
    metrics: dict[str, float] = {}
    for source, problems in per_source.items():
        count = len(problems)
        acc_mean = sum(sum(p["acc"]) / n for p in problems) / count
        metrics[f"val-core/{source}/acc/mean@{n}"] = acc_mean
        metrics[f"val-aux/{source}/score/mean@{n}"] = sum(sum(p["score"]) / n for p in problems) / count
        metrics[f"val-aux/{source}/response_length/mean@{n}"] = sum(sum(p["length"]) / n for p in problems) / count
        metrics[f"val-aux/{source}/acc/pass@{n}"] = sum(pass_at_k(n, sum(p["acc"]), n) for p in problems) / count
        if n > 1:
            metrics[f"val-aux/{source}/acc/pass@1"] = acc_mean
            metrics[f"val-aux/{source}/acc/maj@{n}"] = (
                sum(majority_correct(p["preds"], p["acc"]) for p in problems) / count
            )
        if all(p["numeric"] for p in problems):  # the lenient verdict is defined for numeric answers only
            metrics[f"val-aux/{source}/lenient_acc/mean@{n}"] = sum(sum(p["lenient"]) / n for p in problems) / count
            metrics[f"val-aux/{source}/lenient_acc/pass@{n}"] = (
                sum(pass_at_k(n, sum(p["lenient"]), n) for p in problems) / count
            )
        metrics[f"val-aux/{source}/num_problems"] = float(count)
    return metrics


def _bar_interval() -> float:
    """Seconds between bar redraws: live on a terminal, sparse in a log file (CI, nohup)."""
    return 0.1 if sys.stderr.isatty() else 10.0


def format_eval(metrics: dict[str, float], layouts: Mapping[str, str] | None = None) -> str:
    """One line per data source, naming the metric exactly: 'arith: avg@4 (24 problems x 4) 41.2% | pass@4 70.0% |
    maj@4 45.0%'. With `layouts` (data source -> the layout its files were read with, `RunData.val_layouts`), a
    source read from files ends with it: '| layout olympiadbench (question/final_answer)'."""
    lines = []
    for key, value in sorted(metrics.items()):
        if key.startswith("val-core/") and "/acc/mean@" in key:
            # Sources may contain "/" (verl's "lighteval/MATH", "HuggingFaceH4/MATH-500"): cut at the ends.
            source, k = key.removeprefix("val-core/").rsplit("/acc/mean@", 1)
            problems = metrics.get(f"val-aux/{source}/num_problems")
            over = f" ({int(problems):,} problem{'s' if problems != 1 else ''} x {k})" if problems else ""
            parts = [f"{source}: avg@{k}{over} {100 * value:.1f}%"]
            for name, metric in ((f"pass@{k}", f"acc/pass@{k}"), (f"maj@{k}", f"acc/maj@{k}"),
                                 (f"lenient avg@{k}", f"lenient_acc/mean@{k}")):  # fmt: skip
                aux = metrics.get(f"val-aux/{source}/{metric}")
                if aux is not None and not math.isnan(aux):
                    parts.append(f"{name} {100 * aux:.1f}%")
            if layouts and layouts.get(source):
                parts.append(f"layout {layouts[source]}")
            lines.append(" | ".join(parts))
    return "\n".join(lines)


def results_rows(metrics: dict[str, float], layouts: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per data source from `evaluate`'s metrics: source, problems, k, avg@k, pass@k, maj@k (None
    when k = 1), the lenient avg@k (None for non-numeric answers) and the mean response length; with `layouts`
    (see `format_eval`) also the layout of the source's files (None for the built-in task)."""
    rows = []
    for key in sorted(metrics):
        if key.startswith("val-core/") and "/acc/mean@" in key:
            source, k = key.removeprefix("val-core/").rsplit("/acc/mean@", 1)
            aux = f"val-aux/{source}"
            rows.append({
                "source": source, "problems": int(metrics.get(f"{aux}/num_problems", 0)), "k": int(k),
                f"avg@{k}": metrics[key], f"pass@{k}": metrics.get(f"{aux}/acc/pass@{k}"),
                f"maj@{k}": metrics.get(f"{aux}/acc/maj@{k}"),
                f"lenient avg@{k}": metrics.get(f"{aux}/lenient_acc/mean@{k}"),
                "response_length": metrics.get(f"{aux}/response_length/mean@{k}"),
            })  # fmt: skip
            if layouts is not None:
                rows[-1]["layout"] = layouts.get(source)
    return rows


def results_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The results table in Markdown: accuracies in %, '—' for maj@1 and for a lenient verdict that does not
    apply. A last column names each source's file layout when a row has one (`results_rows` with layouts)."""

    def percent(value) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"

    lines = [
        f"# {title}",
        "",
        "avg@k, pass@k and maj@k use the data source's scorer (strict: its answer format); lenient avg@k counts "
        "a response whose last number is the answer.",
        "",
        "| data source | problems | avg@k | pass@k | maj@k | lenient avg@k | mean response tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    with_layout = any(row.get("layout") for row in rows)
    if with_layout:
        lines[-2:] = [lines[-2] + " file layout |", lines[-1] + "---|"]
    for row in rows:
        k = row["k"]
        lines.append(
            f"| {row['source']} | {row['problems']} | {percent(row[f'avg@{k}'])} (k={k}) | "
            f"{percent(row[f'pass@{k}'])} | {percent(row[f'maj@{k}'])} | {percent(row.get(f'lenient avg@{k}'))} | "
            f"{row['response_length'] or 0:.0f} |" + (f" {row.get('layout') or '—'} |" if with_layout else "")
        )
    return "\n".join(lines) + "\n"
