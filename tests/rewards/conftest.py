from __future__ import annotations

import pytest

from dapo.rewards import build_reward_function


@pytest.fixture(scope="module")
def reward_fn():
    """One reward function (and so one 2-worker symbolic pool) per test module."""
    fn = build_reward_function(
        overlong_enable=False,
        max_response_length=100,
        overlong_buffer_length=10,
        overlong_penalty_factor=1.0,
        num_workers=2,
        symbolic_timeout_s=2.0,
    )
    yield fn
    fn.close()
