from __future__ import annotations

from pathlib import Path

import pytest

from dapo.rewards import build_reward_function

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_file():
    """data_file(name) -> path of a shared data set; skips the test when the file is absent."""

    def find(name: str) -> Path:
        path = DATA / name
        if not path.is_file():
            pytest.skip(f"shared data file {path} not present")
        return path

    return find


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
