"""User reward functions: loading them by reference and adapting their results to `ScoreResult`.

Two signatures are accepted (detected from parameter names):

* verl style, called once per sample:
      compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict
  a dict must hold "score" and may hold "acc" and "pred" (verl's `math_dapo` returns exactly these).
* TRL style, called once per batch:
      fn(prompts, completions, **columns) -> list[float | None]
  columns passed (when the function accepts them, by name or through **kwargs): ground_truth,
  data_source, extra_info, response_length, truncated.

Normalisation of what they return: a bare number gives acc = score > 0 (verl HEAD's rule adds `acc` the
same way; without it dynamic sampling cannot filter — verl issue #2318); None means "could not score"
and becomes a failure (score −1, failure "no_answer"), never a silently dropped sample; NaN/inf, a
non-number or a dict without "score" is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dapo.rewards.types import ERROR, INCORRECT_SCORE, MAX_PRED_CHARS, NO_ANSWER, WRONG, ScoreResult

VERL_STYLE, BATCHED_STYLE = "verl", "batched"
BATCH_COLUMNS = ("ground_truth", "data_source", "extra_info", "response_length", "truncated")


def load_callable(ref: str | Callable) -> Callable:
    """A callable given directly, as "package.module:function", or as "path/to/file.py:function"."""
    if callable(ref):
        return ref
    module_ref, sep, name = str(ref).rpartition(":")
    if not sep or not module_ref or not name:
        raise ValueError(f"custom reward function must look like 'module:function' or 'file.py:function', got {ref!r}")
    if module_ref.endswith(".py"):
        path = Path(module_ref).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"custom reward file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"dapo_custom_reward_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_ref)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"{module_ref!r} has no callable {name!r}")
    return fn


def call_style(fn: Callable) -> str:
    """ "verl" or "batched", from the parameter names; TypeError when neither signature fits."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot inspect the signature of custom reward function {fn!r}") from exc
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if names[:2] == ["prompts", "completions"]:
        return BATCHED_STYLE
    if "solution_str" in names or names[:1] == ["data_source"]:
        return VERL_STYLE
    raise TypeError(
        f"custom reward function {getattr(fn, '__name__', fn)!r} has parameters {names}; expected either "
        "compute_score(data_source, solution_str, ground_truth, extra_info=None) or "
        "fn(prompts, completions, **columns)"
    )


def batch_kwargs(fn: Callable, columns: Mapping[str, list]) -> dict[str, list]:
    """The columns `fn` accepts: all of them with **kwargs, else the ones it names."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(columns)
    return {k: v for k, v in columns.items() if k in params}


def _bounded_pred(pred: Any) -> str | None:
    if pred is None:
        return None
    if not isinstance(pred, str | int | float):  # e.g. a sympy object: never str() it
        return f"<{type(pred).__name__}>"
    text = str(pred)
    return text if len(text) <= MAX_PRED_CHARS else text[:MAX_PRED_CHARS] + "…"


def coerce_result(value: Any) -> ScoreResult:
    """A user function's return value as a ScoreResult (rules in the module docstring).

    Raises TypeError / ValueError for values that cannot be a score; the caller names the sample.
    """
    if isinstance(value, ScoreResult):
        return value
    if value is None:
        return ScoreResult(INCORRECT_SCORE, False, None, NO_ANSWER)
    pred, acc = None, None
    if isinstance(value, Mapping):
        if "score" not in value:
            raise ValueError(f"a reward dict must contain 'score', got keys {sorted(map(str, value))}")
        pred, acc, value = _bounded_pred(value.get("pred")), value.get("acc"), value["score"]
    if isinstance(value, str | bytes) or not hasattr(value, "__float__"):
        raise TypeError(f"a reward must be a number, got {type(value).__name__}")
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"a reward must be finite, got {score}")
    correct = bool(acc) if acc is not None else score > 0
    return ScoreResult(score, correct, pred, None if correct else WRONG)


def error_result() -> ScoreResult:
    """What a sample whose scoring raised becomes under on_error="score_as_failure"."""
    return ScoreResult(INCORRECT_SCORE, False, None, ERROR)
