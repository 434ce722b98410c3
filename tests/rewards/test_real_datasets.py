"""Every ground truth of the shared evaluation sets scores correct when written in the expected response
format, and a perturbed answer scores wrong. MATH-500: all 500 rows, the perturbed ones through the
2-worker symbolic pool."""

from __future__ import annotations

import re

import pytest

from dapo.data import read_dataset
from dapo.rewards import RewardSample

DAPO_SETS = ["aime-2024.parquet", "aime-2025.jsonl", "amc-2023.jsonl"]


def _samples(records, responses):
    return [
        RewardSample(r.prompt_text, resp, 100, False, r.ground_truth, r.data_source, r.extra)
        for r, resp in zip(records, responses, strict=True)
    ]


def _perturb(answer: str) -> str:
    """Change the first digit (d -> d+1 mod 10); answers without digits get their last letter changed to
    another letter of the same case (math-verify compares variables case-insensitively)."""
    digits = [m.start() for m in re.finditer(r"\d", answer)]
    if digits:
        k = digits[0]
        return answer[:k] + str((int(answer[k]) + 1) % 10) + answer[k + 1 :]
    k = [m.start() for m in re.finditer(r"[A-Za-z]", answer)][-1]
    new = "r" if answer[k].lower() != "r" else "s"
    return answer[:k] + (new.upper() if answer[k].isupper() else new) + answer[k + 1 :]


@pytest.mark.parametrize("name", DAPO_SETS)
@pytest.mark.parametrize("mode", ["default", "verl"])
def test_dapo_sets(data_file, name, mode):
    from dapo.rewards import build_reward_function

    records = read_dataset(data_file(name)).records
    fn = build_reward_function(
        overlong_enable=False, max_response_length=10, overlong_buffer_length=1, overlong_penalty_factor=1.0,
        scorer_mode=mode,
    )  # fmt: skip
    good = fn(_samples(records, [f"Let me think.\nSo it is done.\nAnswer: {r.ground_truth}" for r in records]))
    assert bool(good.acc.all()), [p for p, a in zip(good.preds, good.acc.tolist(), strict=True) if not a]
    bad = fn(_samples(records, [f"Work.\nAnswer: {_perturb(r.ground_truth)}" for r in records]))
    assert not bool(bad.acc.any())


def test_gsm8k_test_set(data_file):
    from dapo.rewards import build_reward_function

    records = read_dataset(data_file("gsm8k-test.jsonl")).records
    assert len(records) == 1319
    fn = build_reward_function(
        overlong_enable=False, max_response_length=10, overlong_buffer_length=1, overlong_penalty_factor=1.0
    )
    # The GSM8K format: the reference solution itself, ending in "#### N".
    good = fn(_samples(records, [r.extra["solution"] for r in records]))
    assert bool(good.acc.all())
    bad = fn(_samples(records, [f"so\n#### {int(r.ground_truth) + 1}" for r in records]))
    assert not bool(bad.acc.any())


def test_math500_all_rows(data_file, reward_fn):
    records = read_dataset(data_file("math-500.jsonl")).records
    assert len(records) == 500
    good = reward_fn(_samples(records, [f"We find that the answer is $\\boxed{{{r.ground_truth}}}$." for r in records]))
    assert bool(good.acc.all())
    bad = reward_fn(_samples(records, [f"So $\\boxed{{{_perturb(r.ground_truth)}}}$" for r in records]))
    wrongly_accepted = [(r.ground_truth, p) for r, p, a in zip(records, bad.preds, bad.acc.tolist(), strict=True) if a]
    assert wrongly_accepted == []
    assert bad.metrics["reward/num_timeouts"] == 0
