"""Boxed / LaTeX answers (MATH-500 style): extraction of the final `\\boxed{...}`, the canonical form shared
with the DAPO default mode, and the split between what is decided here (cheaply, in-process) and what needs
a symbolic check.

Never accepts a wrong answer, the product rule of the DAPO default mode (docs/rewards.md): a right answer
may be missed, a wrong one is never taken. Three things stand in the way of math-verify's leniencies:

* the answer is a box that ends the response (`final_boxed`): `\\boxed{5}. Wait, that is wrong: it is 6.`
  has no answer, rather than the retracted 5;
* equality is decided on the DAPO canonical form (`canonical_answer`), whose every step keeps the value:
  `5 40` stays two numbers, a dropped percent sign is accepted only when the ground truth has one, an
  added one only after a bare number whose value is the bare-number ground truth (`10\\%` for 10, never
  for 0.1);
* before math-verify runs, `_states_more` rejects a prediction that says more than the ground truth in a
  way math-verify ignores: words or variables the ground truth lacks (`540 apples`, `540\\text{ thousand}`;
  units of the closed list aside), an equation that is not an assignment (`2x = 540`), a hedge or a mark
  (`\\approx`, `\\ldots`, `\\pm`, a degree sign, a prime). Decimals go to math-verify as the exact
  fractions they write, so its 6-place rounding cannot take `1.414214` for `\\sqrt{2}`.

The symbolic check itself (math-verify + sympy) runs in `dapo.rewards.symbolic` inside a `KillablePool`
worker, never in the trainer's process: sympy can hang on model output, and math-verify's timeouts rely on
SIGALRM. This module never parses into sympy. Pure and bounded: O(len(response)) for one `rfind`, then
O(MAX_ANSWER_CHARS).

Worked example (ground truth "\\frac{1}{2}"):
    "... so the answer is $\\boxed{\\dfrac{1}{2}}$."   -> decided here: canonical forms equal -> +1
    "... = \\boxed{0.5}"                              -> decided here: equal values -> +1
    "... = \\boxed{\\frac{1}{2} \\text{ cups}}"          -> decided here: a word the ground truth lacks -> −1
    "... = \\boxed{\\sin(\\pi/6)}"                     -> pending: the symbolic worker decides
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from dapo.rewards.dapo_answer import canonical_answer, canonical_spaced, same_value
from dapo.rewards.text import (
    MAX_ANSWER_CHARS,
    final_answer,
    final_boxed,
    has_equals,
    parse_number,
    tail,
)
from dapo.rewards.types import ScoreResult, verdict

# How much of the end of a response is searched for the final box. A solution's final answer is at its
# end; bounding the window bounds the work on a megabyte of output.
ANSWER_WINDOW_CHARS = 8192

# Longer answers are compared as strings only, never parsed symbolically.
MAX_SYMBOLIC_CHARS = 400

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BASE_NUMERAL = re.compile(r"[0-9A-Za-z]+_\{?\d+\}?")
# Marks that change what an answer states and that math-verify drops or forgives: `540 \ldots`, `540 \pm 0`
# and `540'` are 540 to it, `\frac{\pi}{2}^\circ` is `\frac{\pi}{2}`. (A degree sign after a plain number
# is a unit, removed by `canonical_spaced` before this is read: `90^\circ` is 90.)
_MARKS = re.compile(r"\\(?:[lc]?dots|approx|sim|simeq|pm|mp|circ|degree|prime)(?![A-Za-z])|[°']")
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]+")
# What makes an answer more than a plain number though its canonical form drops it: a dollar sign, a power
# (`^2` of a unit, `^\\circ`), a degree sign.
_NOT_BARE = re.compile(r"\\\$|\^|°")
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_THOUSANDS_GROUP = re.compile(r"\d,\d{3}\.")  # `1,234.5`: `234.5` is not a numeral of its own


def normalize_latex(answer: str) -> str:
    """String normal form of a LaTeX answer for the in-process fast path: the DAPO default mode's
    `canonical_answer`, whose every step keeps the value, so two answers with equal forms are equal.

    Spacing commands, `\\left`/`\\right`, `$`, `\\text{...}`, `\\dfrac`, a trailing period, an assignment
    to a name (`x =`) and a unit of the closed list after a plain number (`90^\\circ`) go; whitespace goes
    except between two digits (`5 40` is not 540); `\\%` is kept as `%` (`check_math_answer` decides it).

    >>> normalize_latex(r"\\left( 3, \\dfrac{\\pi}{2} \\right)."), normalize_latex("5 40")
    ('(3,\\\\frac{\\\\pi}{2})', '5 40')
    """
    return canonical_answer(answer)


def extract_math_answer(response: str | bytes) -> str | None:
    """The final answer of a MATH-style response, from its last ANSWER_WINDOW_CHARS characters: the content
    of a box that ends the response (`final_boxed`: only `$`, `\\]`, `\\)`, `.`, markdown, whitespace or an
    end-of-sequence marker after it); else the last `Answer:` line after the last box (DAPO format). A box
    followed by more text has been left behind: `\\boxed{5}. Wait, that is wrong: it is 6.` is no answer
    rather than a 5 the response retracted. None also for an unterminated box or one longer than
    MAX_ANSWER_CHARS."""
    window = tail(response, ANSWER_WINDOW_CHARS)
    boxed = final_boxed(window, MAX_ANSWER_CHARS)
    if boxed is not None:
        return boxed.strip()
    last_box = max(window.rfind(cmd) for cmd in _BOX_COMMANDS)
    return final_answer(window[max(last_box, 0) :])


@dataclass(frozen=True)
class MathCheck:
    """The in-process part of scoring one MATH-style response.

    Attributes:
        result: the verdict when it could be decided without sympy, else None.
        pred: the extracted answer (bounded str) or None.
        ground_truth: the ground truth answer, stripped.
        symbolic_pairs: when the verdict is pending, the (gold, pred) pairs for `symbolic.symbolic_equal`, all
            of which must hold: what math-verify compares (decimals of the prediction written as exact
            fractions). One pair for one answer; one per undecided part for an answer in several parts
            (`dapo.rewards.parts`).
    """

    result: ScoreResult | None
    pred: str | None
    ground_truth: str
    symbolic_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def needs_symbolic(self) -> bool:
        return self.result is None

    @property
    def symbolic_args(self) -> tuple[str, str] | None:
        """The one (gold, pred) pair of a pending single answer, else None."""
        return self.symbolic_pairs[0] if len(self.symbolic_pairs) == 1 else None


def _words(s: str) -> list[str]:
    """The runs of letters of `s` outside command and environment names: `12\\pi r \\text{ cm}` -> r, cm."""
    return _WORD.findall(_COMMAND.sub(" ", _ENVIRONMENT.sub(" ", s)))


def _unexplained_words(pred: str, gt: str) -> list[str]:
    """Words of `pred` that `gt` does not contain. A word is explained by the same word in `gt` (any case:
    `\\text{East}` for `\\text{east}`), or, letter by letter, by `gt`'s one-letter variables (case counts:
    `ab` for `(a+5)(b+2)`, not `3r^2` for `3R^2`)."""
    gt_words = _words(gt)
    known = {w.lower() for w in gt_words if len(w) > 1}
    variables = {w for w in gt_words if len(w) == 1}
    return [w for w in _words(pred) if w.lower() not in known and not set(w) <= variables]


def adds_words_or_marks(pred: str, gt: str) -> bool:
    """Whether `pred` has a word (`540 apples`, a unit: `5 km`, `5\\text{ m}`) or a mark (`\\pm`, `\\approx`, a
    degree sign, a prime) that `gt` does not have (`_unexplained_words`, `_MARKS`)."""
    return bool(_unexplained_words(pred, gt)) or bool(set(_MARKS.findall(pred)) - set(_MARKS.findall(gt)))


def _states_more(pred: str, gt: str) -> bool:
    """Whether `pred` (its `canonical_spaced` form: units after a plain number and assignments to a name
    already gone) says something `gt` (as given) does not, in a way math-verify would overlook: it reads a
    leading value and drops trailing text (`540 apples`, `540\\text{ thousand}`, `540\\text{ or more}` are
    540 to it), solves an equation for its right side (`2x = 540`), and forgives the `_MARKS`."""
    if adds_words_or_marks(pred, gt):
        return True
    return has_equals(pred) and not has_equals(gt)


def _latex_number(value: Fraction) -> str:
    """An exact value as LaTeX math-verify reads exactly: `540`, `-\\frac{27}{2}`."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _exact_decimals(s: str) -> str:
    """Every decimal numeral of `s` written as the fraction it denotes (`0.333333` -> `{\\frac{333333}{1000000}}`).
    math-verify rounds floats to 6 places before comparing, so it would accept an approximation
    (`1.414214` for `\\sqrt{2}`, `(3,1.570796)` for `(3, \\frac{\\pi}{2})`); fractions it compares exactly."""

    def exact(m: re.Match[str]) -> str:
        if m.start() >= 2 and _THOUSANDS_GROUP.match(s, m.start() - 2, m.end()):
            return m[0]
        return f"{{\\frac{{{int(m[1] + m[2])}}}{{1{'0' * len(m[2])}}}}}"

    return _DECIMAL.sub(exact, s)


