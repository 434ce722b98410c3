"""Evaluation metrics: unbiased pass@k (hand values, brute force over k-subsets), maj@k conventions, avg@k."""

import dataclasses
import itertools
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from dapo.data import ChatMessage, PromptRecord
from dapo.rollout.base import RolloutBatch, wave_seed
from dapo.step.evaluation import evaluate, format_eval, majority_correct, pass_at_k

# ---------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 0.7),  # 1 − C(3,2)/C(5,2) = 1 − 3/10
        (6, 2, 3, 0.8),  # 1 − C(4,3)/C(6,3) = 1 − 4/20
        (4, 1, 3, 0.75),  # 1 − C(3,3)/C(4,3) = 1 − 1/4
        (10, 3, 1, 0.3),  # k = 1: 1 − (n−c)/n = c/n
        (10, 3, 2, 8 / 15),  # 1 − C(7,2)/C(10,2) = 1 − 21/45 = 24/45
        (8, 0, 3, 0.0),  # c = 0: no subset holds a correct sample
        (8, 8, 3, 1.0),  # c = n
        (5, 3, 3, 1.0),  # n − c = 2 < k = 3: every 3-subset holds a correct sample
        (4, 1, 4, 1.0),  # k = n with c ≥ 1: the one subset is everything
        (4, 0, 4, 0.0),  # k = n with c = 0
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def _pass_at_k_brute_force(n: int, c: int, k: int) -> Fraction:
    """Fraction of the C(n, k) subsets of k of the n samples (samples 0 … c−1 correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_of_all_k_subsets(n):
    # every c in [0, n] and k in [1, n]: covers c = 0, c = n, k = n and n − c < k
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_pass_at_k_brute_force(n, c, k)), abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n, c, k", [(1000, 10, 100), (2048, 1, 1024), (500, 250, 16)])
def test_pass_at_k_stays_accurate_for_large_n(n, c, k):
    # C(n, k) overflows a float long before these n; the running product does not.
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_1_is_the_mean_accuracy():
    for n in range(1, 12):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 1, 0), (4, 1, 5), (4, -1, 2), (4, 5, 2), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    # c > n used to return 1.0 and c < 0 to return 0.0 silently
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------- maj@k


@pytest.mark.parametrize(
    "preds, acc, expected",
    [
        (["4", "5", "4"], [True, False, True], True),  # "4" has 2 votes of 3 and is correct
        (["5", "5", "4"], [False, False, True], False),  # the correct answer is in the minority
        (["4", "5", "6"], [False, True, False], False),  # 1-1-1 tie -> first answer "4", wrong
        (["5", "4", "4", "5"], [False, True, True, False], False),  # 2-2 tie -> "5" appears first
        (["4", "5", "5", "4"], [True, False, False, True], True),  # same votes, "4" appears first
        ([None, None, "4"], [False, False, True], True),  # no-answer responses do not vote
        ([None, None], [False, False], False),  # no answer at all is wrong
        ([], [], False),
        (["4", "4", "5"], [True, False, False], True),  # winner correct if ANY of its responses is
    ],
)
def test_majority_correct(preds, acc, expected):
    assert majority_correct(preds, acc) is expected


def test_majority_tie_break_is_by_first_appearance_not_by_value_or_hash():
    # The same multiset of votes, two orders: the answer seen first wins, whatever its string value.
    for first, second in (("b", "a"), ("a", "b")):
        preds = [first, second, second, first]
        acc = [p == first for p in preds]
        assert majority_correct(preds, acc) is True
        assert majority_correct(tuple(preds), tuple(not a for a in acc)) is False


def test_majority_correct_needs_one_score_per_response():
    # With a short-circuiting any() a strict zip could stop before noticing the mismatch.
    with pytest.raises(ValueError, match="one entry per response"):
        majority_correct(["4", "4", "5"], [True])


# ---------------------------------------------------------------- avg@k through evaluate()

# Three problems × n = 4 responses, rows contiguous per problem; "" stands for a response without an answer.
TEXTS = ["7", "7", "3", "", "2", "2", "1", "3", "8", "8", "8", "8"]
RECORDS = [
    PromptRecord(uid="a", messages=(ChatMessage("user", "3+4"),), ground_truth="7", data_source="arith"),
    PromptRecord(uid="b", messages=(ChatMessage("user", "0+1"),), ground_truth="1", data_source="arith"),
    PromptRecord(uid="c", messages=(ChatMessage("user", "..."),), ground_truth="9", data_source="lighteval/MATH"),
]


class _FixedEngine:
    """Returns row r = the r-th response: token ids all equal to r, length r + 1 (so lengths are 1 … 12)."""

    def generate(self, prompts, n, sampling, seed):
        rows, width = len(prompts) * n, len(TEXTS)
        lengths = torch.arange(1, rows + 1)
        ids = torch.arange(rows).unsqueeze(1).expand(rows, width).clone()
        mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        return RolloutBatch(
            prompt_ids=torch.ones(rows, 1, dtype=torch.long),
            prompt_mask=torch.ones(rows, 1, dtype=torch.bool),
            response_ids=ids,
            response_mask=mask,
            logprobs=torch.zeros(rows, width),
            sampling_logprobs=None,
            response_lengths=lengths,
            finish_reasons=("eos",) * rows,
            group_index=torch.arange(rows) // n,
            n=n,
        )


def _score(samples):
    """Exact match of the decoded response with the record's ground truth; score ±1, no answer -> pred None."""
    preds = tuple(s.response or None for s in samples)
    acc = torch.tensor([p == s.ground_truth for p, s in zip(preds, samples, strict=True)])
    return SimpleNamespace(acc=acc, scores=acc.float() * 2 - 1, rewards=acc.float() * 2 - 1, preds=preds)


