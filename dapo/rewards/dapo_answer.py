"""The DAPO "Answer:" scorer (DAPO §2.4, Eq. 7): +1 when the final answer equals the ground truth, −1
otherwise.

Two modes:

* "verl" reproduces verl's `math_dapo.compute_score` (the scorer of the DAPO recipe), verdict for verdict,
  including its known false negatives: only the last 300 characters are read, the last line matching
  `Answer\\s*:` (any case) is taken, both sides are normalised by the Minerva rules
  (`_minerva_normalize`) and compared by exact string equality.
* "default" keeps every verdict verl gets right and fixes its false negatives. It is verl's verdict OR a
  second, more tolerant reading (`_tolerant_prediction` + exact value comparison), so every response verl
  marks correct stays correct. Each difference is listed in docs/rewards.md and pinned by
  tests/rewards/test_dapo_answer.py.

Worked example (ground truth "540"):
    "...\\nAnswer: 540"       -> verl +1, default +1
    "...\\n**Answer:** 540"   -> verl −1 (pred "**540"), default +1
    "...\\nAnswer: 540."      -> verl −1 (pred "540."),  default +1
    "...\\n\\boxed{540}"       -> verl −1 (no "Answer:"),  default +1
    "The answer is 540"      -> −1 in both modes (no "Answer:" line: the reward also teaches the format)

Pure and bounded: at most the last 300 (verl) or 300 + MAX_ANSWER_CHARS (default) characters are read.
"""

from __future__ import annotations

import re

from dapo.rewards.text import MAX_ANSWER_CHARS, last_boxed, numbers_equal, sanitize, tail
from dapo.rewards.types import ScoreResult, verdict

SCORER_MODES = ("default", "verl")

# verl reads only this many trailing characters (its comment: the longest MATH-500 answer has 159).
VERL_TAIL_CHARS = 300
INVALID_PRED = "[INVALID]"

_ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")

# --- Minerva normalisation, as verl's math_dapo applies it (DAPO reference §4.4, steps a–i) -------------
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
    """verl's normalised prediction: last `Answer:` line of the last 300 characters, or "[INVALID]"."""
    matches = _ANSWER_LINE.findall(tail(response, VERL_TAIL_CHARS))
    return _minerva_normalize(matches[-1] if matches else INVALID_PRED)


# --- Tolerant reading of the default mode ------------------------------------------------------------------
# Words after a number that are units, not mathematics ("540 apples", "12 \text{ cm}^2"). Words that can
# be part of an answer (pi, i, e, sqrt...) are never stripped, so "3 pi" never becomes "3".
_MATH_WORDS = frozenset({"pi", "i", "e", "sqrt", "frac", "cdot", "times", "infty", "inf", "x", "y", "z", "n"})
_NUMBER_THEN_WORDS = re.compile(r"([+-]?[\d.,]*\d)\s*((?:\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|[A-Za-z]+|\s)+)(\^[23])?")
_LATEX_SPACING = re.compile(r"\\[,;:! ]|\\q?quad")


def _strip_markdown(s: str) -> str:
    return s.strip().strip("*_`").strip()


def _tolerant_prediction(window: str) -> str | None:
    """The answer of the default mode: the last `Answer:` line (markdown-tolerant), else the last `\\boxed{}`."""
    matches = re.findall(r"(?i)Answer\s*\**\s*:\s*\**([^\n]+)", window)
    if matches:
        pred = _strip_markdown(matches[-1])
    else:
        pred = last_boxed(window)
        if pred is None:
            return None
    return pred[:MAX_ANSWER_CHARS]


def _clean(s: str) -> str:
    """Cosmetic clean-up before the Minerva rules: markdown, LaTeX spacing, trailing period, $...$ and a
    surrounding \\boxed{} or \\text{}, then a trailing unit word after a plain number."""
    s = _strip_markdown(s)
    s = _LATEX_SPACING.sub(" ", s).strip()
    s = s.rstrip(".").strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$").strip()
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    boxed = last_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else None
    if boxed is not None:
        s = boxed.strip()
    m = _NUMBER_THEN_WORDS.fullmatch(s)
    if m:
        words = re.findall(r"[A-Za-z]+", re.sub(r"\\(text|mathrm)", "", m.group(2)))
        if words and not any(w.lower() in _MATH_WORDS for w in words):
            s = m.group(1)
    return s.rstrip(".").strip()


def _equivalent(pred: str, ground_truth: str) -> bool:
    """Exact match after normalisation, or equal numeric values (27 vs 27.0, -1,000 vs -1000, 0.5 vs 1/2)."""
    p, g = _minerva_normalize(_clean(pred)), _minerva_normalize(_clean(ground_truth))
    return p == g or numbers_equal(p, g) or numbers_equal(_clean(pred), _clean(ground_truth))


def _default_window(response: str | bytes) -> str:
    """verl's 300-character tail, after dropping trailing whitespace, widened back to the start of the line
    it begins in (by at most MAX_ANSWER_CHARS more), so that a long final `Answer:` line is not cut."""
    text = sanitize(response[-(VERL_TAIL_CHARS + MAX_ANSWER_CHARS + 4096) :]).rstrip()
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
        mode: "default" (verl's verdicts plus fixes of its false negatives) or "verl" (exact parity).
    Returns:
        ScoreResult with score ±1, acc, pred (normalised) and failure "no_answer" / "wrong" / None.

    >>> score_dapo("so x = 540\\nAnswer: 540", "540").acc
    True
    >>> score_dapo("**Answer:** 540", "540", mode="verl").pred
    '**540'
    """
    if mode not in SCORER_MODES:
        raise ValueError(f"unknown scorer mode {mode!r}; expected one of {SCORER_MODES}")
    verl_pred = verl_prediction(response)
    verl_correct = verl_pred == _minerva_normalize(ground_truth)
    if mode == "verl":
        return verdict(verl_correct, None if verl_pred == INVALID_PRED else verl_pred)
    if verl_correct:
        return verdict(True, verl_pred)
    pred = _tolerant_prediction(_default_window(response))
    if pred is None:
        return verdict(False, None)
    return verdict(_equivalent(pred, ground_truth), _minerva_normalize(_clean(pred)))


def score_dapo_many(responses: list[str], ground_truths: list[str], mode: str = "default") -> list[ScoreResult]:
    """`score_dapo` over a list: the unit of work a pool worker receives for large batches."""
    return [score_dapo(r, g, mode) for r, g in zip(responses, ground_truths, strict=True)]
