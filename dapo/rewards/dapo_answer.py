"""The DAPO "Answer:" scorer (DAPO §2.4, Eq. 7): +1 when the final answer equals the ground truth, −1
otherwise.

Two modes:

* "verl" reproduces verl's `math_dapo.compute_score` (the scorer of the DAPO recipe), verdict for verdict,
  false negatives and false positives included: the last 300 characters of the response exactly as given
  (no sanitising: a "\\r" or an ANSI escape changes verl's verdict, so it changes this one), the last line
  matching `Answer\\s*:` (any case), both sides normalised by the Minerva rules (`_minerva_normalize`),
  exact string equality.
* "default" promises one thing: it never accepts a response whose answer differs from the ground truth.
  Within that, it accepts what verl accepts correctly and fixes verl's false negatives. It does not use
  verl's verdict: verl also accepts wrong answers (`$5$ or $6$` for 5: its normalisation keeps the first
  `$…$`; `1,2` for 12: it drops commas and spaces between digits). Instead both sides go through
  `canonical_answer`, whose every step keeps the value (cosmetics; `x =`; a unit from the closed list
  UNIT_WORDS after a plain number), and are compared by string or exact numeric value.
  docs/rewards.md lists the rules; tests/rewards/test_dapo_answer.py and test_near_misses.py pin them.

Worked example (ground truth "540"):
    "...\\nAnswer: 540"            -> verl +1, default +1
    "...\\n**Answer:** 540"        -> verl −1 (pred "**540"), default +1
    "...\\nAnswer: 540 cm."        -> verl −1 (pred "540."),  default +1 ("cm" is a unit on the list)
    "...\\n\\boxed{540}"            -> verl −1 (no "Answer:"),  default +1
    "...\\nAnswer: 540 thousand"   -> −1 in both modes ("thousand" changes the value)
    "The answer is 540"           -> −1 in both modes (no "Answer:" line: the reward also teaches the format)

Pure and bounded: at most the last 300 (verl) or DEFAULT_READ_CHARS (default) characters are read.
"""

from __future__ import annotations

import re

from dapo.rewards.text import (
    MAX_ANSWER_CHARS,
    TEXT_COMMAND,
    after_assignment,
    decode_tail,
    final_answer,
    numbers_equal,
    parse_number,
    printable,
    strip_markdown,
    tail,
)
from dapo.rewards.types import ScoreResult, verdict

SCORER_MODES = ("default", "verl")

# verl reads only this many trailing characters (its comment: the longest MATH-500 answer has 159).
VERL_TAIL_CHARS = 300
INVALID_PRED = "[INVALID]"
# The default mode reads verl's tail widened back to the start of its line (≤ MAX_ANSWER_CHARS more),
# after dropping trailing whitespace; 4096 characters of trailing whitespace are read past.
DEFAULT_READ_CHARS = VERL_TAIL_CHARS + MAX_ANSWER_CHARS + 4096

_ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")

# --- verl mode: Minerva normalisation, as verl's math_dapo applies it (DAPO reference §4.4, steps a–i) -----
_SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
_REMOVED = (
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
    "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
)  # fmt: skip


def _minerva_normalize(answer: str) -> str:
    """verl/Minerva normalisation of a final answer (steps a–i of the reference, in that order)."""
    answer = answer.split("=")[-1]
    for old, new in _SUBSTITUTIONS:
        answer = answer.replace(old, new)
    for expr in _REMOVED:
        answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer.strip()


def verl_prediction(response: str | bytes) -> str:
    """verl's normalised prediction: last `Answer:` line of the last 300 characters, or "[INVALID]".

    The text is read as it is (bytes are only decoded): verl applies no sanitising, and its regex and
    `str.strip` treat "\\r", NUL, ANSI escapes and other control characters in their own way, so any
    clean-up here would change some of its verdicts.
    """
    matches = _ANSWER_LINE.findall(decode_tail(response, VERL_TAIL_CHARS))
    return _minerva_normalize(matches[-1] if matches else INVALID_PRED)


# --- default mode: value-preserving canonical form -------------------------------------------------------
# The closed list of units (docs/rewards.md). One is removed only after a plain number, and only when what
# is left is that number, so removing it never changes a value. Not units, because they change the value
# or are mathematics: multipliers (thousand, million, dozen), "%", powers (squared, cubed), operators
# (factorial, choose, mod), comparisons (or more), variables (k, a, R^2), words outside the list (apples).
UNIT_WORDS = (
    "unit", "units", "way", "ways", "integer", "integers", "digit", "digits", "point", "points",
    "edge", "edges", "multiple", "multiples", "student", "students", "meal", "meals",
    "dollar", "dollars", "cent", "cents", "degree", "degrees",
    "second", "seconds", "minute", "minutes", "hour", "hours", "hr", "hrs", "day", "days", "week", "weeks",
    "month", "months", "year", "years",
    "mm", "cm", "km", "meter", "meters", "metre", "metres", "centimeter", "centimeters", "kilometer",
    "kilometers", "inch", "inches", "foot", "feet", "ft", "yard", "yards", "mile", "miles", "mph",
    "gm", "gram", "grams", "kg", "kilogram", "kilograms", "pound", "pounds", "lb", "lbs", "ounce", "ounces",
    "liter", "liters", "litre", "litres", "ml", "gallon", "gallons",
)  # fmt: skip
# Single letters and ordinal suffixes are units only inside \text{} / \mathrm{} ("5\text{ m}", "5\mathrm{th}"):
# a bare letter after a number is a variable ("9 m", "9k").
BRACED_UNITS = ("m", "s", "g", "th", "st", "nd", "rd")

