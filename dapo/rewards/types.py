"""The result type every scorer returns.

Pure: no I/O, no project imports. A scorer's verdict is more than a number: the trainer filters groups on
`acc` (never on the shaped reward), logs `pred` for inspection and counts `failure` kinds as metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

NO_ANSWER: Final = "no_answer"
WRONG: Final = "wrong"
TIMEOUT: Final = "timeout"
ERROR: Final = "error"
FAILURE_KINDS: Final = (NO_ANSWER, WRONG, TIMEOUT, ERROR)

# Rule scores of DAPO Eq. 7: +1 when the answer is equivalent to the ground truth, −1 otherwise.
CORRECT_SCORE: Final = 1.0
INCORRECT_SCORE: Final = -1.0

# Longest `pred` we keep: a prediction can be a megabyte of model output, and `pred` ends up in logs.
MAX_PRED_CHARS: Final = 200


@dataclass(frozen=True)
class ScoreResult:
    """The verdict on one response.

    Attributes:
        score: rule score; +1.0 / −1.0 for the built-in scorers (DAPO Eq. 7). User functions may
            return other floats.
        acc: whether the answer is correct. Always a `bool`, also when a user function returned a bare
            float (then `acc = score > 0`); dynamic sampling filters on it.
        pred: the normalised prediction, a plain `str` of at most MAX_PRED_CHARS characters, or None
            when no answer was found. Never a sympy object.
        failure: None when correct, else one of "no_answer", "wrong", "timeout", "error".
    """

    score: float
    acc: bool
    pred: str | None
    failure: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.acc, bool):
            raise TypeError(f"ScoreResult.acc must be a bool, got {type(self.acc).__name__}")
        if self.failure is not None and self.failure not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {self.failure!r}; expected one of {FAILURE_KINDS}")
        if self.acc and self.failure is not None:
            raise ValueError(f"a correct result cannot carry failure={self.failure!r}")
        if self.pred is not None and not isinstance(self.pred, str):
            raise TypeError(f"ScoreResult.pred must be a str or None, got {type(self.pred).__name__}")


def verdict(correct: bool, pred: str | None) -> ScoreResult:
    """±1 result of a built-in scorer: correct, wrong, or no answer found (pred None)."""
    if pred is not None and len(pred) > MAX_PRED_CHARS:
        pred = pred[:MAX_PRED_CHARS] + "…"
    if correct:
        return ScoreResult(CORRECT_SCORE, True, pred, None)
    return ScoreResult(INCORRECT_SCORE, False, pred, NO_ANSWER if pred is None else WRONG)