def test_evaluate_hand_computed_metrics_per_source():
    metrics = evaluate(
        _FixedEngine(),
        prompts=[[1], [2], [3]],
        prompt_texts=[r.prompt_text for r in RECORDS],
        records=RECORDS,
        reward_fn=_score,
        sampling=None,
        n=4,
        seed=0,
        decode=lambda ids: TEXTS[ids[0]],
    )
    # arith, problem a (rows 0-3, truth 7): "7" "7" "3" –   acc [1, 1, 0, 0] -> 0.5, pass@4 1, maj "7" right
    #        problem b (rows 4-7, truth 1): "2" "2" "1" "3" acc [0, 0, 1, 0] -> 0.25, pass@4 1, maj "2" wrong
    #   avg@4 = (0.5 + 0.25) / 2 = 0.375; pass@4 = 1; maj@4 = (1 + 0) / 2 = 0.5
    #   score ±1: means 0 and −0.5 -> −0.25; lengths 1-4 and 5-8: means 2.5 and 6.5 -> 4.5
    # lighteval/MATH, problem c (rows 8-11, truth 9): all "8" -> avg 0, pass@4 0, maj 0; lengths 9-12 -> 10.5
    assert metrics == pytest.approx(
        {
            "val-core/arith/acc/mean@4": 0.375,
            "val-aux/arith/score/mean@4": -0.25,
            "val-aux/arith/response_length/mean@4": 4.5,
            "val-aux/arith/acc/pass@4": 1.0,
            "val-aux/arith/acc/pass@1": 0.375,
            "val-aux/arith/acc/maj@4": 0.5,
            "val-aux/arith/num_problems": 2.0,
            # the responses are bare numbers, so the lenient verdict (last number) is the exact match's
            "val-aux/arith/lenient_acc/mean@4": 0.375,
            "val-aux/arith/lenient_acc/pass@4": 1.0,
            "val-core/lighteval/MATH/acc/mean@4": 0.0,
            "val-aux/lighteval/MATH/score/mean@4": -1.0,
            "val-aux/lighteval/MATH/response_length/mean@4": 10.5,
            "val-aux/lighteval/MATH/acc/pass@4": 0.0,
            "val-aux/lighteval/MATH/acc/pass@1": 0.0,
            "val-aux/lighteval/MATH/acc/maj@4": 0.0,
            "val-aux/lighteval/MATH/num_problems": 1.0,
            "val-aux/lighteval/MATH/lenient_acc/mean@4": 0.0,
            "val-aux/lighteval/MATH/lenient_acc/pass@4": 0.0,
        }
    )
    # A data source with "/" in its name (verl's "lighteval/MATH") used to print as "lighteval" without
    # pass@k and maj@k (the source was cut at the first "/").
    assert format_eval(metrics).splitlines() == [
        "arith: avg@4 (2 problems x 4) 37.5% | pass@4 100.0% | maj@4 50.0% | lenient avg@4 37.5%",
        "lighteval/MATH: avg@4 (1 problem x 4) 0.0% | pass@4 0.0% | maj@4 0.0% | lenient avg@4 0.0%",
    ]


STRICT_TEXTS = ["Answer: 7", "so 7", "7 or 3", "Answer: 3", "x"]


def _strict_score(samples):
    """Right only as "Answer: <truth>" (a strict format, as the DAPO scorer's)."""
    acc = torch.tensor([s.response == f"Answer: {s.ground_truth}" for s in samples])
    scores = acc.float() * 2 - 1
    return SimpleNamespace(acc=acc, scores=scores, rewards=scores, preds=tuple(s.response for s in samples))


