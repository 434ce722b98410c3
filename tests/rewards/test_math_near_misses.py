"""The MATH scorer never accepts a wrong answer (docs/rewards.md), pinned on a corpus of near misses built
from the real MATH-500 ground truths: each distinct ground truth g, rewritten into responses whose answer is
close to g but is not g (g apples, g thousand, g% for a g that is not a bare number, `10\\%` for 0.1,
2x = g, g \\ldots, a boxed g retracted, g + 1, (g)!, a 6-place decimal for an irrational g, ...). None is
accepted through `build_reward_function` routing with data_source "math500", the math-verify pool included.
The same ground truths written the usual ways (a final box, `$\\boxed{g}$.`, display math, an end-of-sequence
marker, `\\dfrac`, spacing, `0.5` for `\\frac{1}{2}`, `x = g`, units dropped, `g\\%` for a bare number g, as
MATH's normaliser strips `\\%`) and a table of equivalent forms that need math-verify are accepted.

Near misses that math-verify itself would accept (it reads a leading value and drops trailing words, solves
`2x = 540` for 540, forgives `\\ldots` and `\\approx`, rounds floats to 6 places) must be rejected before
the pool: `GUARDED` kinds are decided in-process. `SYMBOLIC` kinds (values math-verify computes) go to the
pool, on a sample of the ground truths: the pool costs ~2 s to start and ~20 ms per check.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

import pytest

from dapo.data import read_dataset
from dapo.rewards import RewardSample, check_math_answer, normalize_latex, parse_number

SYMBOLIC_STRIDE = 12  # each SYMBOLIC kind is applied to every 12th ground truth (a different offset per kind)
MAX_POOL_CHECKS = 450


@pytest.fixture(scope="module")
def ground_truths(data_file) -> list[str]:
    """The distinct ground truths of MATH-500, shortest first."""
    gts = {r.ground_truth.strip() for r in read_dataset(data_file("math-500.jsonl")).records}
    return sorted(gts, key=lambda g: (len(g), g))


def _value(g: str) -> Fraction | None:
    """g's exact value when it is a plain number (`\\frac{1}{2}`, `15\\mbox{ cm}^2`), else None."""
    return parse_number(normalize_latex(g))


def _scalar(g: str) -> bool:
    """One expression: not a list, tuple, interval, matrix, equation, set, choice or base numeral."""
    return not re.search(r",|=|\\in\b|\\begin|\\cup|\\pm|\\text|\\mbox|\\\$|_|\\\{", g)


def _nonzero_scalar(g: str) -> bool:
    return _scalar(g) and _value(g) != 0


def _variables(g: str) -> list[str]:
    """g's one-letter variables (letters outside command names), in order: `3R^2` -> R, `\\cot x` -> x."""
    return re.findall(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])", re.sub(r"\\[A-Za-z]+", " ", g))


def _fresh(g: str) -> str:
    """A variable g does not use."""
    return next(v for v in "xtwuv" if v not in g)


def _value_part(g: str) -> int:
    """Where g's value starts: after `name =` (`x=5` names x and states 5; the name is a label, not compared)."""
    return g.rfind("=") + 1


def _swap_case(g: str) -> str | None:
    """g with the last one-letter variable of its value in the other case (`3r^2` for `3R^2`), or None."""
    start = _value_part(g)
    found = [m for m in re.finditer(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])", g[start:]) if m.group() in _variables(g)]
    if not found or "\\text" in g:
        return None
    k = start + found[-1].start()
    return g[:k] + g[k].swapcase() + g[k + 1 :]


def _other_variable(g: str) -> str | None:
    """g with the last one-letter variable of its value renamed to one g does not use (`2n` for `2k`)."""
    variables = [v for v in _variables(g[_value_part(g) :]) if v not in "ei"]
    if not variables or "\\text" in g:
        return None
    return re.sub(rf"(?<![A-Za-z\\]){variables[-1]}(?![A-Za-z])", _fresh(g), g)


def _split_digits(g: str, sep: str) -> str | None:
    """An integer g with `sep` after its first digit, unless that could be a thousands separator."""
    digits = g.lstrip("-")
    if not re.fullmatch(r"-?\d+", g) or len(digits) < 2 or len(digits) == 4:
        return None
    return g[: len(g) - len(digits)] + digits[0] + sep + digits[1:]


