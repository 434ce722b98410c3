"""The reward step: routing, overlong shaping (acc never shaped), user functions, errors, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from dapo.rewards import RewardFunctionError, RewardSample, build_reward_function, route, score_gsm8k


def _s(response, gt="5", source="math_dapo", length=10, truncated=False, extra=None):
    return RewardSample("prompt", response, length, truncated, gt, source, extra or {})


def _fn(**kw):
    base = dict(overlong_enable=True, max_response_length=20, overlong_buffer_length=5, overlong_penalty_factor=1.0)
    return build_reward_function(**{**base, **kw})


@pytest.mark.parametrize(
    ("source", "scorer"),
    [("math_dapo", "dapo_answer"), ("DAPO-17k", "dapo_answer"), ("aime-2024", "dapo_answer"),
     ("AIME2025", "dapo_answer"), ("amc23", "dapo_answer"), ("arith", "dapo_answer"), ("math", "math_symbolic"),
     ("math500", "math_symbolic"), ("HuggingFaceH4/MATH-500", "math_symbolic"), ("gsm8k", "gsm8k"),
     ("openai/gsm8k", "gsm8k")],
)  # fmt: skip
def test_routing(source, scorer):
    assert route(source) == scorer


def test_unknown_data_source_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"'mmlu'.*known data sources: math_dapo"):
        _fn()([_s("Answer: 5", source="mmlu")])


def test_overlong_penalty_is_added_to_reward_but_never_to_acc():
    # L_max = 20, L_cache = 5: |y| = 15 -> 0, 18 -> -0.6, 20 -> -1 (DAPO Eq. 13).
    batch = _fn()([_s("Answer: 5", length=15), _s("Answer: 5", length=18), _s("Answer: 4", length=20, truncated=True)])
    torch.testing.assert_close(batch.scores, torch.tensor([1.0, 1.0, -1.0]))
    torch.testing.assert_close(batch.overlong_penalty, torch.tensor([0.0, -0.6, -1.0]))
    torch.testing.assert_close(batch.rewards, torch.tensor([1.0, 0.4, -2.0]))
    assert batch.acc.tolist() == [True, True, False]
    assert batch.acc.dtype == torch.bool and batch.rewards.dtype == torch.float32
    assert batch.metrics["reward/overlong_frac"] == pytest.approx(2 / 3)
    assert batch.metrics["reward/truncated_frac"] == pytest.approx(1 / 3)


def test_overlong_disabled_gives_zero_penalty():
    batch = _fn(overlong_enable=False)([_s("Answer: 5", length=20)])
    assert batch.overlong_penalty.tolist() == [0.0] and batch.rewards.tolist() == [1.0]


def test_metrics_count_failures():
    batch = _fn()([_s("no answer"), _s("Answer: 4"), _s("Answer: 5")])
    assert batch.failures == ("no_answer", "wrong", None)
    assert batch.metrics["reward/no_answer_frac"] == pytest.approx(1 / 3)
    assert batch.metrics["reward/acc_mean"] == pytest.approx(1 / 3)
    assert batch.metrics["reward/num_errors"] == 0.0


def test_scorer_mode_verl_reaches_the_scorer():
    samples = [_s("Answer: 5.")]
    assert _fn(scorer_mode="verl")(samples).acc.tolist() == [False]
    assert _fn()(samples).acc.tolist() == [True]


# --- user functions -----------------------------------------------------------------------------------
def verl_style(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 if solution_str.strip().endswith(ground_truth) else 0.0


def verl_style_dict(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": 0.5, "acc": extra_info["ok"], "pred": solution_str[-3:]}


def trl_style(prompts, completions, ground_truth, **kwargs):
    assert set(kwargs) == {"data_source", "extra_info", "response_length", "truncated"}
    return [None if c == "skip" else float(len(c)) for c in completions]


def raising(data_source, solution_str, ground_truth, extra_info=None):
    if solution_str == "b":
        raise KeyError("boom")
    return 1.0


def test_verl_style_float_gets_a_bool_acc():
    batch = _fn(custom=verl_style, overlong_enable=False)([_s("x 5"), _s("x 4")])
    assert batch.scores.tolist() == [1.0, 0.0]
    assert batch.acc.tolist() == [True, False]


def test_verl_style_dict_keeps_acc_and_pred():
    batch = _fn(custom=verl_style_dict, overlong_enable=False)([_s("abcdef", extra={"ok": True})])
    assert batch.acc.tolist() == [True] and batch.scores.tolist() == [0.5] and batch.preds == ("def",)


def test_trl_style_batched_and_none_is_a_counted_failure():
    batch = _fn(custom=trl_style, overlong_enable=False)([_s("ab"), _s("skip")])
    assert batch.scores.tolist() == [2.0, -1.0]
    assert batch.failures == (None, "no_answer")
    assert batch.metrics["reward/no_answer_frac"] == 0.5


def test_custom_by_reference(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1\n")
    batch = _fn(custom=f"{path}:compute_score")([_s("x")])
    assert batch.scores.tolist() == [1.0]
    with pytest.raises(AttributeError, match="no callable"):
        _fn(custom="math:no_such_function")
    with pytest.raises(ValueError, match="module:function"):
        _fn(custom="no_colon")
    with pytest.raises(TypeError, match="expected either"):
        _fn(custom=lambda a, b: 0)


def test_raising_user_function_names_the_sample_by_default():
    fn = _fn(custom=raising)
    with pytest.raises(RewardFunctionError, match=r"sample 1 \(data_source='gsm8k'\)"):
        fn([_s("a"), _s("b", source="gsm8k")])


def test_raising_user_function_can_score_as_failure():
    batch = _fn(custom=raising, on_error="score_as_failure", overlong_enable=False)([_s("a"), _s("b"), _s("b")])
    assert batch.failures == (None, "error", "error")
    assert batch.metrics["reward/num_errors"] == 2.0
    assert batch.scores.tolist() == [1.0, -1.0, -1.0]


@pytest.mark.parametrize("bad", [float("nan"), "1.0", {"acc": True}, [1.0]])
def test_bad_user_values_are_errors(bad):
    fn = _fn(custom=lambda data_source, solution_str, ground_truth, extra_info=None: bad)
    with pytest.raises(RewardFunctionError):
        fn([_s("a")])


def test_parallel_dapo_scoring_matches_serial():
    samples = [_s(f"Work\nAnswer: {k % 7}", gt=str(k % 5)) for k in range(64)]
    serial = _fn()(samples)
    with _fn(num_workers=2, parallel_min_batch=8) as parallel_fn:
        parallel = parallel_fn(samples)
    assert parallel.acc.tolist() == serial.acc.tolist() and parallel.preds == serial.preds


# --- GSM8K --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "gt", "acc"),
    [
        ("9 * 2 = 18\n#### 18", "#### 18", True),
        ("#### $1,000.", "1000", True),
        ("Answer: 3 + 15 = 18", "18", True),
        ("\\boxed{18}", "18", True),
        ("\\boxed{18}. Wait, that is wrong: 19.", "18", False),
        ("Answer: 18.00 dollars", "18", True),
        ("#### -4", "-4", True),
        ("#### 0.5", "1/2", True),
        ("She makes 18 dollars.", "18", False),
        ("#### 19", "18", False),
        ("#### 18\n#### 19", "18", False),
    ],
)
def test_gsm8k_table(response, gt, acc):
    assert score_gsm8k(response, gt).acc is acc


def test_no_nan_metrics_for_an_empty_batch():
    batch = _fn()([])
    assert batch.scores.shape == (0,)
    assert math.isnan(batch.metrics["reward/acc_mean"])
