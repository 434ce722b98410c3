"""The DAPO "Answer:" scorer: verl-mode parity (true and false verdicts of verl's math_dapo, DAPO reference
§4.4, including on control characters) and every difference of the default mode, one row each.

The expected verl verdicts are written out by hand from verl's algorithm (last 300 characters as given; last
match of `(?i)Answer\\s*:\\s*([^\\n]+)`; Minerva normalisation; `==`), never recomputed by the code under
test."""

from __future__ import annotations

import pytest

from dapo.rewards import score_dapo
from dapo.rewards.dapo_answer import BRACED_UNITS, UNIT_WORDS

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
    ("Answer: 540 apples", "540", False, False, "a word outside the closed unit list is not removed"),
    ("Answer: 540 thousand", "540", False, False, "a multiplier is not a unit"),
    ("Answer: 540\\%", "540", False, False, "percent changes the value"),
    ("Answer: \\boxed{540} no, 541", "540", False, False, "a box followed by a retraction"),
    ("\\boxed{540}. Wait, that is wrong: it is 541.", "540", False, False, "a final box must end the response"),
    # verl's false positives: its normalisation turns a different answer into the ground truth. The
    # default mode does not use verl's verdict, so it rejects them.
    ("Answer: $540$ or $541$", "540", True, False, "verl keeps only the first $...$"),
    ("Answer: $540$ factorial", "540", True, False, "verl drops text after the first $...$"),
    ("Answer: 5,40", "540", True, False, "verl drops commas between digits, not only thousands separators"),
    ("Answer: 5 40", "540", True, False, "verl drops every space"),
    ("Answer: 540 a ", "540", True, False, "verl drops 'a ' anywhere"),
    ("Answer: 540\\ldots", "540", True, False, "verl drops \\ldots"),
    ("Answer: x >= 540", "540", True, False, "verl splits at any '=', also in '>='"),
    ("Answer: x = 541 or x = 540", "540", True, False, "verl keeps the text after the last '='"),
    ("Answer: 2x = 540", "540", True, False, "the right side of an equation is not its solution"),
    ("Answer: 5x - 7y + 4 = 0", "0", True, False, "an equation is not the value 0"),
    ("Answer: 0.\\overline{3}", "0.3", True, False, "verl unwraps \\overline (a repeating decimal)"),
    # verl's false negatives, fixed by the default mode.
    ("**Answer:** 540", "540", False, True, "markdown bold around the label"),
    ("**Answer**: 540", "540", False, True, "markdown bold before the colon"),
    ("Answer: 540.", "540", False, True, "trailing period"),
    ("so the result is\n\\boxed{540}", "540", False, True, "\\boxed as the last line, no Answer:"),
    ("Answer: -1,000", "-1000", False, True, "negative with thousands separator"),
    ("Answer: 1\\,000", "1000", False, True, "LaTeX thin-space separator"),
    ("Answer: 540 seconds", "540", False, True, "a unit of the closed list that verl's list lacks"),
    ("Answer: 540\\text{ kg}", "540", False, True, "a braced unit of the closed list"),
    ("Answer: 27", "27.0", False, True, "float ground truth (AMC)"),
    ("Answer: 540.0", "540", False, True, "decimal zero"),
    ("Answer: 0.5", "\\frac{1}{2}", False, True, "equal value"),
    ("Answer: \\dfrac{1}{2}", "\\frac{1}{2}", False, True, "dfrac"),
]


@pytest.mark.parametrize(("response", "gt", "verl", "default", "why"), CASES, ids=[c[4] for c in CASES])
def test_verdict_table(response, gt, verl, default, why):
    assert score_dapo(response, gt, mode="verl").acc is verl
    assert score_dapo(response, gt, mode="default").acc is default


@pytest.mark.parametrize("unit", UNIT_WORDS)
def test_every_unit_of_the_closed_list_is_removed_after_a_number(unit):
    for response in (f"Answer: 540 {unit}", f"Answer: 540\\text{{ {unit}}}", f"Answer: $540$ {unit.upper()}"):
        assert score_dapo(response, "540").acc, response
    assert not score_dapo(f"Answer: 541 {unit}", "540").acc
    assert not score_dapo(f"Answer: 540 {unit} 2", "540").acc  # the unit must end the answer


@pytest.mark.parametrize("unit", BRACED_UNITS)
def test_single_letters_are_units_only_inside_text(unit):
    assert score_dapo(f"Answer: 540\\text{{ {unit}}}", "540").acc
    assert score_dapo(f"Answer: 540\\mathrm{{{unit}}}", "540").acc
    assert not score_dapo(f"Answer: 540 {unit}", "540").acc


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