def _last_digit_changed(g: str) -> str | None:
    """g with its last digit d replaced by d + 1 (mod 10)."""
    digits = [m.start() for m in re.finditer(r"\d", g)]
    if not digits:
        return None
    k = digits[-1]
    return g[:k] + str((int(g[k]) + 1) % 10) + g[k + 1 :]


def _base_changed(g: str) -> str | None:
    """A base-subscript numeral in the next base (`52_9` for `52_8`), None for other ground truths."""
    m = re.fullmatch(r"(\w+)_(\{?)(\d+)(\}?)", g)
    return None if m is None else f"{m[1]}_{m[2]}{int(m[3]) + 1}{m[4]}"


def _bare_number(g: str) -> bool:
    """g is a plain number and nothing else: no unit, dollar sign, degree sign or name (`\\frac{1}{2}`, `10,\\!080`;
    not `15\\mbox{ cm}^2`, `\\$36`, `90^\\circ`, `x=5`). A percent sign after such a g is the same answer."""
    return _value(g) is not None and not re.search(r"[A-Za-z^$°]", re.sub(r"\\[dt]?frac", "", g))


def _hundredfold(g: str) -> str | None:
    """100 times a bare-number g's value, as a numeral: `10` for 0.1, `100` for 1 (math-verify reads `10\\%` as
    0.1), None for other ground truths and 0."""
    v = _value(g) if _bare_number(g) else None
    if not v:
        return None
    w = 100 * v
    sign = "-" if w < 0 else ""
    return str(w.numerator) if w.denominator == 1 else f"{sign}\\frac{{{abs(w.numerator)}}}{{{w.denominator}}}"


def _box(answer: str | None) -> str | None:
    return None if answer is None else f"We find that the answer is $\\boxed{{{answer}}}$."


# kind -> response for ground truth g (None when the kind does not apply to g). Applied to every ground truth;
# each is decided in-process (math-verify would accept many of them).
GUARDED = {
    # words and multipliers that math-verify drops: not units of the closed list
    "text words": lambda g: _box(f"{g} \\text{{ apples}}"),
    "bare words": lambda g: _box(f"{g} apples"),
    "word after a negative space": lambda g: _box(f"{g}\\!apples"),
    "thousand": lambda g: _box(f"{g}\\text{{ thousand}}"),
    "million": lambda g: _box(f"{g} \\text{{ million}}"),
    "or more": lambda g: _box(f"{g} \\text{{ or more}}"),
    "hedge": lambda g: _box(f"{g} \\text{{ or }} 1001"),
    # a percentage for a ground truth that is not one (after a bare number g, a percent sign is right: RIGHT)
    "percent sign": lambda g: None if _bare_number(g) else _box(f"{g}\\%"),
    "bare percent": lambda g: None if _bare_number(g) else _box(f"{g}%"),
    "percent word": lambda g: _box(f"{g} \\text{{ percent}}"),
    "percent of": lambda g: _box(f"{g}\\% \\text{{ of }} 5"),
    "percent for a fraction": lambda g: _box(f"{h}\\%") if (h := _hundredfold(g)) else None,
    "percent, last digit changed": lambda g: _box(f"{_last_digit_changed(g)}\\%") if _bare_number(g) else None,
    # equations and relations (math-verify solves `2x = g` for its right side)
    "2x =": lambda g: None if "=" in g else _box(f"2{_fresh(g)} = {g}"),
    "x^2 =": lambda g: None if "=" in g else _box(f"{_fresh(g)}^2 = {g}"),
    "x =, x =": lambda g: None if "=" in g else _box(f"{_fresh(g)} = 1001, {_fresh(g)} = {g}"),
    "geq": lambda g: _box(f"{_fresh(g)} \\geq {g}"),
    # marks that math-verify forgives
    "approx": lambda g: _box(f"\\approx {g}"),
    "x approx": lambda g: _box(f"{_fresh(g)} \\approx {g}"),
    "ldots": lambda g: _box(f"{g} \\ldots"),
    "plus or minus": lambda g: None if "\\pm" in g else _box(f"{g} \\pm 0"),
    "degree sign": lambda g: None if _value(g) is not None or "circ" in g or "degree" in g else _box(f"{g}^\\circ"),
    "prime": lambda g: _box(f"{g}'"),
    # other names
    "variable case": lambda g: _box(_swap_case(g)),
    "other variable": lambda g: _box(_other_variable(g)),
    "base changed": lambda g: _box(_base_changed(g)),
    # numerals side by side
    "space between digits": lambda g: _box(_split_digits(g, " ")),
    "thin space between digits": lambda g: _box(_split_digits(g, "\\;")),
    "tilde between digits": lambda g: _box(_split_digits(g, "~")),
    # a box that is not the final answer
    "box retracted": lambda g: f"So the answer is $\\boxed{{{g}}}$. Wait, that is wrong: it is 1001.",
    "box then more work": lambda g: f"\\[\\boxed{{{g}}}\\]\nHmm, no. Recomputing gives something else.",
    "box then factorial sign": lambda g: f"So $\\boxed{{{g}}}$!",
    "box then words": lambda g: f"\\boxed{{{g}}} apples",
    "box then hedge": lambda g: f"\\boxed{{{g}}} or \\(1001\\)",
    "box then I hope": lambda g: f"The final answer is $\\boxed{{{g}}}$. I hope it is correct, but it may be 1001.",
    "unterminated box": lambda g: f"So \\boxed{{{g}",
    # the DAPO format, answered with words
    "answer line with words": lambda g: f"Work.\nAnswer: ${g}$ apples",
}

