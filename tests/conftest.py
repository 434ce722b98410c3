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
