"""Boxed / LaTeX answers: extraction, the in-process fast path, and symbolic verdicts through the pool."""

from __future__ import annotations

import pytest

from dapo.rewards import RewardSample, check_math_answer, last_boxed, normalize_latex


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


def test_fast_path_decides_without_sympy():
    assert check_math_answer("so $\\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}").result.acc
    assert check_math_answer("\\boxed{0.5}", "\\frac{1}{2}").result.acc
    assert not check_math_answer("\\boxed{0.6}", "\\frac{1}{2}").result.acc
    assert check_math_answer("no answer", "1").result.failure == "no_answer"
    assert check_math_answer("\\boxed{\\sin(\\pi/6)}", "\\frac12").needs_symbolic


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
