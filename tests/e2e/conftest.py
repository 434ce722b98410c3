"""A small warm-started base model shared by the end-to-end tests (built once per session, ~30 s)."""

from pathlib import Path

import pytest
from e2e_settings import E2E_LEVEL, _overrides

from dapo.sft import SftSettings, build_base_model


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The CPU default's recipe at level 1: half the demonstrations are worked solutions (~16 tokens), half
    bare answers (~10 tokens), so the base has two habits to choose between, and solves ~50-60 % of the
    problems (measured over 3 seeds and 1-2 threads)."""
    out = tmp_path_factory.mktemp("base") / "tiny-1m-arith-level1"
    return build_base_model(
        "1m", E2E_LEVEL, out, SftSettings(steps=300, batch_size=32, lr=3e-3, shortcut_rate=0.5), say=lambda _: None
    )


@pytest.fixture
def e2e_overrides():
    return _overrides
