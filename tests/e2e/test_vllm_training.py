"""The trainer with vLLM rollout workers (rollout.engine=vllm ray.rollout_workers=1) on 2 training ranks: a seeded
3-step DAPO run with waves stopped when the batch is full, and the same run with its vLLM worker killed."""

import os
import signal

import pytest
from e2e_settings import _overrides
from test_ray_training import STEPS, _read, _run_to_end, _without_timings

from dapo.config import load_config
from dapo.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]
pytest.importorskip("vllm")

VLLM = {
    "trainer.backend": "ray", "ray.train_workers": 2, "ray.rollout_workers": 1, "rollout.engine": "vllm",
    "rollout.dtype": "float32", "rollout.kv_cache_gb": 0.06,
}  # fmt: skip


@pytest.fixture(scope="module")
def whole_run(ray_cluster, base_model_dir, tmp_path_factory):
    _, rows = _run_to_end(_overrides(base_model_dir, tmp_path_factory.mktemp("vllm"), "whole", **STEPS, **VLLM))
    return rows


def test_a_seeded_run_on_a_vllm_rollout_worker(whole_run):
    """3 steps with stop_when_full waves; the float32 engine's log-probs are the trainer's (the mismatch metrics
    measure float rounding only) and no worker was lost."""
    assert [r["step"] for r in whole_run] == [1, 2, 3]
    assert sum(r["train/prompts_not_generated"] for r in whole_run) > 0  # the early stop did happen
    for row in whole_run:
        assert row["rollout/worker_restarts"] == 0.0
        assert row["training/rollout_probs_diff_max"] < 1e-3
        assert abs(row["rollout_corr/kl"]) < 1e-4


def test_a_killed_vllm_worker_is_restarted_with_the_weights_and_the_run_is_unchanged(
    whole_run, ray_cluster, base_model_dir, tmp_path
):
    """The vLLM worker SIGKILLed as step 2 starts: Ray restarts it, it is given the current weights, its waves are
    generated again with their seeds, and the run's metrics are the uninterrupted run's."""
    trainer = Trainer(load_config("cpu_dapo", None, _overrides(base_model_dir, tmp_path, "killed", **STEPS, **VLLM)),
                      log_to_console=False)  # fmt: skip
    train_step = trainer.train_step

    def killing(step: int):
        if step == 2:
            os.kill(ray_cluster.get(trainer.engine.workers[0].pid.remote()), signal.SIGKILL)
        return train_step(step)

    trainer.train_step = killing
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = _read(trainer.run_dir)
    assert [r["rollout/worker_restarts"] for r in rows] == [0.0, 1.0, 1.0]
    assert _without_timings(rows) == _without_timings(whole_run)
