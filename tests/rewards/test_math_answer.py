"""Boxed / LaTeX answers: extraction, the in-process fast path, and symbolic verdicts through the pool."""

from __future__ import annotations

import pytest

from dapo.rewards import RewardSample, check_math_answer, extract_math_answer, last_boxed, normalize_latex


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\boxed{{{{x}}}}", "{{{x}}}"),
        ("\\fbox{7}", "7"),
        ("\\boxed 7 is it", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{unterminated", None),
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_normalize_latex():
    assert normalize_latex("\\left( 3, \\dfrac{\\pi}{2} \\right).") == "(3,\\frac{\\pi}{2})"
    assert normalize_latex("90^\\circ") == "90"
    assert normalize_latex("x = 5") == "5"
    assert normalize_latex("\\text{Evelyn}") == "Evelyn"
    # The DAPO canonical form: two numerals stay apart, the percent sign stays (check_math_answer decides it).
    assert normalize_latex("5 40") == "5 40"
    assert normalize_latex("5\\;40") == "5 40"
    assert normalize_latex("50\\%") == "50%"
    assert normalize_latex("2x = 540") == "2x=540"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is $\\boxed{5}$.", "5"),
        ("so\n\\[\\boxed{5}\\]\n", "5"),
        ("\\boxed{5}$</s>", "5"),
        ("\\boxed{5}<|im_end|>", "5"),
        ("first \\boxed{4}, then \\boxed{5}.", "5"),
        ("\\boxed{5}. Wait, that is wrong: it is 6.", None),
        ("\\boxed{5}\nHmm, no: 6.", None),
        ("So $\\boxed{5}$!", None),
        ("The final answer is $\\boxed{5}$. I hope it is correct.", None),
        ("\\boxed{5}. Wait, that is wrong.\nAnswer: 6", "6"),
        ("Work.\nAnswer: 6", "6"),
        ("Answer: \\boxed{5} no, 6", None),
        ("So \\boxed{\\frac{1}{2}", None),
    ],
)
def test_the_answer_is_a_box_that_ends_the_response(response, expected):
    assert extract_math_answer(response) == expected


def test_fast_path_decides_without_sympy():
    assert check_math_answer("so $\\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}").result.acc
    assert check_math_answer("\\boxed{0.5}", "\\frac{1}{2}").result.acc
    assert not check_math_answer("\\boxed{0.6}", "\\frac{1}{2}").result.acc
    assert check_math_answer("no answer", "1").result.failure == "no_answer"
    assert check_math_answer("\\boxed{\\sin(\\pi/6)}", "\\frac12").needs_symbolic


# (ground truth, boxed prediction, verdict): decided in-process, without math-verify. math-verify alone
# accepts every False row from `\frac{1}{2}` to `3r^2`: it drops trailing words, solves `2x = 540` for 540, forgives
# `\ldots`, `\approx`, `\pm 0`, a prime and a degree sign, ignores the case of a variable and takes a
# percentage for a number.
IN_PROCESS_CASES = [
    ("540", "5 40", False),
    ("540", "5\\,40", False),
    ("50\\%", "50", True),
    ("50\\%", "50\\%", True),
    ("50", "50\\%", True),
    ("\\frac{1}{2}", "50\\%", False),
    ("540", "540 apples", False),
    ("540", "540\\text{ thousand}", False),
    ("540", "540 \\text{ or more}", False),
    ("12\\pi", "12\\pi \\text{ apples}", False),
    ("12\\pi", "12\\pi\\!apples", False),
    ("540", "540 \\text{ cm}", True),
    ("540", "2x = 540", False),
    ("540", "x = 540", True),
    ("540", "540 \\ldots", False),
    ("540", "x \\approx 540", False),
    ("540", "540 \\pm 0", False),
    ("540", "540'", False),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{2}^\\circ", False),
    ("3R^2", "3r^2", False),
    ("2k", "2n", False),
    ("\\text{(B)}", "\\text{(B) and (C)}", False),
]


@pytest.mark.parametrize(("gt", "pred", "expected"), IN_PROCESS_CASES)
def test_in_process_verdicts(gt, pred, expected):
    check = check_math_answer(f"So $\\boxed{{{pred}}}$.", gt)
    assert not check.needs_symbolic
    assert check.result.acc is expected


