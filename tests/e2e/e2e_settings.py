"""Settings of the quick seeded runs the end-to-end tests make (a module of its own, so that test modules and
scripts import it by a name no other test directory uses)."""

from pathlib import Path

E2E_LEVEL = 1


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