def _symbolic_form(answer: str, value: Fraction | None) -> str:
    """What math-verify is given for one side: a plain number as its exact value (`15\\mbox{ cm}^2` -> 15,
    `.0000672` -> `\\frac{21}{312500}`), anything else with its decimals made exact (`_exact_decimals`).
    A float on either side would be compared rounded to 6 places: `.0000672` = `6.73 \\times 10^{-5}`."""
    return _latex_number(value) if value is not None else _exact_decimals(answer)


def _bare_number(answer: str) -> bool:
    """Whether `answer` (as written) is a plain number and nothing else: no word, unit, dollar sign, power
    or degree sign that its canonical form would drop (`15\\mbox{ cm}^2`, `\\$32,\\!348` and `90^\\circ` are
    not bare; `\\frac{1}{2}` and `1,000` are)."""
    return (
        parse_number(normalize_latex(answer).replace("%", "", 1)) is not None
        and not _words(answer)
        and not _NOT_BARE.search(answer)
    )


def _percent_agrees(pred: str, gt: str, raw_pred: str, raw_gt: str) -> tuple[str, str] | None:
    """Canonical forms with `%` removed, or None when `pred` has a percent sign that `gt` lacks and is not
    a bare number followed by one sign for a bare-number `gt`.

    MATH's own normaliser strips `\\%`, and MATH asks "By what percent does the area decrease?" with ground
    truth 10: `10\\%` for 10 is right. It is compared by exact value here, never as a fraction (math-verify
    would take `10\\%` for 0.1 and accept it for `0.1`). Any other percent sign the ground truth lacks is
    rejected: on an expression (`\\pi\\%`), before more text (`10\\% of 5`), for a ground truth with a unit
    (`15\\%` for `15\\mbox{ cm}^2`); `50\\%` for `\\frac{1}{2}` is a right answer missed. A dropped percent sign
    is accepted when `gt` has one (`50` for `50\\%`, the MATH convention)."""
    if "%" in pred and "%" not in gt:
        if not (pred.endswith("%") and pred.count("%") == 1 and _bare_number(raw_pred) and _bare_number(raw_gt)):
            return None
        return pred[:-1], gt
    return pred.replace("%", ""), gt.replace("%", "")


