"""The default DAPO scorer never accepts a wrong answer (docs/rewards.md), pinned on a corpus of near misses
built from the real data sets' ground truths: each ground truth g of AIME 2024, AIME 2025, AMC 2023 and a
sample of DAPO-Math-17k, rewritten into responses whose answer is close to g but is not g (g factorial,
g million, gk, a boxed g retracted, g + 1, ...). None is accepted, through every entry point that scores
these data sources by default. The same ground truths written the ways verl accepts correctly stay accepted,
and the false negatives of verl that the default mode fixes stay fixed.

Each kind of near miss also records, by hand, whether verl accepts it (its normalisation keeps the first
`$…$`, drops every space, commas between digits, "a ", `\\ldots`, and the text before any `=`): verl mode
must give exactly those verdicts.
"""

from __future__ import annotations

import re

import pytest

from dapo.data import read_dataset
from dapo.rewards import RewardSample, build_reward_function, score_dapo
from dapo.rewards.dapo_answer import score_dapo_many

DAPO_SETS = ["aime-2024.parquet", "aime-2025.jsonl", "amc-2023.jsonl", "dapo-math-17k.parquet"]
DAPO_17K_SAMPLE = 60  # distinct ground truths of the 2,250 in DAPO-Math-17k, evenly spaced


@pytest.fixture(scope="module")
def ground_truths(data_file) -> list[tuple[str, str]]:
    """(ground truth, data source) pairs, distinct ground truths per data set (all integers)."""
    pairs: list[tuple[str, str]] = []
    for name in DAPO_SETS:
        by_gt = {r.ground_truth: r.data_source for r in read_dataset(data_file(name)).records}
        gts = sorted(by_gt, key=lambda g: (len(g), g))
        if name.startswith("dapo-math"):
            gts = gts[:: len(gts) // DAPO_17K_SAMPLE][:DAPO_17K_SAMPLE]
        pairs += [(g, by_gt[g]) for g in gts]
    assert all(re.fullmatch(r"-?\d+", g) for g, _ in pairs)
    return pairs


def _plus(g: str, k: int) -> str:
    return str(int(g) + k)


def _split_digits(g: str, sep: str) -> str | None:
    """`Answer: ` g with `sep` after its first digit, unless that makes a thousands separator (1,000)."""
    digits = g.lstrip("-")
    if len(digits) < 2 or len(digits) == 4:
        return None
    return "Answer: " + g[: len(g) - len(digits)] + digits[0] + sep + digits[1:]


def _grouped(g: str, sep: str) -> str | None:
    """`Answer: ` g with `sep` between groups of three digits (`1{,}234{,}567`), or None below 1000."""
    return "Answer: " + f"{int(g):,}".replace(",", sep) if abs(int(g)) >= 1000 else None


# name -> (response for ground truth g or None when the kind does not apply to g, verl accepts it)
NEAR_MISSES = {
    # trailing words that change the value or are mathematics, not units
    "factorial": (lambda g: f"Answer: {g} factorial", False),
    "squared": (lambda g: f"Answer: {g} squared", False),
    "cubed": (lambda g: f"Answer: {g} cubed", False),
    "million": (lambda g: f"Answer: {g} million", False),
    "thousand": (lambda g: f"Answer: {g} thousand", False),
    "text thousand": (lambda g: f"Answer: {g}\\text{{ thousand}}", False),
    "hundred": (lambda g: f"Answer: {g} hundred", False),
    "dozen": (lambda g: f"Answer: {g} dozen", False),
    "percent word": (lambda g: f"Answer: {g} percent", False),
    "percent sign": (lambda g: f"Answer: {g}\\%", False),
    "bare percent": (lambda g: f"Answer: {g}%", False),
    "choose k": (lambda g: f"Answer: {g} choose k", False),
    "mod p": (lambda g: f"Answer: {g} mod p", False),
    "or more": (lambda g: f"Answer: {g} or more", False),
    "or fewer": (lambda g: f"Answer: {g} \\text{{ or fewer}}", False),
    "or choice": (lambda g: f"Answer: {g} or \\text{{(C)}}", False),
    "words outside the unit list": (lambda g: f"Answer: {g} apples", False),
    # variables and multipliers
    "k": (lambda g: f"Answer: {g}k", False),
    "a": (lambda g: f"Answer: {g} a", False),
    "x": (lambda g: f"Answer: {g}x", False),
    "bare m": (lambda g: f"Answer: {g} m", False),
    "pi": (lambda g: f"Answer: {g}\\pi", False),
    "i": (lambda g: f"Answer: {g}i", False),
    "sqrt": (lambda g: f"Answer: {g}\\sqrt{{2}}", False),
    "R^2": (lambda g: f"Answer: {g}R^2", False),
    "times 10^3": (lambda g: f"Answer: {g} \\times 10^3", False),
    "power": (lambda g: f"Answer: {g}^2", False),
    "2 cdot": (lambda g: f"Answer: 2 \\cdot {g}", False),
    "bang": (lambda g: f"Answer: {g}!", False),
    "negated": (lambda g: None if g == "0" else f"Answer: {_plus('0', -int(g))}", False),
    "plus or minus": (lambda g: f"Answer: {g} \\pm 1", False),
    # a box that is not the final answer
    "box retracted": (lambda g: f"So the answer is \\boxed{{{g}}}. Wait, that is wrong: it is {_plus(g, 1)}.", False),
    "box then more work": (lambda g: f"\\boxed{{{g}}}\nHmm, no. Recomputing gives {_plus(g, 1)}.", False),
    "box retracted on the line": (lambda g: f"Answer: \\boxed{{{g}}} no, {_plus(g, 1)}", False),
    "two boxes": (lambda g: f"Answer: \\boxed{{{g}}} or \\boxed{{{_plus(g, 1)}}}", False),
    "unterminated box": (lambda g: f"Answer: \\boxed{{{g}", False),
    "box then factorial sign": (lambda g: f"So $\\boxed{{{g}}}$!", False),
    # hedges, equations and inequalities
    "or next": (lambda g: f"Answer: {g} or {_plus(g, 1)}", False),
    "math or math": (lambda g: f"Answer: ${g}$ or ${_plus(g, 1)}$", True),
    "math then factorial": (lambda g: f"Answer: ${g}$ factorial", True),
    "math then million": (lambda g: f"Answer: ${g}$ million", True),
    "x = or x =": (lambda g: f"Answer: x = {_plus(g, 1)} or x = {g}", True),
    "list then x =": (lambda g: f"Answer: {_plus(g, 1)}, x = {g}", True),
    "2x =": (lambda g: f"Answer: 2x = {g}", True),
    "x^2 =": (lambda g: f"Answer: x^2 = {g}", True),
    ">=": (lambda g: f"Answer: x >= {g}", True),
    "<=": (lambda g: f"Answer: x <= {g}", True),
    "geq": (lambda g: f"Answer: x \\geq {g}", False),
    "neq": (lambda g: f"Answer: x \\neq {g}", False),
    # other values
    "plus one": (lambda g: f"Answer: {_plus(g, 1)}", False),
    "minus one": (lambda g: f"Answer: {_plus(g, -1)}", False),
    "half more": (lambda g: f"Answer: {g}.5", False),
    "times ten": (lambda g: None if g == "0" else f"Answer: {g}0", False),
    "last digit dropped": (lambda g: f"Answer: {g[:-1]}" if len(g.lstrip("-")) > 1 else None, False),
    "comma between digits": (lambda g: _split_digits(g, ",") if g[0] != "-" else None, True),
    "space between digits": (lambda g: _split_digits(g, " "), True),
    "NUL between digits": (lambda g: _split_digits(g, "\x00"), False),
    "trailing article": (lambda g: f"Answer: {g} a ", True),
    "ldots": (lambda g: f"Answer: {g}\\ldots", True),
}

# The same ground truths written the ways verl accepts, correctly: both modes accept all of them.
VERL_CORRECT = {
    "plain": lambda g: f"Answer: {g}",
    "lower case, no space": lambda g: f"answer:{g}",
    "on the next line": lambda g: f"Answer:\n{g}",
    "lines after": lambda g: f"Answer: {g}\nThat is the final answer.",
    "math": lambda g: f"Answer: ${g}$",
    "period in math": lambda g: f"Answer: ${g}.$",
    "boxed": lambda g: f"Answer: \\boxed{{{g}}}",
    "text": lambda g: f"Answer: \\text{{{g}}}",
    "textbf": lambda g: f"Answer: \\textbf{{{g}}}",
    "quoted": lambda g: f'Answer: "{g}"',
    "x =": lambda g: f"Answer: x = {g}",
    "m + n =": lambda g: f"Answer: m + n = {g}",
    "computation": lambda g: f"Answer: {_plus(g, -7)} + 7 = {g}",
    "degrees": lambda g: f"Answer: {g} degrees",
    "circ": lambda g: f"Answer: {g}^\\circ",
    "braced circ": lambda g: f"Answer: {g}^{{\\circ}}",
    "units": lambda g: f"Answer: {g} units",
    "square units": lambda g: f"Answer: {g} square units",
    "text cm": lambda g: f"Answer: {g}\\text{{ cm}}",
    "text m": lambda g: f"Answer: {g} \\text{{ m}}",
    "dollars": lambda g: f"Answer: {g} dollars",
    "dollar sign": lambda g: f"Answer: \\${g}",
    "ways": lambda g: f"Answer: {g} ways",
    "ordinal": lambda g: f"Answer: {g}\\mathrm{{th}}",
    "braced comma": lambda g: _grouped(g, "{,}"),
    "thousands comma": lambda g: f"Answer: {int(g):,}" if int(g) >= 1000 else None,
}

# verl's false negatives that the default mode fixes (docs/rewards.md): verl rejects, default accepts.
FIXED_FALSE_NEGATIVES = {
    "bold label": lambda g: f"**Answer:** {g}",
    "bold label before colon": lambda g: f"**Answer**: {g}",
    "trailing period": lambda g: f"Answer: {g}.",
    "final box, no label": lambda g: f"So the result is\n\\boxed{{{g}}}",
    "final box in math": lambda g: f"Therefore $\\boxed{{{g}}}$.",
    "final box, end-of-sequence marker": lambda g: f"Therefore $\\boxed{{{g}}}$</s>",
    "decimal zero": lambda g: f"Answer: {g}.0",
    "fraction": lambda g: f"Answer: \\frac{{{2 * int(g)}}}{{2}}",
    "dfrac": lambda g: f"Answer: \\dfrac{{{2 * int(g)}}}{{2}}",
    "unit verl lacks": lambda g: f"Answer: {g} seconds",
    "boxed assignment": lambda g: f"Answer: \\boxed{{x = {g}}}",
    "trailing whitespace": lambda g: f"Answer: {g}" + "\n" * 400,
    "thin-space separator": lambda g: _grouped(g, "\\,"),
    "negative thousands": lambda g: f"Answer: {int(g):,}" if int(g) <= -1000 else None,
}


def _corpus(table, ground_truths):
    """[(kind, response, ground truth, data source)] for every kind of `table` that applies to g."""
    rows = []
    for kind, build in table.items():
        build = build[0] if isinstance(build, tuple) else build
        rows += [(kind, r, g, src) for g, src in ground_truths if (r := build(g)) is not None]
    return rows


def test_corpus_size(ground_truths):
    assert len(ground_truths) >= 130
    near = _corpus(NEAR_MISSES, ground_truths)
    assert len(near) >= 100 * len(NEAR_MISSES) // 2
    assert {k for k, *_ in near} == set(NEAR_MISSES)  # every kind applies to some ground truth


@pytest.mark.parametrize("kind", sorted(NEAR_MISSES))
def test_no_near_miss_is_accepted_by_the_default_mode(ground_truths, kind):
    rows = _corpus({kind: NEAR_MISSES[kind]}, ground_truths)
    accepted = [(r, g) for _, r, g, _ in rows if score_dapo(r, g).acc]
    assert accepted == []


@pytest.mark.parametrize("kind", sorted(NEAR_MISSES))
def test_verl_mode_accepts_exactly_verls_false_positives(ground_truths, kind):
    rows = _corpus({kind: NEAR_MISSES[kind]}, ground_truths)
    verl_accepts = NEAR_MISSES[kind][1]
    assert [(r, g) for _, r, g, _ in rows if score_dapo(r, g, mode="verl").acc is not verl_accepts] == []


def test_no_near_miss_is_accepted_through_the_reward_step(ground_truths):
    # The entry points the trainer uses by default: routing by data_source (math_dapo, aime, amc, DAPO-17k)
    # to the default mode, in-process and as a pool worker runs it (score_dapo_many).
    rows = _corpus(NEAR_MISSES, ground_truths)
    samples = [RewardSample("p", r, 10, False, g, src, {}) for _, r, g, src in rows]
    fn = build_reward_function(
        overlong_enable=False, max_response_length=10, overlong_buffer_length=1, overlong_penalty_factor=1.0
    )
    assert not bool(fn(samples).acc.any())
    assert not any(res.acc for res in score_dapo_many([r for _, r, *_ in rows], [g for *_, g, _ in rows]))


@pytest.mark.parametrize("mode", ["default", "verl"])
def test_verl_correct_forms_are_accepted(ground_truths, mode):
    rows = _corpus(VERL_CORRECT, ground_truths)
    assert len(rows) >= 20 * len(ground_truths)
    assert [(k, r, g) for k, r, g, _ in rows if not score_dapo(r, g, mode=mode).acc] == []


def test_fixed_false_negatives_stay_fixed(ground_truths):
    rows = _corpus(FIXED_FALSE_NEGATIVES, ground_truths)
    assert [(k, r, g) for k, r, g, _ in rows if score_dapo(r, g, mode="verl").acc] == []
    assert [(k, r, g) for k, r, g, _ in rows if not score_dapo(r, g).acc] == []


# --- the ground truth is never changed into a different value ---------------------------------------------
# MATH-500 ground truths that start with a number followed by more: the leading number alone is a different
# answer, except when the rest is a unit of the closed list (then it is the same number).
UNIT_GROUND_TRUTHS = {
    "106^\\circ", "120^\\circ", "145^\\circ", "180^\\circ", "30^\\circ", "36^\\circ", "55^\\circ",
    "75^\\circ", "76^\\circ", "90^\\circ", "15\\mbox{ cm}^2", "864 \\mbox{ inches}^2", "5.4 \\text{ cents}",
}  # fmt: skip


def test_leading_number_of_a_ground_truth_is_not_the_ground_truth(data_file):
    gts = {r.ground_truth for r in read_dataset(data_file("math-500.jsonl")).records}
    led = {g: m.group() for g in gts if (m := re.match(r"-?\d+(\.\d+)?", g)) and m.end() < len(g)}
    assert set(led) >= UNIT_GROUND_TRUTHS and len(led) >= 50  # e.g. 3R^2, 2k, 12\pi, 10,\!080, 1\frac{4}{5}
    for g, number in sorted(led.items()):
        assert score_dapo(f"Answer: {number}", g).acc is (g in UNIT_GROUND_TRUTHS), (g, number)
        assert score_dapo(f"Answer: {g}", g).acc, g
