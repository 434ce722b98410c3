"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