def check_math_answer(response: str | bytes, ground_truth: str) -> MathCheck:
    """Decide what can be decided cheaply: no answer, equal canonical forms, equal or different plain
    numbers, percent and base-subscript rules, numerals side by side, answers too long to parse, predictions
    that say more than the ground truth (`_states_more`). Everything else is left to `symbolic.symbolic_equal`,
    given `MathCheck.symbolic_pairs`."""
    return check_math_pred(extract_math_answer(response), ground_truth)


def check_math_pred(pred: str | None, ground_truth: str) -> MathCheck:
    """`check_math_answer` on an answer already extracted from its response (None: there was none)."""
    gt = ground_truth.strip()
    if pred is None:
        return MathCheck(verdict(False, None), None, gt)
    forms = _percent_agrees(normalize_latex(pred), normalize_latex(gt), pred, gt)
    if forms is None:
        return MathCheck(verdict(False, pred), pred, gt)
    p, g = forms
    if _BASE_NUMERAL.fullmatch(g) or _BASE_NUMERAL.fullmatch(p):
        # "52_8" (52 in base 8): math-verify drops the subscript and would accept "52_9"; compare exactly.
        return MathCheck(
            verdict(p.replace("{", "").replace("}", "") == g.replace("{", "").replace("}", ""), pred), pred, gt
        )
    if p == g or same_value(pred, gt, p, g):
        return MathCheck(verdict(True, pred), pred, gt)
    value, gt_value = parse_number(p), parse_number(g)
    if value is not None and gt_value is not None:
        return MathCheck(verdict(False, pred), pred, gt)
    # The canonical form keeps a space only between two digits: `5 40` is two numerals, not one answer.
    if len(pred) > MAX_SYMBOLIC_CHARS or len(gt) > MAX_SYMBOLIC_CHARS or not p or " " in p:
        return MathCheck(verdict(False, pred), pred, gt)
    # Read with `\!` as a space: the canonical form drops it (`10,\!080`), which would glue `12\pi\!apples`
    # into one command name and hide its word.
    if _states_more(canonical_spaced(pred.replace("\\!", "\\ ")), gt):
        return MathCheck(verdict(False, pred), pred, gt)
    # A ground truth that is an equation (`x=5`) goes as written, so that `2x = 5` is compared as an equation.
    gold = _symbolic_form(gt, None if has_equals(gt) else gt_value)
    return MathCheck(None, pred, gt, ((gold, _symbolic_form(pred, value)),))
