"""Hostile responses return within stated bounds (docs/rewards.md):

* DAPO and GSM8K scorers, in-process: < 1 s per response (they read a bounded tail only);
* the boxed/symbolic path: < symbolic_timeout_s + 1 s (the pool's hard deadline) + worker restart,
  and the verdict is a failure, never an exception or a hang.
The asserted limits are generous bounds, not benchmarks.
"""

from __future__ import annotations

import time

import pytest

from dapo.rewards import RewardSample, check_math_answer, score_dapo, score_gsm8k

HOSTILE = {
    "exponent_tower": "Answer: 9^{9^{9^{9^{9^{9}}}}}\n\\boxed{9^{9^{9^{9^{9^{9}}}}}}",
    "million_digits": "Answer: " + "7" * 1_000_000 + "\n\\boxed{" + "7" * 1_000_000 + "}",
    "deep_braces": "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "megabyte": ("blah " * 200_000) + "\nAnswer: 5",
    "control_chars": "Answer: 5\x00\x07\x1b[31m\r\n\x7f",
    "unterminated_box": "So \\boxed{\\frac{1}{2" + " x" * 10_000,
    "invalid_utf8": "Answer: 5 \udcff\udcfe",
    "many_answer_lines": "Answer: 1\n" * 200_000,
    "regex_bait": "Answer:" + " " * 100_000 + "\t" * 1000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_in_process_scorers_are_bounded(name):
    text = HOSTILE[name]
    start = time.perf_counter()
    for mode in ("default", "verl"):
        r = score_dapo(text, "5", mode=mode)
        assert isinstance(r.acc, bool)
        assert r.pred is None or len(r.pred) <= 201
    score_gsm8k(text, "5")
    check_math_answer(text, "5")
    assert time.perf_counter() - start < 1.0


def test_control_chars_and_invalid_utf8_still_score():
    assert score_dapo(HOSTILE["control_chars"], "5").acc
    # Invalid UTF-8 (as bytes, or as the lone surrogates of errors="surrogateescape") before the answer line
    # is harmless; inside the answer it becomes U+FFFD and the answer is wrong, not an exception.
    assert score_dapo("\udcff\udcfe\nAnswer: 5", "5").acc
    assert score_dapo(b"\xff\xfe\nAnswer: 5", "5").acc
    r = score_dapo(b"Answer: 5\xff\xfe", "5")
    assert r.failure == "wrong" and "\ufffd" in r.pred


def test_symbolic_path_is_bounded(reward_fn):
    samples = [RewardSample("p", text, 10, False, "3", "math500", {}) for text in HOSTILE.values()]
    start = time.perf_counter()
    batch = reward_fn(samples)
    elapsed = time.perf_counter() - start
    assert not bool(batch.acc.any())
    # Two workers; each hostile item is either decided in-process or cut at the 3 s hard deadline.
    assert elapsed < len(samples) * 3.0 / 2 + 10.0