# Near misses whose value math-verify computes: through the pool, on every SYMBOLIC_STRIDE-th ground truth.
SYMBOLIC = {
    "plus one": lambda g: _box(f"{g} + 1") if _scalar(g) else None,
    "doubled": lambda g: _box(f"2\\left({g}\\right)") if _nonzero_scalar(g) else None,
    "negated": lambda g: _box(f"-\\left({g}\\right)") if _nonzero_scalar(g) else None,
    "squared": lambda g: _box(f"\\left({g}\\right)^2") if _scalar(g) and _value(g) not in (0, 1) else None,
    "factorial": lambda g: _box(f"\\left({g}\\right)!") if _scalar(g) and _value(g) not in (1, 2) else None,
    "times 10^3": lambda g: _box(f"{g} \\times 10^3") if _nonzero_scalar(g) else None,
    "k": lambda g: _box(f"{g}k") if _nonzero_scalar(g) else None,
    "pi": lambda g: _box(f"{g}\\pi") if _nonzero_scalar(g) else None,
    "sqrt": lambda g: _box(f"{g}\\sqrt{{2}}") if _nonzero_scalar(g) else None,
    "comma between digits": lambda g: _box(_split_digits(g, ",")),
    "one more item": lambda g: _box(f"{g}, 1001"),
    "last digit": lambda g: _box(_last_digit_changed(g)),
    "box then answer line": lambda g: f"So $\\boxed{{{g}}}$. Wait, no.\nAnswer: 1001",
}

# Irrational MATH-500 ground truths and their values: a decimal approximation is not the answer (math-verify
# rounds floats to 6 places and would accept one).
IRRATIONAL = {
    "\\sqrt{51}": math.sqrt(51),
    "\\pi": math.pi,
    "12\\pi": 12 * math.pi,
    "2\\sqrt{5}": 2 * math.sqrt(5),
    "\\frac{\\sqrt{3}}{3}": math.sqrt(3) / 3,
    "\\frac{3\\sqrt{3}}{4}": 3 * math.sqrt(3) / 4,
    "\\frac{20000}{\\pi}": 20000 / math.pi,
    "18+2\\pi": 18 + 2 * math.pi,
    "1+2\\sqrt{3}": 1 + 2 * math.sqrt(3),
    "-\\sqrt{3}": -math.sqrt(3),
    "11\\sqrt2": 11 * math.sqrt(2),
    "-\\frac{\\pi}{6}": -math.pi / 6,
}
# More near misses through the pool, written out: (ground truth, response).
SYMBOLIC_TABLE = [
    *[(g, _box(f"{v:.{places}f}")) for g, v in IRRATIONAL.items() for places in (2, 6, 8)],
    ("\\left( 3, \\frac{\\pi}{2} \\right)", _box("(3, 1.570796)")),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", _box("(3,1.5707963)")),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", _box("[1.233701, 12.337006]")),
    (".0000672", _box("6.73 \\times 10^{-5}")),
    ("540", _box("540 \\times 10^3")),
    ("540", _box("\\frac{540}{10^3}")),
    ("\\frac{1}{2}", _box("\\frac{1}{2}!")),
    ("\\frac{1}{2}", _box("\\sin(\\pi/3)")),
    # equations: not solved for their right side when the ground truth is an equation too
    ("y = 2x + 3", _box("y = 2x + 4")),
    ("y = 2x + 3", _box("2y = 2x + 3")),
    ("y = -2x", _box("2y = -2x")),
    ("x=5", _box("x = 6")),
    ("x=5", _box("2x = 5")),
    ("x=5", _box("x = 5, x = 6")),
    ("5x - 7y + 11z + 4 = 0", _box("5x - 7y + 11z - 4 = 0")),
    ("5x - 7y + 11z + 4 = 0", _box("5x - 7y + 11z = 4")),
    ("3, 5, 7", _box("3, 5")),
    ("(-\\infty, 0]", _box("(-\\infty, 0)")),
]


