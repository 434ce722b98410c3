"""The DAPO "Answer:" scorer: verl-mode parity (true and false verdicts of verl's math_dapo, DAPO reference
§4.4) and every difference of the default mode, one row each."""

from __future__ import annotations

import pytest

from dapo.rewards import score_dapo

# (response, ground truth, verl verdict, default verdict, why)
CASES = [
    # verl gets these right; the default mode keeps them.
    ("Answer: 540", "540", True, True, "plain"),
    ("answer:540", "540", True, True, "case and spacing"),
    ("Answer: $540$", "540", True, True, "inline math"),
    ("Answer: \\boxed{540}", "540", True, True, "boxed after Answer:"),
    ("Answer: x = 540", "540", True, True, "assignment"),
    ("Answer: 1,000", "1000", True, True, "thousands separator"),
    ("Answer: 540 degrees", "540", True, True, "listed unit"),
    ("Answer: -3", "-3", True, True, "negative"),
    ("Answer: \\frac12", "\\frac{1}{2}", True, True, "TeX shorthand"),
    ("Answer: 540\nWait, that is it.\nDone", "540", True, True, "extra lines after the answer"),
    ("Answer: 7\nAnswer: 540", "540", True, True, "last Answer: wins"),
    ("The answer is 540", "540", False, False, "no colon: no answer (format is taught)"),
    ("Answer: 541", "540", False, False, "wrong"),
    ("Answer: 7\nAnswer: 540", "7", False, False, "an earlier answer does not count"),
    ("Answer: 3 pi", "3", False, False, "a math word is not a unit"),
    ("Answer: 540 or 541", "540", False, False, "hedging"),
    ("Answer: 5400", "540", False, False, "extra digit"),
    ("Answer: 54", "540", False, False, "missing digit"),
    ("Answer:", "540", False, False, "empty answer line"),
    # verl's false negatives, fixed by the default mode.
    ("**Answer:** 540", "540", False, True, "markdown bold around the label"),
    ("**Answer**: 540", "540", False, True, "markdown bold before the colon"),
    ("Answer: 540.", "540", False, True, "trailing period"),
    ("so the result is\n\\boxed{540}", "540", False, True, "\\boxed as the last line, no Answer:"),
    ("Answer: -1,000", "-1000", False, True, "negative with thousands separator"),
    ("Answer: 1\\,000", "1000", False, True, "LaTeX thin-space separator"),
    ("Answer: 540 apples", "540", False, True, "unit word not in verl's list"),
    ("Answer: 27", "27.0", False, True, "float ground truth (AMC)"),
    ("Answer: 540.0", "540", False, True, "decimal zero"),
    ("Answer: 0.5", "\\frac{1}{2}", False, True, "equal value"),
    ("Answer: \\dfrac{1}{2}", "\\frac{1}{2}", False, True, "dfrac"),
]


@pytest.mark.parametrize(("response", "gt", "verl", "default", "why"), CASES, ids=[c[4] for c in CASES])
def test_verdict_table(response, gt, verl, default, why):
    assert score_dapo(response, gt, mode="verl").acc is verl
    assert score_dapo(response, gt, mode="default").acc is default


def test_verl_mode_reads_only_the_last_300_characters():
    response = "Answer: 540\n" + "x" * 300
    assert not score_dapo(response, "540", mode="verl").acc
    # The default mode reads the same window (the answer line must be last): the same verdict.
    assert not score_dapo(response, "540", mode="default").acc


def test_default_mode_keeps_a_long_final_answer_line_whole():
    # verl's window starts in the middle of this line and loses "Answer:"; the default widens it.
    answer = "+".join(["1"] * 200)  # 399 characters, so the label is more than 300 from the end
    response = "work\nAnswer: " + answer
    assert not score_dapo(response, answer, mode="verl").acc
    assert score_dapo(response, answer, mode="default").acc


def test_trailing_whitespace_does_not_push_the_answer_out_in_default_mode():
    response = "Answer: 540" + "\n" * 400
    assert not score_dapo(response, "540", mode="verl").acc
    assert score_dapo(response, "540", mode="default").acc


def test_result_fields():
    r = score_dapo("**Answer:** 540", "540", mode="verl")
    assert (r.score, r.acc, r.pred, r.failure) == (-1.0, False, "**540", "wrong")
    r = score_dapo("nothing here", "540")
    assert (r.score, r.acc, r.pred, r.failure) == (-1.0, False, None, "no_answer")
    r = score_dapo("Answer: $540$", "540")
    assert (r.score, r.acc, r.pred, r.failure) == (1.0, True, "540", None)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="scorer mode"):
        score_dapo("Answer: 1", "1", mode="strict")