def test_the_lenient_accuracy_counts_the_last_number_whatever_the_format():
    records = [
        PromptRecord(uid="a", messages=(ChatMessage("user", "3+4"),), ground_truth="7", data_source="arith"),
        PromptRecord(uid="m", messages=(ChatMessage("user", "x?"),), ground_truth="x+1", data_source="symbolic"),
    ]
    metrics = evaluate(
        _FixedEngine(), prompts=[[1], [2]], prompt_texts=["3+4", "x?"], records=records, reward_fn=_strict_score,
        sampling=None, n=2, seed=0, decode=lambda ids: STRICT_TEXTS[min(ids[0], 4)],
    )  # fmt: skip
    # problem a: "Answer: 7" (strict and lenient) and "so 7" (lenient only): strict 1/2, lenient 2/2
    assert metrics["val-core/arith/acc/mean@2"] == 0.5
    assert metrics["val-aux/arith/lenient_acc/mean@2"] == 1.0
    assert metrics["val-aux/arith/lenient_acc/pass@2"] == 1.0
    # a ground truth that is not a number has no lenient verdict: no metric rather than a meaningless 0
    assert not any("symbolic/lenient" in key for key in metrics)


def test_format_eval_with_one_sample_has_no_maj():
    # n = 1: pass@1 is the accuracy and maj@1 is not computed
    metrics = {"val-core/x/acc/mean@1": 0.25, "val-aux/x/acc/pass@1": 0.25, "val-aux/x/num_problems": 4.0}
    assert format_eval(metrics) == "x: avg@1 (4 problems x 1) 25.0% | pass@1 25.0%"


class _PerPromptEngine(_FixedEngine):
    """Row j of prompt [p] is response (p − 1)·n + j of TEXTS, however the prompts are split into calls."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []  # (prompts in the call, seed)

    def generate(self, prompts, n, sampling, seed):
        self.calls.append((len(prompts), seed))
        batch = super().generate(prompts, n, sampling, seed)
        first = torch.tensor([(p[0] - 1) * n + j for p in prompts for j in range(n)])
        rows, width = batch.response_ids.shape
        lengths = first + 1
        return dataclasses.replace(
            batch,
            response_ids=first.unsqueeze(1).expand(rows, width).clone(),
            response_mask=torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1),
            response_lengths=lengths,
        )


def test_evaluate_in_parts_gives_the_same_metrics_with_a_seed_per_part(capsys):
    def run(engine, per_call, progress=False):
        return evaluate(
            engine, prompts=[[1], [2], [3]], prompt_texts=[r.prompt_text for r in RECORDS], records=RECORDS,
            reward_fn=_score, sampling=None, n=4, seed=5, decode=lambda ids: TEXTS[ids[0]], progress=progress,
            prompts_per_call=per_call,
        )  # fmt: skip

    whole, parts = _PerPromptEngine(), _PerPromptEngine()
    assert run(parts, 2, progress=True) == run(whole, 128)
    assert whole.calls == [(3, 5)]  # one call keeps the seed
    assert parts.calls == [(2, wave_seed(5, 0)), (1, wave_seed(5, 1))] and wave_seed(5, 0) == 5
    assert "eval: 100%" in capsys.readouterr().err  # the progress bar, over prompts


def test_the_results_table_has_a_row_per_source_in_percent():
    from dapo.step.evaluation import results_markdown, results_rows

    metrics = {
        "val-core/gsm8k/acc/mean@4": 0.25, "val-aux/gsm8k/acc/pass@4": 0.5, "val-aux/gsm8k/acc/maj@4": 0.3,
        "val-aux/gsm8k/num_problems": 20.0, "val-aux/gsm8k/response_length/mean@4": 101.6,
        "val-core/math500/acc/mean@1": 0.1, "val-aux/math500/acc/pass@1": 0.1, "val-aux/math500/num_problems": 10.0,
        "val-aux/math500/response_length/mean@1": 250.0,
    }  # fmt: skip
    rows = results_rows(metrics)
    assert [(r["source"], r["problems"], r["k"]) for r in rows] == [("gsm8k", 20, 4), ("math500", 10, 1)]
    text = results_markdown(rows, "Evaluation")
    assert "| gsm8k | 20 | 25.0 (k=4) | 50.0 | 30.0 | — | 102 |" in text
    assert "| math500 | 10 | 10.0 (k=1) | 10.0 | — | — | 250 |" in text  # no maj@1
    metrics["val-aux/gsm8k/lenient_acc/mean@4"] = 0.4
    assert "| gsm8k | 20 | 25.0 (k=4) | 50.0 | 30.0 | 40.0 | 102 |" in results_markdown(results_rows(metrics), "E")
