"""The killable pool: results in order, a hard deadline that kills and replaces a hung worker, a crashed
worker reported as an error, and no re-import of the caller's __main__."""

from __future__ import annotations

import time

from dapo.rewards import KillablePool


def test_map_in_order_and_timeout_kills_and_replaces():
    with KillablePool(2) as pool:
        out = pool.map("operator:add", [(i, 1) for i in range(20)], timeout_s=10)
        assert [o.value for o in out] == list(range(1, 21))
        start = time.monotonic()
        out = pool.map("time:sleep", [(60,), (0,)], timeout_s=0.5)
        assert [o.status for o in out] == ["timeout", "ok"]
        assert time.monotonic() - start < 30
        assert pool.num_restarts == 1
        # The replacement worker takes work.
        assert [o.value for o in pool.map("operator:mul", [(3, 4), (5, 6)], timeout_s=30)] == [12, 30]


def test_errors_and_crashes_are_reported_per_task():
    with KillablePool(1) as pool:
        out = pool.map("operator:truediv", [(1, 0), (4, 2)], timeout_s=10)
        assert out[0].status == "error" and out[0].error.startswith("ZeroDivisionError")
        assert out[1].value == 2.0
        out = pool.map("os:_exit", [(3,)], timeout_s=10)
        assert out[0].status == "error" and "worker died" in out[0].error
        assert pool.map("operator:neg", [(5,)], timeout_s=30)[0].value == -5


def test_closed_pool_refuses_work():
    pool = KillablePool(1)
    pool.close()
    pool.close()  # idempotent
    try:
        pool.map("operator:neg", [(1,)], timeout_s=1)
    except RuntimeError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("a closed pool accepted work")