# The same ground truths written the usual ways: accepted.
def _decimal(g: str) -> str | None:
    """g's value as a decimal numeral when it is a non-integer plain number that terminates (`0.5`)."""
    v = _value(g)
    if v is None or v.denominator == 1 or any(p not in (2, 5) for p in _prime_factors(v.denominator)):
        return None
    return str(Decimal(v.numerator) / Decimal(v.denominator))


def _prime_factors(n: int) -> set[int]:
    factors, p = set(), 2
    while p * p <= n:
        while n % p == 0:
            factors.add(p)
            n //= p
        p += 1
    return factors | ({n} if n > 1 else set())


_UNIT_SUFFIX = re.compile(r"(.+?)\s*(?:\^\\circ|\\mbox\{ (?:cm|inches)\}\^2|\\text\{ (?:cents|degrees)\})")

RIGHT = {
    "final box": lambda g: f"So\n\\boxed{{{g}}}",
    "box in math, full stop": lambda g: f"The answer is $\\boxed{{{g}}}$.",
    "display math": lambda g: f"Therefore\n\\[\n\\boxed{{{g}}}\n\\]",
    "inline math": lambda g: f"So \\(\\boxed{{{g}}}\\).",
    "end-of-sequence marker": lambda g: f"So $\\boxed{{{g}}}$</s>",
    "chat end marker": lambda g: f"\\boxed{{{g}}}<|im_end|>",
    "bold": lambda g: f"**Final answer:** $\\boxed{{{g}}}$",
    "an earlier box corrected": lambda g: f"First \\boxed{{1001}}, but checking again, it is \\boxed{{{g}}}.",
    "answer line": lambda g: f"Work.\nAnswer: ${g}$",
    "padded box": lambda g: f"\\boxed{{ {g} }}",
    "spaces after commas": lambda g: _box(re.sub(r",\s*", ", ", g)) if "," in g else None,
    "no spaces": lambda g: _box(re.sub(r"\s*([-+=,()\[\]])\s*", r"\1", g)),
    "dfrac": lambda g: _box(g.replace("\\frac", "\\dfrac")) if "\\frac" in g else None,
    "tfrac": lambda g: _box(g.replace("\\frac", "\\tfrac")) if "\\frac" in g else None,
    "left right": lambda g: _box(f"\\left({m[1]}\\right)") if (m := re.fullmatch(r"\(([^()]*)\)", g)) else None,
    "x =": lambda g: None if "=" in g or "\\in" in g else _box(f"x = {g}"),
    "decimal": lambda g: _box(_decimal(g)),
    "fraction": lambda g: _box(f"\\frac{{{2 * int(g)}}}{{2}}") if re.fullmatch(r"-?\d+", g) else None,
    "units": lambda g: _box(f"{g} \\text{{ units}}") if re.fullmatch(r"-?\d+(\.\d+)?", g) else None,
    "unit dropped": lambda g: _box(m[1]) if (m := _UNIT_SUFFIX.fullmatch(g)) else None,
    "text unwrapped": lambda g: _box(m[1]) if (m := re.fullmatch(r"\\text\{(.*)\}", g)) else None,
    "braced base": lambda g: _box(re.sub(r"_(\d+)$", r"_{\1}", g)) if re.search(r"_\d+$", g) else None,
    "percent sign": lambda g: _box(f"{g}\\%") if _bare_number(g) else None,
    "bare percent": lambda g: _box(f"{g}%") if _bare_number(g) else None,
}

