"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Set by the vllm lane (scripts/test.sh), whose environment has everything its tests need: there a skip is a failure.
NO_SKIPS = os.environ.get("DAPO_NO_SKIPS") == "1"


def _failed_skip(report) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in a lane where nothing may be skipped (DAPO_NO_SKIPS=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        _failed_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    # A module skipped whole (pytest.importorskip at its top) that holds tests of the lane: its tests are never
    # collected, so their markers cannot be read; its source says whether it has any.
    if NO_SKIPS and report.skipped and _holds_vllm_tests(collector):
        _failed_skip(report)


def _holds_vllm_tests(collector) -> bool:
    path = getattr(collector, "path", None)
    return path is not None and path.suffix == ".py" and "mark.vllm" in path.read_text()


@pytest.fixture(scope="session")
def data_file():
    """data_file(name) -> path of a shared data set; skips the test when the file is absent."""

    def find(name: str) -> Path:
        path = DATA / name
        if not path.is_file():
            pytest.skip(f"shared data file {path} not present")
        return path

    return find


@pytest.fixture(scope="session")
def ray_cluster():
    """One local, loopback-only Ray cluster for every test that asks for it (~8 s to start here); the tests
    that use it run serially, as Ray's own processes share the two cores."""
    ray = pytest.importorskip("ray")
    from dapo.cluster import connect

    started = connect("", 4)  # 4 logical CPUs on 2 cores: two 1-CPU ranks and room for a second group
    yield ray
    if started:
        ray.shutdown()