# --- control characters: verl mode reads the text as it is -----------------------------------------------
# (response, ground truth, verl verdict, default verdict, why). verl's reasoning in each `why`:
# `[^\n]+` captures "\r" and every other control character; `\s*` after the colon skips whitespace,
# newlines included; the final `str.strip()` removes only what Python calls whitespace (\t \n \x0b \x0c
# \r \x1c-\x1f \x85 \xa0 \u2028, not NUL, BEL, DEL, ESC or \x9b); the comma rule needs `isdigit()` of the
# whole string, which a trailing "\r" breaks. The default mode sanitises first (\r -> \n, ANSI escapes
# removed, other control characters -> a space, never joining two digits).
CONTROL_CASES = [
    ("Answer: 58,500\r\n", "58,500", False, True, "\\r kept by the capture: commas stay, gt loses them"),
    ("Answer: 58,500\r\nDone.", "58,500", False, True, "the same with a line after it"),
    ("Answer: 1,000\r", "1000", False, True, "a bare \\r breaks the comma rule too"),
    ("Answer: 144\r\n", "144", True, True, "\\r stripped at the end; no comma rule needed"),
    ("\rAnswer: 144", "144", True, True, "\\r before the label is outside the capture"),
    ("Answer:\r\n144", "144", True, True, "\\s* after the colon skips \\r\\n"),
    ("Answer: 5\rAnswer: 6", "6", False, True, "one capture '5\\rAnswer: 6': \\r is not a line break for verl"),
    ("Answer: 12\r34", "1234", False, False, "verl: '12\\r34'; default: two lines, the answer is 12"),
    ("Answer: \x1b[1m144\x1b[0m", "144", False, True, "ANSI escapes kept by verl"),
    ("\x1b[32mAnswer: 144\x1b[0m", "144", False, True, "a trailing reset code kept by verl"),
    ("Answer: 1\x1b[0m44", "144", False, True, "default: formatting renders as nothing"),
    ("Answer: $144$\x1b[0m", "144", True, True, "verl keeps only the first $...$, dropping the escape"),
    ("Answer: \x1b[1m1,000\x1b[0m", "1000", False, True, "escapes break verl's comma rule"),
    ("Answer: 144\x00", "144", False, True, "NUL is not whitespace for str.strip"),
    ("\x00Answer: 144", "144", True, True, "NUL before the label is outside the capture"),
    ("Ans\x00wer: 144", "144", False, False, "no label in either mode"),
    ("Answer: 1\x0044", "144", False, False, "default: NUL becomes a space, so 1 and 44 stay apart"),
    ("Answer: 14\x084", "144", False, False, "backspace between digits"),
    ("Answer: 144\x07", "144", False, True, "BEL is not whitespace"),
    ("Answer: 144\x7f", "144", False, True, "DEL is not whitespace"),
    ("Answer: 144\x9b", "144", False, True, "C1 CSI is not whitespace"),
    ("Answer: 144\x0b", "144", True, True, "vertical tab is whitespace for str.strip"),
    ("Answer: 144\x0c", "144", True, True, "form feed is whitespace for str.strip"),
    ("Answer: 144\x1c", "144", True, True, "\\x1c (file separator) is whitespace for str.strip"),
    ("Answer: 144\x1f", "144", True, True, "\\x1f (unit separator) is whitespace for str.strip"),
    ("Answer:\x1c144", "144", True, True, "\\s matches \\x1c"),
    ("Answer: 144\x85", "144", True, True, "NEL is whitespace for str.strip"),
    ("Answer: 144\u2028", "144", True, True, "U+2028 is whitespace for str.strip, not a \\n for [^\\n]"),
    ("Answer:\t144\t", "144", True, True, "tabs"),
    ("Answer: 1,000\t", "1000", False, True, "a trailing tab breaks the comma rule"),
    ("Answer: 5\udcff", "5", False, False, "a lone surrogate (surrogateescape) is part of the answer"),
    ("Answer: 144" + "\x00" * 300, "144", False, True, "verl's 300 characters are all NUL"),
    ("Answer: 144\r" + " " * 280, "144", True, True, "\\r and spaces stripped"),
]


@pytest.mark.parametrize(("response", "gt", "verl", "default", "why"), CONTROL_CASES, ids=[c[4] for c in CONTROL_CASES])
def test_control_characters(response, gt, verl, default, why):
    assert score_dapo(response, gt, mode="verl").acc is verl
    assert score_dapo(response.encode("utf-8", "surrogateescape"), gt, mode="verl").acc is verl
    assert score_dapo(response, gt, mode="default").acc is default


def test_verl_mode_pred_shows_control_characters_escaped():
    # The verdict is taken on the raw text; only the logged pred is made printable.
    r = score_dapo("Answer: \x1b[1m144\x1b[0m", "144", mode="verl")
    assert (r.acc, r.pred) == (False, "\\x1b[1m144\\x1b[0m")
    assert score_dapo("Answer: 58,500\r\n", "58,500", mode="verl").pred == "58,500"


@pytest.mark.parametrize(
    ("answer", "ground_truth", "accepted"),
    [
        ("540, 541", "540541", False),  # a list of two numbers, not 540,541 with a stray space
        ("1, 000", "1000", False),
        ("540,541", "540541", True),  # a thousands separator
        ("540541", "540,541", True),
        ("11111111100", "11,\\! 111,\\! 111,\\! 100", True),  # MATH-500's LaTeX separator `,\!` then a space
        ("(3, 5)", "(3,5)", True),  # the same list, spaced differently
    ],
)
def test_a_comma_and_a_space_between_digits_make_a_list_in_both_scorers(answer, ground_truth, accepted):
    from dapo.rewards.math_answer import check_math_answer

    assert score_dapo(f"Answer: {answer}", ground_truth).acc is accepted
    assert check_math_answer(f"so \\boxed{{{answer}}}", ground_truth).result.acc is accepted
