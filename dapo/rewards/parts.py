"""Answers in several parts and answers given with a unit (OlympiadBench's `is_multiple_answer` and `unit`).

The data readers (`dapo.data.records`) put them in a record's extra fields, which reach the reward step as
`RewardSample.extra`:

* `answer_parts` (ANSWER_PARTS_KEY): the parts of an answer that has several, in order: the elements of a list
  answer of several, or OlympiadBench's one element split at its top-level commas when `is_multiple_answer`
  is set. A list of one element is one answer and sets no parts;
* `answer_unit` (ANSWER_UNIT_KEY): the unit the answer is given in (OlympiadBench's `unit`), without `$`.

The promise of the default scorers holds here too: a right answer may be missed, a wrong one is never accepted.

* Several parts: the response's final answer (what the data source's scorer extracts: its final box, or its
  `Answer:` line) is split at its top-level commas (`split_answers`). It needs exactly as many parts, and
  part i is judged against ground-truth part i by the same scorer: all must be right. Order counts, since
  the scorer cannot tell a set from a tuple: the same answers in another order are a right answer missed.
  A part written as an assignment must name what its ground-truth part names (`y = 3, x = 4` is not
  `x = 3, y = 4`, though the scorers read each assignment by its value); an unnamed part is taken in order.
* Unit: a part may end with exactly the given unit, as written or rendered the same (inside `\\text{}`,
  `\\mathrm{}` or `\\mbox{}`, after LaTeX spacing; `^\\circ` and `°` alike); only then is it removed. What is left
  may carry no word and no mark (degree sign, `\\pm`, ...) that the ground-truth part lacks: `5 km` for 5 with
  unit m is wrong, never 5 with its unit dropped (the scorers' own closed list of units would drop `km`);
  `5 km` for 5 with unit m is also not `5 m`. A bare `5` is right.

`scorer_mode="verl"` ignores both (verl's verdict, verdict for verdict, on the joined ground truth), and so do
the GSM8K scorer and user reward functions (which receive the fields in `extra_info`).

Worked example (parts ("3", "\\frac{1}{2}"), unit "m"):
    "... \\boxed{3, \\frac{1}{2}}"              -> +1
    "... \\boxed{3\\text{ m}, 0.5 \\mathrm{m}}"  -> +1 (the exact unit removed from each part)
    "... \\boxed{\\frac{1}{2}, 3}"              -> −1 (order counts)
    "... \\boxed{3}"                           -> −1 (one part of two)
    "... \\boxed{3 km, \\frac{1}{2}}"           -> −1 (another unit)

Pure and bounded: answers are at most MAX_ANSWER_CHARS (the extractors' bound); every step is linear in them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dapo.rewards.dapo_answer import extract_dapo_answer, judge_dapo_answer
from dapo.rewards.math_answer import MathCheck, adds_words_or_marks, check_math_pred, extract_math_answer
from dapo.rewards.text import after_assignment
from dapo.rewards.types import ScoreResult, verdict

ANSWER_PARTS_KEY = "answer_parts"
ANSWER_UNIT_KEY = "answer_unit"

# LaTeX that renders as nothing or as a space: spacing commands, `~`, math delimiters. `\!` (a negative thin
# space, `10,\!000`) joins, like the canonical form.
_SPACING = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~")
_JOINING = re.compile(r"\\!|\$|\\[()\[\]]")
_TEXT_GROUP = re.compile(r"\\(?:text|textrm|mathrm|mbox|rm)\s*\{([^{}]*)\}")
_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°")
_ONE_CHAR_GROUP = re.compile(r"([_^])\{\s*([A-Za-z0-9])\s*\}")  # `m^{2}` renders as `m^2`
_UNIT_TOKEN = re.compile(r"\\[A-Za-z]+|[A-Za-z]+|\d+|\S")
_WORDISH = re.compile(r"[\\A-Za-z\d]")
# What cannot stand before a unit: an operator or an opening bracket (`5 \times m`), or a command (`5 \mu m` is
# not 5 m). Such a `m` is not the unit of a value.
_DANGLING = re.compile(r"(?:[-+*/^_=<>,(\[{|]|\\(?!pi\s*\Z)[A-Za-z]+)\s*\Z")  # `2\pi m` is a value and its unit


@dataclass(frozen=True)
class AnswerSpec:
    """How a record's answer is read when it is more than one plain answer.

    Attributes:
        parts: the ground-truth parts, in order (one part when only a unit is set).
        unit: the unit the answer is given in, or None.
    """

    parts: tuple[str, ...]
    unit: str | None


def answer_spec(ground_truth: str, extra: Mapping[str, Any]) -> AnswerSpec | None:
    """The spec a record's extra fields set (`answer_parts` of at least two parts, a non-empty `answer_unit`), or
    None for an ordinary answer."""
    raw_parts, raw_unit = extra.get(ANSWER_PARTS_KEY), extra.get(ANSWER_UNIT_KEY)
    parts = None
    if isinstance(raw_parts, list | tuple) and len(raw_parts) > 1:
        parts = tuple(str(p) for p in raw_parts)
    unit = unwrap_dollars(raw_unit) if isinstance(raw_unit, str) else ""
    if parts is None and not unit:
        return None
    return AnswerSpec(parts or (ground_truth,), unit or None)


def unwrap_dollars(text: str) -> str:
    """`$x$` or `$$x$$` -> `x` (stripped), when no other `$` is inside; anything else only stripped."""
    s = text.strip()
    for fence in ("$$", "$"):
        inner = s[len(fence) : -len(fence)]
        if len(s) >= 2 * len(fence) and s.startswith(fence) and s.endswith(fence) and "$" not in inner:
            return inner.strip()
    return s


def _joins_a_number(s: str, comma: int) -> bool:
    """Whether the comma at `comma` groups the digits of one number (`1,000`, `10,\\!000`) rather than
    separating two answers."""
    if comma == 0 or not s[comma - 1].isdigit():
        return False
    rest = s[comma + 1 : comma + 1 + 7]
    if rest.startswith("\\!"):
        return True
    return len(rest) >= 3 and rest[:3].isdigit() and (len(rest) == 3 or not rest[3].isdigit())


def split_answers(answer: str) -> list[str]:
    """`answer` cut at its top-level commas: not inside (), [], {}, `\\{ \\}`, nor inside one number (`1,000`).
    Each part is stripped and unwrapped from `$`.

    >>> split_answers(r"$(1,8,19)$, (2,7,13), \\{1, 2\\}, 1,000, [0, 1)")
    ['(1,8,19)', '(2,7,13)', '\\\\{1, 2\\\\}', '1,000', '[0, 1)']
    """
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(answer):
        ch = answer[i]
        if ch == "\\":
            escaped = answer[i + 1 : i + 2]
            if escaped == "{":
                depth += 1
            elif escaped == "}":
                depth = max(depth - 1, 0)
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0 and not _joins_a_number(answer, i):
            parts.append(answer[start:i])
            start = i + 1
        i += 1
    parts.append(answer[start:])
    return [unwrap_dollars(p) for p in parts]


def rendered(text: str) -> str:
    """`text` as it renders, for comparing units: `\\text{}`-style groups unwrapped, spacing and `$` gone,
    degree signs written `°`, `^{2}` written `^2`, whitespace runs one space. Value-preserving: two tokens are
    never joined (`5~40` stays `5 40`)."""
    s = _ONE_CHAR_GROUP.sub(r"\1\2", _DEGREE.sub("°", text))
    s = _TEXT_GROUP.sub(r" \1 ", s)
    s = _JOINING.sub("", _SPACING.sub(" ", s))
    return " ".join(s.split())


def _unit_pattern(unit: str) -> re.Pattern[str] | None:
    """A pattern for `unit` (rendered) at the end of a rendered answer: its tokens in order, whitespace between
    them optional except where the unit separates two words by a space (`m s` is not `ms`), and no letter
    just before it (`km` does not end with the unit `m`)."""
    tokens = [(m.group(), m.start()) for m in _UNIT_TOKEN.finditer(unit)]
    if not tokens:
        return None
    pieces = [re.escape(tokens[0][0])]
    for (prev, prev_start), (tok, start) in itertools.pairwise(tokens):
        spaced = start > prev_start + len(prev)
        words = _WORDISH.match(prev[-1]) is not None and _WORDISH.match(tok[0]) is not None
        pieces.append((r"\s+" if spaced else "") if words else r"\s*")
        pieces.append(re.escape(tok))
    return re.compile(r"(?<![A-Za-z\\])" + "".join(pieces) + r"\s*\Z")


def strip_unit(answer: str, unit: str) -> str:
    """`answer` rendered (`rendered`), without `unit` when it ends with exactly that unit after a value (not after
    an operator or a command): `5\\text{ m}`, `5 m`, `5\\,\\mathrm{m}` -> `5` for unit `m`; `5 km`, `5 cm`,
    `5 \\mu m`, `5 \\times m` unchanged.

    >>> strip_unit(r"3 \\times 10^{8}\\,\\mathrm{m/s}", "m/s"), strip_unit("5 km", "m")
    ('3 \\\\times 10^8', '5 km')
    >>> strip_unit(r"30^\\circ", r"^{\\circ}")
    '30'
    """
    text = rendered(answer)
    pattern = _unit_pattern(rendered(unwrap_dollars(unit)))
    m = pattern.search(text) if pattern is not None else None
    if m is None or not text[: m.start()].strip() or _DANGLING.search(text[: m.start()]):
        return text
    return text[: m.start()].strip()


def _assigned_name(answer: str) -> str:
    """What an assignment names (`x = 3` -> `x`, `f(1)=2` -> `f(1)`), spaces removed; "" when `answer` is not
    an assignment (`after_assignment` leaves it as it is)."""
    if after_assignment(answer) == answer.strip():
        return ""
    return "".join(rendered(answer[: answer.rfind("=")]).split())


def answer_pieces(answer: str, spec: AnswerSpec) -> list[tuple[str, str]] | None:
    """(predicted part, ground-truth part) pairs to judge one by one, or None when the answer cannot be right:
    another number of parts; a part that names another quantity than its ground truth (the scorers read `y = 3`
    by its value, so `y = 3, x = 4` would pass for `x = 3, y = 4`: a named part must name what its ground-truth
    part names; an unnamed part is read in the ground truth's order); with a unit, a part with a word or mark
    beyond the unit that its ground truth lacks."""
    preds = split_answers(answer) if len(spec.parts) > 1 else [answer.strip()]
    if len(preds) != len(spec.parts):
        return None
    if len(preds) > 1 and any(
        _assigned_name(p) and _assigned_name(p) != _assigned_name(g) for p, g in zip(preds, spec.parts, strict=True)
    ):
        return None
    if spec.unit is None:
        return list(zip(preds, spec.parts, strict=True))
    pairs = []
    for pred, gt in zip(preds, spec.parts, strict=True):
        pred, gt = strip_unit(pred, spec.unit), strip_unit(gt, spec.unit)
        if not pred or adds_words_or_marks(pred, rendered(gt)):
            return None
        pairs.append((pred, gt))
    return pairs


def score_dapo_parts(response: str | bytes, spec: AnswerSpec) -> ScoreResult:
    """The DAPO default mode (`judge_dapo_answer`) on each part of the response's final answer."""
    answer = extract_dapo_answer(response)
    if answer is None:
        return verdict(False, None)
    pairs = answer_pieces(answer, spec)
    if pairs is None:
        return verdict(False, answer)
    results = [judge_dapo_answer(pred, gt) for pred, gt in pairs]
    return verdict(all(r.acc for r in results), ", ".join(r.pred or "" for r in results))


def check_math_parts(response: str | bytes, spec: AnswerSpec) -> MathCheck:
    """The MATH scorer (`check_math_pred`) on each part of the response's final answer: decided when a part is
    wrong or every part is right in-process, else pending with the symbolic pairs of the undecided parts (all
    must hold)."""
    ground_truth = ", ".join(spec.parts)
    answer = extract_math_answer(response)
    if answer is None:
        return MathCheck(verdict(False, None), None, ground_truth)
    pairs = answer_pieces(answer, spec)
    if pairs is None:
        return MathCheck(verdict(False, answer), answer, ground_truth)
    checks = [check_math_pred(pred, gt) for pred, gt in pairs]
    if any(c.result is not None and not c.result.acc for c in checks):
        return MathCheck(verdict(False, answer), answer, ground_truth)
    pending = tuple(pair for c in checks for pair in c.symbolic_pairs)
    if not pending:
        return MathCheck(verdict(True, answer), answer, ground_truth)
    return MathCheck(None, answer, ground_truth, pending)