# (ground truth, boxed prediction, verdict): a percent sign the ground truth lacks. MATH's normaliser strips
# `\%`, and MATH-500 asks "By what percent does the square's area decrease?" with ground truth 10: a bare
# number with a percent sign is that number. Compared by exact value in-process: math-verify reads `10\%` as
# 0.1 and would accept it for `0.1`.
PERCENT_CASES = [
    ("10", "10\\%", True),
    ("10", "10%", True),
    ("10", "10 \\%", True),
    ("10", "10.0\\%", True),
    ("-10", "-10\\%", True),
    ("1000", "1,000\\%", True),
    ("10\\%", "10\\%", True),
    ("10\\%", "10", True),
    ("0.1", "10\\%", False),
    ("\\frac{1}{10}", "10\\%", False),
    ("1000", "10\\%", False),
    ("100", "10\\%", False),
    ("11", "10\\%", False),
    ("10", "11\\%", False),
    ("10", "1000\\%", False),
    ("10", "0.1\\%", False),
    ("10", "10\\%\\%", False),
    ("10", "10\\% of 5", False),
    ("10", "10\\% \\text{ of } 5", False),
    ("10", "10\\% \\text{ decrease}", False),
    ("10", "(10\\%)", False),
    ("10", "5 10\\%", False),
    ("10", "10^\\circ\\%", False),
    ("\\pi", "\\pi\\%", False),
    ("x", "x\\%", False),
    ("2k", "2k\\%", False),
    ("15\\mbox{ cm}^2", "15\\%", False),
    ("90^\\circ", "90\\%", False),
    ("\\$32,\\!348", "32,348\\%", False),
    ("10, 20", "10, 20\\%", False),
]


@pytest.mark.parametrize(("gt", "pred", "expected"), PERCENT_CASES)
def test_percent_sign_on_a_bare_number(gt, pred, expected):
    check = check_math_answer(f"So $\\boxed{{{pred}}}$.", gt)
    assert not check.needs_symbolic
    assert check.result.acc is expected


def _sample(response: str, gt: str) -> RewardSample:
    return RewardSample("p", response, 10, False, gt, "math500", {})


# (ground truth, boxed prediction, verdict): MATH-500 answer types that need the symbolic check.
SYMBOLIC_CASES = [
    ("\\frac{1}{2}", "\\sin(\\pi/6)", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}", True),
    ("[-2, 7]", "[-2,7]", True),
    ("(-\\infty, 3)", "(-\\infty,3]", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
    ("(3, \\frac{\\pi}{2})", "(\\frac{\\pi}{2}, 3)", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", False),
    ("x^2+1", "1+x^2", True),
    ("6 - 5i", "-5i + 6", True),
    ("10\\%", "10", True),
    ("3, 5, 7", "7, 5, 3", True),
    ("\\frac{14}{3}", "\\frac{15}{3}", False),
    ("y = 2x + 3", "2y = 4x + 6", True),
    ("x=5", "2x = 5", False),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}", True),
    ("540", "5.4 \\times 10^2", True),
    ("540", "540 \\times 10^3", False),
    ("540", "540!", False),
    # decimals are the exact fractions they write: math-verify alone rounds to 6 places and accepts these
    ("\\sqrt{2}", "1.414214", False),
    ("\\sqrt{2}", "1.41421356", False),
    (".0000672", "6.73 \\times 10^{-5}", False),
    (".0000672", "6.72 \\times 10^{-5}", True),
    ("1\\frac{4}{5}", "1.8", True),
]

# Decided in-process because math-verify gets them wrong (it drops base subscripts).
BASE_CASES = [("52_8", "52_8", True), ("52_8", "52_{8}", True), ("52_8", "52_9", False), ("2516_8", "2516", False)]


@pytest.mark.parametrize(("gt", "pred", "expected"), BASE_CASES)
def test_base_numerals_compare_exactly(gt, pred, expected):
    check = check_math_answer(f"\\boxed{{{pred}}}", gt)
    assert not check.needs_symbolic
    assert check.result.acc is expected


@pytest.mark.parametrize(("gt", "pred", "expected"), SYMBOLIC_CASES)
def test_symbolic_verdicts(reward_fn, gt, pred, expected):
    batch = reward_fn([_sample(f"Thus $\\boxed{{{pred}}}$", gt)])
    assert bool(batch.acc[0]) is expected
    assert batch.failures[0] == (None if expected else "wrong")


def test_by_what_percent_through_the_reward_step(reward_fn):
    # MATH-500's "By what percent does the square's area decrease?" (ground truth 10), routed as math500.
    rows = [
        ("The area decreases by $\\boxed{10\\%}$.", True),
        ("The area decreases by $\\boxed{10}$.", True),
        ("Work.\nAnswer: $10\\%$", True),
        ("The area decreases by $\\boxed{0.1}$.", False),
        ("The area decreases by $\\boxed{11\\%}$.", False),
        ("The area decreases by $\\boxed{10\\% \\text{ of } 5}$.", False),
    ]
    batch = reward_fn([_sample(response, "10") for response, _ in rows])
    assert batch.acc.tolist() == [expected for _, expected in rows]
    assert batch.metrics["reward/num_symbolic_checks"] == 0
