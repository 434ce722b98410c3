"""Boxed / LaTeX answers (MATH-500 style): extraction of the last `\\boxed{...}`, a string normal form, and
the split between what is decided here (cheaply, in-process) and what needs a symbolic check.

The symbolic check itself (math-verify + sympy) runs in `dapo.rewards.symbolic` inside a `KillablePool`
worker, never in the trainer's process: sympy can hang on model output, and math-verify's timeouts rely on
SIGALRM. This module never parses into sympy. Pure and bounded: O(len(response)) for one `rfind`, then
O(MAX_ANSWER_CHARS).

Worked example (ground truth "\\frac{1}{2}"):
    "... so the answer is $\\boxed{\\dfrac{1}{2}}$."   -> decided here: normal forms equal -> +1
    "... = \\boxed{0.5}"                              -> decided here: equal values -> +1
    "... = \\boxed{\\sin(\\pi/6)}"                     -> pending: the symbolic worker decides
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dapo.rewards.dapo_answer import _tolerant_prediction
from dapo.rewards.text import MAX_ANSWER_CHARS, last_boxed, numbers_equal, parse_number, sanitize
from dapo.rewards.types import ScoreResult, verdict

# How much of the end of a response is searched for the final box. A solution's final answer is at its
# end; bounding the window bounds the work on a megabyte of output.
ANSWER_WINDOW_CHARS = 8192

# Longer answers are compared as strings only, never parsed symbolically.
MAX_SYMBOLIC_CHARS = 400

_REMOVE = (
    "\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "^\\circ", "^{\\circ}",
    "\\circ", "\\%", "%", "\\$", "\\mathrm{th}",
)  # fmt: skip
_BASE_NUMERAL = re.compile(r"[0-9A-Za-z]+_\{?\d+\}?")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize_latex(answer: str) -> str:
    """Cheap string normal form of a LaTeX answer, for the in-process fast path.

    Removes spacing commands, `\\left`/`\\right`, `$`, degree and percent marks and all whitespace,
    unwraps `\\text{...}`, maps `\\dfrac`/`\\tfrac` to `\\frac`, drops a trailing period and a leading
    `x =`-style assignment of a single variable.

    >>> normalize_latex(r"\\left( 3, \\dfrac{\\pi}{2} \\right).")
    '(3,\\\\frac{\\\\pi}{2})'
    """
    s = answer
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = "".join(s.split()).rstrip(".")
    s = re.sub(r"^[a-zA-Z]=(?!.*=)", "", s)
    return s


def extract_math_answer(response: str | bytes) -> str | None:
    """The final answer of a MATH-style response: the content of the last `\\boxed{}` in the last
    ANSWER_WINDOW_CHARS characters; if there is none, the last `Answer:` line (DAPO format). None when
    neither is present or the box is unterminated / longer than MAX_ANSWER_CHARS."""
    window = sanitize(response[-ANSWER_WINDOW_CHARS:])
    boxed = last_boxed(window, MAX_ANSWER_CHARS)
    if boxed is not None:
        return boxed.strip()
    if "\\boxed" in window[-MAX_ANSWER_CHARS:] or "\\fbox" in window[-MAX_ANSWER_CHARS:]:
        return None  # an unterminated final box is no answer, not a fallback to an earlier line
    return _tolerant_prediction(window)


@dataclass(frozen=True)
class MathCheck:
    """The in-process part of scoring one MATH-style response.

    Attributes:
        result: the verdict when it could be decided without sympy, else None.
        pred: the extracted answer (bounded str) or None.
        ground_truth: the ground truth answer, stripped.
    """

    result: ScoreResult | None
    pred: str | None
    ground_truth: str

    @property
    def needs_symbolic(self) -> bool:
        return self.result is None


def check_math_answer(response: str | bytes, ground_truth: str) -> MathCheck:
    """Decide what can be decided cheaply: no answer, equal normal forms, equal or different plain
    numbers, answers too long to parse. Everything else is left to `symbolic.symbolic_equal`."""
    gt = ground_truth.strip()
    pred = extract_math_answer(response)
    if pred is None:
        return MathCheck(verdict(False, None), None, gt)
    p, g = normalize_latex(pred), normalize_latex(gt)
    if _BASE_NUMERAL.fullmatch(g) or _BASE_NUMERAL.fullmatch(p):
        # "52_8" (52 in base 8): math-verify drops the subscript and would accept "52_9"; compare exactly.
        return MathCheck(
            verdict(p.replace("{", "").replace("}", "") == g.replace("{", "").replace("}", ""), pred), pred, gt
        )
    if p == g or numbers_equal(p, g):
        return MathCheck(verdict(True, pred), pred, gt)
    if parse_number(p) is not None and parse_number(g) is not None:
        return MathCheck(verdict(False, pred), pred, gt)
    if len(pred) > MAX_SYMBOLIC_CHARS or len(gt) > MAX_SYMBOLIC_CHARS or not p:
        return MathCheck(verdict(False, pred), pred, gt)
    return MathCheck(None, pred, gt)