_WORDS = "|".join(sorted(map(re.escape, UNIT_WORDS), key=len, reverse=True))
_SQUARE = r"(?:(?i:square|sq\.?|cubic)\s+)?"
_POWER = r"(?:\s*\^\s*(?:[23]|\{\s*[23]\s*\}))?"
_UNIT = (
    rf"{_SQUARE}(?i:{_WORDS})\.?{_POWER}"
    rf"|\\(?:text|textrm|mathrm|mbox)\{{\s*{_SQUARE}(?:(?i:{_WORDS})|{'|'.join(BRACED_UNITS)})\.?\s*\}}{_POWER}"
    r"|\^\s*\{?\s*\\circ\s*\}?|°|\\circ\b|\\degree\b"
)
_NUMBER_AND_UNIT = re.compile(rf"(.*?)\s*(?:{_UNIT})")

_MARKUP = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\!|\$|\\[()\[\]]")
_SPACING = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~|\"")
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# TeX shorthand, as verl expands it: \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}.
_SHORTHAND = (
    (re.compile(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt\s*([0-9A-Za-z])"), r"\\sqrt{\1}"),
)
# Whitespace is dropped except before a digit that follows a digit or a point: "1 2" is not 12, "5. 5" not 5.5.
_DROPPED_SPACE = re.compile(r"(?<![\d.]) | (?!\d)")
# A comma and a space between digits separate the items of a list ("540, 541"); squeezed to "540,541" it would
# read as the number 540541. LaTeX's `,\!` (a negative thin space after a separator, `11,\! 111`) is not one.
_LIST_COMMA = re.compile(r"\d, +\d")
_THIN_SEPARATOR = re.compile(r",\\!\s*")


def _cosmetics(s: str) -> str:
    """Markup that never carries a value: markdown, `$` and `\\(…\\)` delimiters, `\\$` (currency),
    `\\left`/`\\right`, LaTeX spacing (a space, so that no two tokens are joined), `\\dfrac`, quotes, a
    trailing full stop; `\\%` is written `%` and the Unicode minus `-`."""
    s = strip_markdown(s.strip().rstrip(".")).replace("\\$", " ").replace("\\%", "%").replace("\u2212", "-")
    s = _SPACING.sub(" ", _MARKUP.sub("", s))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.strip().rstrip(".").strip()


def _unwrap_boxes(s: str) -> str:
    """Every `\\boxed{X}` / `\\fbox{X}` replaced by X (braces matched, one linear pass); `s` unchanged when
    a box is not closed. The text around a box stays, so `\\boxed{5} or 6` is still a hedge."""
    if "\\boxed" not in s and "\\fbox" not in s:
        return s
    out: list[str] = []
    opened_by_box: list[bool] = []
    i = 0
    while i < len(s):
        m = _BOX_OPEN.match(s, i)
        if m:
            opened_by_box.append(True)
            i = m.end()
            continue
        token = s[i : i + 2] if s[i] == "\\" else s[i]  # a backslash escapes the next character
        i += len(token)
        if token == "{":
            opened_by_box.append(False)
        elif token == "}" and opened_by_box and opened_by_box.pop():
            continue  # the brace closing a box
        out.append(token)
    return s if any(opened_by_box) else "".join(out)


def _strip_unit(s: str) -> str:
    """`5 cm` -> `5`, `15\\mbox{ cm}^2` -> `15`, `90^\\circ` -> `90`: a unit of the closed list after a
    plain number; anything else is returned unchanged (`9 factorial`, `4 million`, `3R^2`, `9k`)."""
    m = _NUMBER_AND_UNIT.fullmatch(s)
    if m and parse_number(m.group(1)) is not None:
        return m.group(1)
    return s


def canonical_answer(answer: str) -> str:
    """Value-preserving canonical form of an answer, the same for prediction and ground truth.

    Steps, each keeping the value: `_cosmetics`; `_unwrap_boxes`; `after_assignment` (text.py); `_strip_unit`
    (before and after `\\text{}` groups are unwrapped, so `5\\text{ m}` and `\\text{5 cm}` both read 5);
    `\\frac12` -> `\\frac{1}{2}`; whitespace removed except between two digits (`1 2` stays two numbers;
    `1 000`, digits in groups of three, is read by `parse_number` as 1000).

    >>> [canonical_answer(a) for a in ["**$x = 540$**.", "15\\\\mbox{ cm}^2", "9 factorial", "3R^2", "1 2"]]
    ['540', '15', '9factorial', '3R^2', '1 2']
    """
    return _DROPPED_SPACE.sub("", canonical_spaced(answer)).rstrip(".")


def reads_as_list(answer: str) -> bool:
    """Does the answer separate numbers by a comma and a space (`540, 541`)? Then it is a list, and no exact
    numeric comparison may read its squeezed canonical form (`540,541`) as one number."""
    return _LIST_COMMA.search(_cosmetics(_THIN_SEPARATOR.sub(",", answer))) is not None


def same_value(answer: str, ground_truth: str, pred: str, gt: str) -> bool:
    """Equal exact values of the canonical forms `pred` and `gt` (27 vs 27.0, -1,000 vs -1000, 0.5 vs
    \\frac{1}{2}), unless either side is a list of numbers (`reads_as_list`)."""
    return numbers_equal(pred, gt) and not reads_as_list(answer) and not reads_as_list(ground_truth)


def canonical_spaced(answer: str) -> str:
    """`canonical_answer` before its whitespace is dropped (runs of whitespace become one space).

    For reading the words and commands of an answer: squeezed, `12\\pi apples` would hide its word inside
    a command name (`12\\piapples`). The MATH scorer's symbolic guard reads this form.

    >>> canonical_spaced("$x = 12\\\\pi$ \\\\text{ apples}.")
    '12\\\\pi apples'
    """
    s = _strip_unit(after_assignment(_unwrap_boxes(_cosmetics(answer))))
    s = _strip_unit(" ".join(TEXT_COMMAND.sub(r" \1 ", s).split()))
    for pattern, replacement in _SHORTHAND:
        s = pattern.sub(replacement, s)
    return " ".join(s.split())


def _default_window(response: str | bytes) -> str:
    """verl's 300-character tail, after dropping trailing whitespace, widened back to the start of the line
    it begins in (by at most MAX_ANSWER_CHARS more), so that a long final `Answer:` line is not cut."""
    text = tail(response, DEFAULT_READ_CHARS).rstrip()
    start = max(0, len(text) - VERL_TAIL_CHARS)
    if start == 0:
        return text
    lookback = max(0, start - MAX_ANSWER_CHARS)
    newline = text.rfind("\n", lookback, start)
    if newline >= 0:
        return text[newline + 1 :]
    return text[lookback:] if lookback == 0 else text[start:]


def score_dapo(response: str | bytes, ground_truth: str, mode: str = "default") -> ScoreResult:
    """Score one response with the DAPO rule reward (Eq. 7).

    Args:
        response: the decoded response text (EOS string already removed). bytes are decoded as UTF-8.
        ground_truth: the reference answer, e.g. "540".
        mode: "default" (never accepts a wrong answer; fixes verl's false negatives) or "verl" (verl's
            verdicts exactly).
    Returns:
        ScoreResult with score ±1, acc, pred (normalised; in verl mode with control characters escaped)
        and failure "no_answer" / "wrong" / None.

    >>> score_dapo("so x = 540\\nAnswer: 540", "540").acc
    True
    >>> score_dapo("**Answer:** 540", "540", mode="verl").pred
    '**540'
    """
    if mode not in SCORER_MODES:
        raise ValueError(f"unknown scorer mode {mode!r}; expected one of {SCORER_MODES}")
    if mode == "verl":
        pred = verl_prediction(response)
        correct = pred == _minerva_normalize(ground_truth)
        return verdict(correct, None if pred == INVALID_PRED else printable(pred))
    return judge_dapo_answer(extract_dapo_answer(response), ground_truth)


def extract_dapo_answer(response: str | bytes) -> str | None:
    """The final answer the default mode reads (rule 1 of docs/rewards.md): the rest of the last `Answer:` line
    of the window, else a box that ends it; None when there is neither."""
    return final_answer(_default_window(response))


def judge_dapo_answer(answer: str | None, ground_truth: str) -> ScoreResult:
    """The default mode's verdict on an extracted answer (None: there was none): equal canonical forms or
    equal exact values."""
    if answer is None:
        return verdict(False, None)
    pred, gt = canonical_answer(answer), canonical_answer(ground_truth)
    return verdict(pred == gt or same_value(answer, ground_truth, pred, gt), pred)


def score_dapo_many(responses: list[str], ground_truths: list[str], mode: str = "default") -> list[ScoreResult]:
    """`score_dapo` over a list: the unit of work a pool worker receives for large batches."""
    return [score_dapo(r, g, mode) for r, g in zip(responses, ground_truths, strict=True)]
