"""The reward step: score a batch of responses, add the soft overlong punishment, report metrics.

    reward_i = score_i + R_length(|y_i|)        (DAPO Eq. 7 + Eq. 13, §2.4 and §3.4)
    acc_i    = is the answer correct            (never shaped: dynamic sampling filters on acc)

Routing by `data_source` (table in docs/rewards.md): DAPO "Answer:" scorer for DAPO-Math / AIME / AMC and
the built-in "arith" task, boxed + symbolic for MATH and the benchmarks with LaTeX answers (OlympiadBench,
Minerva Math, College Math, GaoKao, HMMT), GSM8K numeric for GSM8K; a `custom` user function replaces the
routing entirely. Answers in several parts or with a unit are judged part by part (`dapo.rewards.parts`).
The symbolic checks run in a `KillablePool` (hard per-item deadline), started lazily on first need and
stopped by `close()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dapo.algo.shaping import overlong_penalty
from dapo.errors import DapoError
from dapo.rewards.custom import (
    BATCHED_STYLE,
    batch_kwargs,
    call_style,
    coerce_result,
    error_result,
    load_callable,
)
from dapo.rewards.dapo_answer import DEFAULT_READ_CHARS, SCORER_MODES, score_dapo
from dapo.rewards.gsm8k import score_gsm8k
from dapo.rewards.math_answer import check_math_answer
from dapo.rewards.parts import answer_spec, check_math_parts, score_dapo_parts
from dapo.rewards.pool import KillablePool
from dapo.rewards.types import ERROR, INCORRECT_SCORE, NO_ANSWER, TIMEOUT, ScoreResult, verdict

DAPO, MATH, GSM8K = "dapo_answer", "math_symbolic", "gsm8k"
ON_ERROR_MODES = ("raise", "score_as_failure")

# data_source -> scorer. Matching is case-insensitive; the prefixes catch "aime-2024", "amc23", ...
EXACT_ROUTES: Mapping[str, str] = {
    "math_dapo": DAPO,
    "math_dapo_reasoning": DAPO,
    "dapo-17k": DAPO,
    "dapo_math": DAPO,
    "dapo-math-17k": DAPO,
    "arith": DAPO,
    "math": MATH,
    "math500": MATH,
    "math-500": MATH,
    "math_500": MATH,
    "huggingfaceh4/math-500": MATH,
    "lighteval/math": MATH,
    "digitallearninggmbh/math-lighteval": MATH,
    "gsm8k": GSM8K,
    "openai/gsm8k": GSM8K,
}
# Benchmarks with LaTeX answers (OlympiadBench, Minerva Math, College Math, GaoKao, HMMT) go to the MATH scorer:
# it reads a final box or an `Answer:` line, and decides equivalence symbolically.
PREFIX_ROUTES: Mapping[str, str] = {
    "aime": DAPO,
    "amc": DAPO,
    "olympiad": MATH,
    "minerva": MATH,
    "college_math": MATH,
    "gaokao": MATH,
    "hmmt": MATH,
}


class RewardFunctionError(DapoError, RuntimeError):
    """A scorer or user reward function raised on a sample (on_error="raise")."""


def route(data_source: str) -> str:
    """The built-in scorer for a data source; ValueError naming the known ones otherwise."""
    key = data_source.strip().lower()
    if key in EXACT_ROUTES:
        return EXACT_ROUTES[key]
    for prefix, scorer in PREFIX_ROUTES.items():
        if key.startswith(prefix):
            return scorer
    known = ", ".join([*EXACT_ROUTES, *(f"{p}*" for p in PREFIX_ROUTES)])
    raise ValueError(
        f"no built-in scorer for data_source {data_source!r}; known data sources: {known}. "
        "Pass custom=... to build_reward_function for other data."
    )


@dataclass(frozen=True)
class RewardSample:
    """One response to score.

    Attributes:
        prompt: the rendered prompt text (user functions may read it; built-in scorers do not).
        response: the decoded response text, EOS string removed.
        response_length: |y| in tokens, EOS included (what Eq. 13 is computed on).
        truncated: True when generation hit the length cap without EOS.
        ground_truth: the reference answer.
        data_source: routes the sample to a scorer.
        extra: the record's extra fields, passed to user functions as `extra_info`. Its `answer_parts` and
            `answer_unit` (an answer in several parts, an answer with a unit) change how the built-in DAPO
            (default mode) and MATH scorers read the answer: `dapo.rewards.parts`.
    """

    prompt: str
    response: str
    response_length: int
    truncated: bool
    ground_truth: str
    data_source: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardBatch:
    """Rewards of a batch of B responses.

    Attributes:
        scores: (B,) float32 rule score (±1 for the built-in scorers).
        rewards: (B,) float32 scores + overlong_penalty: what advantages are computed from.
        acc: (B,) bool correctness, never shaped; dynamic sampling filters on it.
        overlong_penalty: (B,) float32 R_length (DAPO Eq. 13) × penalty factor; zeros when disabled.
        preds: normalised predictions (bounded str or None), for logging.
        failures: None or the failure kind of each response.
        metrics: batch metrics, keys "reward/..." (see docs/rewards.md).
    """

    scores: Tensor
    rewards: Tensor
    acc: Tensor
    overlong_penalty: Tensor
    preds: tuple[str | None, ...]
    failures: tuple[str | None, ...]
    metrics: dict[str, float]


@dataclass(frozen=True)
class RewardSettings:
    """How the reward step is built: the same value in the driver and in every Ray reward worker."""

    overlong_enable: bool
    """add the soft overlong punishment (DAPO Eq. 13) to the reward"""
    max_response_length: int
    """L_max, the generation cap in tokens (paper: 20480)"""
    overlong_buffer_length: int
    """L_cache (paper: 4096)"""
    overlong_penalty_factor: float
    """scale of the punishment (paper: 1.0)"""
    custom: str | Callable | None = None
    """a user reward function (callable, "module:function" or "path/file.py:function"; the two accepted
    signatures are in `dapo.rewards.custom`); replaces the data-source routing"""
    on_error: str = "raise"
    """"raise" (a sample whose scoring raises stops the step with an error naming the sample and its data
    source) or "score_as_failure" (score −1, failure "error", counted in `reward/num_errors`)"""
    num_workers: int = 0
    """worker processes. Symbolic (math-verify) checks always run in a pool of max(1, num_workers) processes;
    the DAPO scorer runs in it too for batches of at least `parallel_min_batch` responses when num_workers > 0"""
    scorer_mode: str = "default"
    """"default" (never accepts a wrong answer) or "verl" (verl's math_dapo verdict for verdict)"""
    symbolic_timeout_s: float = 5.0
    """math-verify's budget per symbolic check; the worker is killed 1 s after it"""
    parallel_min_batch: int = 1_000_000
    """smallest batch scored in the pool (the default never does: bench/results shows the in-process DAPO
    scorer is faster than shipping text to workers)"""


class RewardFunction:
    """Built once, called on every batch. Use as a context manager or call `close()` to stop the worker pool."""

    def __init__(self, settings: RewardSettings) -> None:
        s = self.settings = settings
        custom, on_error, scorer_mode, num_workers = s.custom, s.on_error, s.scorer_mode, s.num_workers
        overlong_enable, overlong_buffer_length = s.overlong_enable, s.overlong_buffer_length
        max_response_length = s.max_response_length
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
        if scorer_mode not in SCORER_MODES:
            raise ValueError(f"scorer_mode must be one of {SCORER_MODES}, got {scorer_mode!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {num_workers}")
        if overlong_enable and not 0 < overlong_buffer_length <= max_response_length:
            raise ValueError(
                f"need 0 < overlong_buffer_length ≤ max_response_length, got "
                f"{overlong_buffer_length} and {max_response_length}"
            )
        self.custom = None if custom is None else load_callable(custom)
        self.custom_style = None if self.custom is None else call_style(self.custom)
        self.overlong_enable = overlong_enable
        self.max_response_length = max_response_length
        self.overlong_buffer_length = overlong_buffer_length
        self.overlong_penalty_factor = s.overlong_penalty_factor
        self.on_error = on_error
        self.num_workers = num_workers
        self.scorer_mode = scorer_mode
        self.symbolic_timeout_s = s.symbolic_timeout_s
        self.parallel_min_batch = s.parallel_min_batch
        self._pool: KillablePool | None = None
        self.index_offset = 0  # added to the sample index errors name (a reward worker scores one chunk)

    # --- public -----------------------------------------------------------------------------------------
    def __call__(self, samples: Sequence[RewardSample]) -> RewardBatch:
        results, num_symbolic = self.score_results(samples)
        scores = torch.tensor([r.score for r in results], dtype=torch.float32)
        acc = torch.tensor([r.acc for r in results], dtype=torch.bool)
        lengths = torch.tensor([s.response_length for s in samples], dtype=torch.long)
        if self.overlong_enable:
            penalty = overlong_penalty(
                lengths, self.max_response_length, self.overlong_buffer_length, self.overlong_penalty_factor
            )
        else:
            penalty = torch.zeros(len(samples), dtype=torch.float32)
        failures = tuple(r.failure for r in results)
        metrics = {**_batch_metrics(scores, acc, penalty, failures, samples, num_symbolic), **self._extra_metrics()}
        return RewardBatch(scores, scores + penalty, acc, penalty, tuple(r.pred for r in results), failures, metrics)

    def close(self) -> None:
        """Stop the worker pool (idempotent; a later call restarts it on demand)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scoring ----------------------------------------------------------------------------------------
    def score_results(self, samples: Sequence[RewardSample]) -> tuple[list[ScoreResult], int]:
        """The rule score of every sample, unshaped, and how many needed a symbolic check (what a scoring
        worker computes: `dapo.rewards.ray_pool`)."""
        if self.custom is not None:
            return self._score_custom(samples), 0
        routes = [route(s.data_source) for s in samples]  # fail before any work on an unknown source
        results: list[ScoreResult | None] = [None] * len(samples)
        dapo_idx = [i for i, r in enumerate(routes) if r == DAPO]
        self._score_dapo(samples, dapo_idx, results)
        pending: list[int] = []
        for i, r in enumerate(routes):
            if r == GSM8K:
                results[i] = self._guarded(i, samples[i], lambda s: score_gsm8k(s.response, s.ground_truth))
            elif r == MATH:
                check = self._guarded(i, samples[i], _math_check)
                if isinstance(check, ScoreResult):  # the guard turned an exception into a failure
                    results[i] = check
                elif check.needs_symbolic:
                    pending.append(i)
                    results[i] = check  # placeholder: the in-process check, until the pool decides
                else:
                    results[i] = check.result
        if pending:
            self._score_symbolic(pending, results)
        return results, len(pending)  # type: ignore[return-value]

    def _extra_metrics(self) -> dict[str, float]:
        return {}

    def _guarded(self, index: int, sample: RewardSample, fn: Callable[[RewardSample], Any]) -> Any:
        try:
            return fn(sample)
        except Exception as exc:
            return self._on_exception(exc, index, sample.data_source, "built-in scorer")

    def _on_exception(self, exc: Exception, index: int, data_source: str, what: str) -> ScoreResult:
        if self.on_error == "raise":
            raise RewardFunctionError(
                f"{what} raised {type(exc).__name__} on sample {index + self.index_offset} "
                f"(data_source={data_source!r}): {exc}. "
                "Pass on_error='score_as_failure' to score such samples as failures instead."
            ) from exc
        return error_result()

    def _score_dapo(self, samples: Sequence[RewardSample], idx: list[int], results: list) -> None:
        if self.num_workers > 0 and len(idx) >= self.parallel_min_batch:
            # Answers in parts or with a unit are scored in-process: the pool's unit of work is the plain scorer.
            special = {i for i in idx if answer_spec(samples[i].ground_truth, samples[i].extra) is not None}
            for i in sorted(special):
                results[i] = self._guarded(i, samples[i], self._dapo_one)
            idx = [i for i in idx if i not in special]
            chunks = [idx[k :: self.num_workers] for k in range(self.num_workers)]
            args = [
                (
                    [samples[i].response[-DEFAULT_READ_CHARS:] for i in c],  # all a DAPO scorer reads
                    [samples[i].ground_truth for i in c],
                    self.scorer_mode,
                )
                for c in chunks
            ]
            outcomes = self._get_pool().map("dapo.rewards.dapo_answer:score_dapo_many", args, timeout_s=60.0)
            for chunk, outcome in zip(chunks, outcomes, strict=True):
                if outcome.status == "ok":
                    for i, r in zip(chunk, outcome.value, strict=True):
                        results[i] = r
                else:  # fall back to in-process scoring: it is bounded, so this cannot hang
                    for i in chunk:
                        results[i] = self._guarded(i, samples[i], self._dapo_one)
            return
        for i in idx:
            results[i] = self._guarded(i, samples[i], self._dapo_one)

    def _dapo_one(self, s: RewardSample) -> ScoreResult:
        spec = answer_spec(s.ground_truth, s.extra) if self.scorer_mode == "default" else None
        if spec is not None:
            return score_dapo_parts(s.response, spec)
        return score_dapo(s.response, s.ground_truth, self.scorer_mode)

    def _score_symbolic(self, pending: list[int], results: list) -> None:
        # One check per pending sample; an answer in several parts has one (gold, pred) pair per undecided part,
        # and is right only when all of them hold.
        owners = [i for i in pending for _ in results[i].symbolic_pairs]
        # What math-verify compares is the check's (gold, pred), not the raw texts (decimals made exact).
        args = [(*pair, self.symbolic_timeout_s) for i in pending for pair in results[i].symbolic_pairs]
        # The hard deadline leaves math-verify's own (SIGALRM) timeouts room to fire first.
        deadline = self.symbolic_timeout_s + 1.0
        outcomes = self._get_pool().map("dapo.rewards.symbolic:symbolic_equal", args, deadline)
        by_sample: dict[int, list] = {i: [] for i in pending}
        for i, outcome in zip(owners, outcomes, strict=True):
            by_sample[i].append(outcome)
        for i in pending:
            pred = results[i].pred
            failed = [o for o in by_sample[i] if o.status != "ok"]
            if any(o.status == "ok" and not o.value for o in by_sample[i]):
                results[i] = verdict(False, pred)  # one part is wrong: the answer is, whatever the others did
            elif failed:
                failure = TIMEOUT if any(o.status == "timeout" for o in failed) else ERROR
                results[i] = ScoreResult(INCORRECT_SCORE, False, verdict(False, pred).pred, failure)
            else:
                results[i] = verdict(True, pred)

    def _score_custom(self, samples: Sequence[RewardSample]) -> list[ScoreResult]:
        fn, name = self.custom, getattr(self.custom, "__name__", repr(self.custom))
        assert fn is not None
        if self.custom_style == BATCHED_STYLE:
            columns = {
                "ground_truth": [s.ground_truth for s in samples],
                "data_source": [s.data_source for s in samples],
                "extra_info": [dict(s.extra) for s in samples],
                "response_length": [s.response_length for s in samples],
                "truncated": [s.truncated for s in samples],
            }
            try:
                values = fn([s.prompt for s in samples], [s.response for s in samples], **batch_kwargs(fn, columns))
                values = list(values)
                if len(values) != len(samples):
                    raise ValueError(f"returned {len(values)} rewards for {len(samples)} samples")
            except Exception as exc:
                if self.on_error == "raise":
                    sources = sorted({s.data_source for s in samples})
                    raise RewardFunctionError(
                        f"custom reward function {name!r} raised {type(exc).__name__} on a batch of "
                        f"{len(samples)} samples (data sources {sources}): {exc}"
                    ) from exc
                return [error_result() for _ in samples]
        else:
            values = [None] * len(samples)
        results = []
        for i, s in enumerate(samples):
            try:
                value = (
                    values[i]
                    if self.custom_style == BATCHED_STYLE
                    else fn(s.data_source, s.response, s.ground_truth, dict(s.extra))
                )
                results.append(coerce_result(value))
            except Exception as exc:
                results.append(self._on_exception(exc, i, s.data_source, f"custom reward function {name!r}"))
        return results

    def _get_pool(self) -> KillablePool:
        if self._pool is None:
            warm = ("dapo.rewards.dapo_answer", "dapo.rewards.symbolic", "math_verify")
            self._pool = KillablePool(max(1, self.num_workers), warm_modules=warm)
        return self._pool


def _math_check(s: RewardSample):
    """The MATH scorer's in-process check of one sample, by parts when its record sets them (or a unit)."""
    spec = answer_spec(s.ground_truth, s.extra)
    return check_math_answer(s.response, s.ground_truth) if spec is None else check_math_parts(s.response, spec)


def _batch_metrics(
    scores: Tensor,
    acc: Tensor,
    penalty: Tensor,
    failures: tuple[str | None, ...],
    samples: Sequence[RewardSample],
    num_symbolic: int,
) -> dict[str, float]:
    n = max(1, len(failures))
    nan = math.nan
    return {
        "reward/score_mean": scores.mean().item() if len(failures) else nan,
        "reward/acc_mean": acc.float().mean().item() if len(failures) else nan,
        "reward/num_errors": float(sum(f == ERROR for f in failures)),
        "reward/num_timeouts": float(sum(f == TIMEOUT for f in failures)),
        "reward/no_answer_frac": sum(f == NO_ANSWER for f in failures) / n,
        "reward/overlong_frac": (penalty < 0).float().mean().item() if len(failures) else nan,
        "reward/overlong_penalty_mean": penalty.mean().item() if len(failures) else nan,
        "reward/truncated_frac": sum(bool(s.truncated) for s in samples) / n,
        "reward/num_symbolic_checks": float(num_symbolic),
    }


def build_reward_function(**settings: Any) -> RewardFunction:
    """The reward step from `RewardSettings`' fields given as keywords (documented there)."""
    return RewardFunction(RewardSettings(**settings))
