"""A small warm-started base model shared by the end-to-end tests (built once per session, ~30 s)."""

from pathlib import Path

import pytest

from dapo.sft import SftSettings, build_base_model

E2E_LEVEL = 1


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The CPU default's recipe at level 1: half the demonstrations are worked solutions (~16 tokens), half
    bare answers (~10 tokens), so the base has two habits to choose between, and solves ~50-60 % of the
    problems (measured over 3 seeds and 1-2 threads)."""
    out = tmp_path_factory.mktemp("base") / "tiny-1m-arith-level1"
    return build_base_model(
        "1m", E2E_LEVEL, out, SftSettings(steps=300, batch_size=32, lr=3e-3, shortcut_rate=0.5), say=lambda _: None
    )


def _overrides(base: Path, out: Path, run_name: str, **extra) -> list[str]:
    """Settings of a quick seeded run on the built-in task (a few seconds per step on 2 cores)."""
    values = {
        "model.path": str(base),
        "data.task_level": E2E_LEVEL,
        "data.train_batch_size": 8,
        "data.gen_batch_size": 8,
        "data.val_size": 24,
        "rollout.group_size": 8,
        "rollout.max_response_length": 24,
        "rollout.val_n": 2,
        "algo.overlong.buffer_length": 8,
        "actor.mini_batch_size": 4,
        "actor.lr": 1e-3,
        "actor.lr_warmup_steps": 0,
        "trainer.output_dir": str(out),
        "trainer.run_name": run_name,
        "trainer.total_steps": 4,
        "trainer.test_freq": 0,
        "trainer.val_before_train": False,
        "trainer.save_freq": 0,
        "trainer.tensorboard": False,
        "trainer.progress": False,
        "trainer.resume": "disable",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def e2e_overrides():
    return _overrides
