"""The reward step on Ray workers: the driver's verdicts for a mixed batch, errors that name the sample in the
whole batch, and a worker that dies costing nothing but time."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from dapo.rewards import RewardFunctionError, RewardSample, RewardSettings, build_reward_function

pytestmark = [pytest.mark.slow, pytest.mark.ray]

OPTIONS = dict(overlong_enable=True, max_response_length=20, overlong_buffer_length=5, overlong_penalty_factor=1.0)


def _batch() -> list[RewardSample]:
    """Every scorer: DAPO answers, MATH (boxed; one needs math-verify), GSM8K; right, wrong, missing, overlong."""
    rows = [
        ("Answer: 5", "5", "math_dapo", 10),
        ("Answer: 4", "5", "aime-2024", 18),
        ("no answer at all", "5", "arith", 20),
        ("so \\boxed{\\frac{1}{2}}", "0.5", "math500", 12),
        ("so \\boxed{\\sqrt{4}}", "2", "math", 19),
        ("#### 42", "42", "gsm8k", 8),
        ("#### 41", "42", "gsm8k", 16),
    ] * 3
    return [RewardSample("p", text, length, length >= 20, gt, source, {}) for text, gt, source, length in rows]


@pytest.fixture(scope="module")
def pool(ray_cluster):
    from dapo.rewards.ray_pool import RayRewardFunction

    fn = RayRewardFunction(
        RewardSettings(**OPTIONS), workers=2, cpus_per_worker=0.5, max_restarts=1, startup_timeout_s=60
    )
    yield fn
    fn.close()


def _same(got, expected) -> None:
    for field in ("scores", "rewards", "acc", "overlong_penalty"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    assert got.preds == expected.preds and got.failures == expected.failures
    assert {k: v for k, v in got.metrics.items() if k != "reward/worker_failures"} == expected.metrics


def test_two_reward_workers_give_the_verdicts_of_the_driver(pool):
    with build_reward_function(**OPTIONS) as local:
        expected = local(_batch())
    assert expected.metrics["reward/num_symbolic_checks"] > 0  # the chunks use their own killable pools
    _same(pool(_batch()), expected)
    _same(pool(_batch()[:1]), build_reward_function(**OPTIONS)(_batch()[:1]))  # fewer samples than workers
    assert pool.worker_failures == 0


def test_a_scorer_error_names_the_sample_of_the_whole_batch(ray_cluster, tmp_path, monkeypatch):
    """A custom function given by a relative file path, raising on the 5th of 6 samples (in the second chunk)."""
    from dapo.rewards.ray_pool import RayRewardFunction

    (tmp_path / "strict.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    if solution_str == 'boom':\n        raise ValueError('cannot read this')\n    return 1.0\n"
    )
    monkeypatch.chdir(tmp_path)
    fn = RayRewardFunction(RewardSettings(**{**OPTIONS, "custom": "strict.py:compute_score"}), 2, 0.5, 0, 60)
    try:
        samples = [RewardSample("p", t, 3, False, "1", "anything", {}) for t in ["a", "b", "c", "d", "boom", "f"]]
        with pytest.raises(RewardFunctionError, match=r"ValueError on sample 4 \(data_source='anything'\)"):
            fn(samples)
        assert fn(samples[:4]).scores.tolist() == [1.0] * 4
    finally:
        fn.close()


def test_a_dead_reward_worker_costs_only_time(pool, ray_cluster):
    """Its chunk is scored in the driver, with the same verdicts; Ray restarts it for the next batch."""
    with build_reward_function(**OPTIONS) as local:
        expected = local(_batch())
    os.kill(ray_cluster.get(pool.workers[1].pid.remote()), signal.SIGKILL)
    got = pool(_batch())
    _same(got, expected)
    assert pool.worker_failures == 1 and got.metrics["reward/worker_failures"] == 1.0
    _same(pool(_batch()), expected)
    assert pool.worker_failures == 1  # the restarted worker scored its chunk