# Equivalent forms that need math-verify: (MATH-500 ground truth, boxed prediction).
EQUIVALENT = [
    ("\\frac{1}{2}", "\\sin(\\pi/6)"),
    ("2\\sqrt{5}", "\\sqrt{20}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("1\\frac{4}{5}", "\\frac{9}{5}"),
    ("1\\frac{4}{5}", "1.8"),
    ("137 \\frac{1}{2}", "137.5"),
    ("137 \\frac{1}{2}", "\\frac{275}{2}"),
    ("y = 2x + 3", "y = 3 + 2x"),
    ("y = 2x + 3", "2y = 4x + 6"),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z = -4"),
    ("x \\in [-2,7]", "[-2, 7]"),
    ("(a+5)(b+2)", "(b+2)(a+5)"),
    ("(a+5)(b+2)", "ab + 2a + 5b + 10"),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}"),
    ("p - q", "-q + p"),
    ("1,-2", "-2, 1"),
    ("\\text{(B)}", "B"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}^\\circ"),
    ("3 \\pm 2 \\sqrt{2}", "3 \\pm \\sqrt{8}"),
    ("-\\frac{\\pi}{6}", "-\\frac{1}{6}\\pi"),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}"),
    ("8n^2 + 4n + 1", "1 + 4n + 8n^2"),
    ("6 - 5i", "-5i + 6"),
    (".0000672", "6.72 \\times 10^{-5}"),
    ("540", "5.4 \\times 10^2"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt{5}, 1-\\sqrt{5}"),
    ("15\\mbox{ cm}^2", "\\sqrt{225}"),
]


def _rows(table, gts, stride: int = 1) -> list[tuple[str, str, str]]:
    """[(kind, response, ground truth)] for every kind of `table` that applies, on every `stride`-th g."""
    rows = []
    for k, (kind, build) in enumerate(table.items()):
        rows += [(kind, r, g) for g in gts[k % stride :: stride] if (r := build(g)) is not None]
    return rows


def _samples(rows) -> list[RewardSample]:
    return [RewardSample("p", response, 10, False, g, "math500", {}) for _, response, g in rows]


def _accepted(reward_fn, rows) -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    batch = reward_fn(_samples(rows))
    return [row for row, acc in zip(rows, batch.acc.tolist(), strict=True) if acc], batch.metrics


def test_corpus_size(ground_truths):
    assert len(ground_truths) >= 300
    guarded = _rows(GUARDED, ground_truths)
    assert len(guarded) >= 25 * len(ground_truths)
    assert {k for k, *_ in guarded} == set(GUARDED)  # every kind applies to some ground truth
    assert {k for k, *_ in _rows(SYMBOLIC, ground_truths, SYMBOLIC_STRIDE)} == set(SYMBOLIC)
    assert {g for g, _ in [*SYMBOLIC_TABLE, *EQUIVALENT]} <= set(ground_truths)


def test_guarded_near_misses_are_rejected_in_process(ground_truths):
    # The guard, not math-verify, rejects these: none is left for the pool.
    rows = _rows(GUARDED, ground_truths)
    checks = [(kind, r, g, check_math_answer(r, g)) for kind, r, g in rows]
    assert [(kind, r, g) for kind, r, g, c in checks if c.needs_symbolic or c.result.acc] == []


def test_no_near_miss_is_accepted_through_the_reward_step(reward_fn, ground_truths):
    symbolic = _rows(SYMBOLIC, ground_truths, SYMBOLIC_STRIDE)
    table = [("table", r, g) for g, r in SYMBOLIC_TABLE]
    rows = _rows(GUARDED, ground_truths) + symbolic + table
    accepted, metrics = _accepted(reward_fn, rows)
    assert accepted == []
    assert 200 <= metrics["reward/num_symbolic_checks"] <= MAX_POOL_CHECKS  # the pool did take part, briefly
    assert metrics["reward/num_timeouts"] == 0


def test_right_answers_are_accepted(reward_fn, ground_truths):
    rows = _rows(RIGHT, ground_truths)
    assert len(rows) >= 12 * len(ground_truths)
    rows += [("equivalent", _box(pred), g) for g, pred in EQUIVALENT]
    batch = reward_fn(_samples(rows))
    rejected = [row for row, acc in zip(rows, batch.acc.tolist(), strict=True) if not acc]
    assert rejected == []
    assert batch.metrics["reward/num_symbolic_checks"] >= len(EQUIVALENT)
