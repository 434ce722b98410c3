"""The trainer on Ray ranks: the local run's metrics, and checkpoints that move between 2 ranks and 1.

A 2-rank update adds the same numbers in another order, so the runs agree to float rounding, not bit for
bit (measured on 3 seeded steps of DAPO, GRPO and PPO, DDP and FSDP2: every metric within 1.3e-5 relative,
the same sampled tokens). Exactness is asserted where it holds: a checkpoint's state loads unchanged on any
rank count, and a run resumed on the ranks that saved it continues exactly.
"""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from e2e_settings import _overrides

from dapo.config import load_config
from dapo.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RAY = {"trainer.backend": "ray", "ray.train_workers": 2, "ray.rollout_workers": 2}
# One thread in the driver, as in every rank and rollout worker, and the same generation waves everywhere:
# then the local engine and the rollout workers compute the same logits. Rounds of 4 waves of 4 prompts,
# scored as they arrive and stopped once the batch of 8 groups is full.
STEPS = {
    "trainer.total_steps": 3, "trainer.save_freq": 1, "trainer.keep_last": 3, "trainer.num_threads": 1,
    "rollout.max_rows_in_flight": 32, "data.gen_batch_size": 16, "algo.dynamic_sampling.stop_when_full": True,
}  # fmt: skip


def _read(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run_to_end(overrides: list[str]) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer, _read(trainer.run_dir)


# Counters of the workers only a Ray run has (and only when it has them).
WORKER_COUNTERS = ("rollout/worker_restarts", "rollout/weight_sync_", "reward/worker_failures")
# The rollout/training mismatch measures float rounding itself, which another rank split changes: compared
# separately (both tiny), not to 1e-4.
MISMATCH = ("training/rollout_probs_diff", "rollout_corr/")


def _without_timings(rows: list[dict]) -> list[dict]:
    """The metrics that do not depend on time or on which workers the run had."""
    skip = ("timing_s/", "perf/", *WORKER_COUNTERS)
    return [{k: v for k, v in r.items() if not k.startswith(skip)} for r in rows]


def _assert_close_metrics(got: list[dict], expected: list[dict], rel: float = 1e-4) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for g, e in zip(_without_timings(got), _without_timings(expected), strict=True):
        assert g.keys() == e.keys()
        for k in sorted(e):
            if k.startswith(MISMATCH):
                assert abs(g[k] - (1.0 if "ratio_m" in k else 0.0)) < 1e-3 and abs(e[k] - g[k]) < 1e-3, k
                continue
            assert g[k] == pytest.approx(e[k], rel=rel, abs=1e-6), (g["step"], k)


FSDP2 = {"trainer.backend": "ray", "ray.train_workers": 2, "ray.strategy": "fsdp2"}


@pytest.fixture(scope="module")
def runs(ray_cluster, base_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The same seeded 3-step DAPO run in one process; on 2 DDP ranks with 2 rollout workers and a reward
    worker; and on 2 FSDP2 ranks (one unit a block, activation checkpointing, sharded checkpoints by default),
    generation in the driver. Each checkpointed every step."""
    out = tmp_path_factory.mktemp("ray-runs")
    dirs = {}
    fsdp2 = {**FSDP2, "actor.activation_checkpointing": True}
    for name, backend in (("local", {}), ("ray", {**RAY, "ray.reward_workers": 1}), ("fsdp2", fsdp2)):
        overrides = _overrides(base_model_dir, out, name, **STEPS, **backend)
        trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
        try:
            trainer.train()
        finally:
            trainer.close()
        dirs[name] = trainer.run_dir
    return dirs


def test_a_seeded_run_on_two_ranks_gives_the_local_metrics(runs):
    """With rounds stopped early on both sides: the same waves are scored, the same prompts given back."""
    local, ray = _read(runs["local"]), _read(runs["ray"])
    _assert_close_metrics(ray, local)
    assert sum(r["train/prompts_not_generated"] for r in local) > 0  # the early stop did happen
    assert [r["reward/worker_failures"] for r in ray] == [0.0] * 3  # scored by the reward worker
    # the weights reached the 2 rollout workers in buckets put by rank 0 (the 1M model: one 2,048 MB bucket)
    assert all(r["rollout/weight_sync_buckets"] == 1.0 and r["rollout/weight_sync_peak_mb"] > 0 for r in ray)


def test_fsdp2_one_unit_a_block_with_activation_checkpointing_gives_the_local_metrics(runs):
    """The large-model path (FSDP2 units per decoder block, each block recomputed in the backward, the chunked
    head) on 2 ranks, generation in the driver: the one-process run's metrics."""
    _assert_close_metrics(_read(runs["fsdp2"]), _read(runs["local"]))


def test_sequence_parallel_ranks_give_the_local_metrics(runs, tmp_path, base_model_dir):
    """Ulysses on 2 FSDP2 ranks (1 data x 2 sequence: each micro-batch's packed tokens split in two), with
    activation checkpointing: the one-process run's metrics over 3 seeded steps."""
    sp = {**FSDP2, "ray.sequence_parallel": 2, "actor.activation_checkpointing": True}
    _, rows = _run_to_end(_overrides(base_model_dir, tmp_path, "sp", **STEPS, **sp))
    _assert_close_metrics(rows, _read(runs["local"]))


def _saved_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The policy weights a checkpoint holds, in either format (sharded ones read in this one process)."""
    from safetensors.torch import load_file

    if (checkpoint / "model.safetensors").exists():
        return load_file(str(checkpoint / "model.safetensors"))
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    shards = str(checkpoint / "policy_shards")
    metadata = FileSystemReader(shards).read_metadata().state_dict_metadata
    state = {
        name: torch.empty(meta.size, dtype=meta.properties.dtype)
        for name, meta in metadata.items()
        if name.startswith("model.")
    }
    dcp.load(state, checkpoint_id=shards, no_dist=True)
    return {name.removeprefix("model."): t for name, t in state.items()}


def _resume_step_2(runs, saved_by: str, backend: dict, tmp_path, base_model_dir) -> list[dict]:
    """Resume `saved_by`'s step-2 checkpoint as a new run on `backend`; check that its workers hold exactly
    the saved weights, finish step 3, and return its metrics."""
    checkpoint = runs[saved_by] / "checkpoints" / "global_step_2"
    resume = {"trainer.resume": str(checkpoint), "trainer.accept_config_changes": True}  # another run name
    overrides = _overrides(base_model_dir, tmp_path, "moved", **STEPS, **backend, **resume)
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    try:
        weights = trainer.policy.state_dict()["model"]
        saved = _saved_weights(checkpoint)
        assert weights.keys() == saved.keys()
        assert all(torch.equal(weights[k], saved[k]) for k in saved)
        assert trainer.counters.step == 2
        trainer.train()
    finally:
        trainer.close()
    return _read(trainer.run_dir)


@pytest.mark.parametrize(
    "saved_by, backend",
    [("ray", {}), ("local", RAY), ("fsdp2", {}), ("fsdp2", FSDP2)],
    ids=["2-ranks-to-1", "1-to-2-ranks", "sharded-2-fsdp2-ranks-to-1", "sharded-2-fsdp2-ranks-to-2"],
)
def test_a_checkpoint_resumes_on_another_rank_count(runs, saved_by, backend, tmp_path, base_model_dir):
    resumed = _resume_step_2(runs, saved_by, backend, tmp_path, base_model_dir)
    _assert_close_metrics(resumed, _read(runs[saved_by])[2:])


def test_fsdp2_ranks_write_their_own_shards(runs):
    """Sharded by default on FSDP2: each rank wrote a file of its own, of about half the state, and no file holds
    the gathered model."""
    step_dir = runs["fsdp2"] / "checkpoints" / "global_step_3"
    assert not (step_dir / "model.safetensors").exists() and not (step_dir / "optimizer.pt").exists()
    sizes = {p.name: p.stat().st_size for p in (step_dir / "policy_shards").glob("*.distcp")}
    assert sorted(name.split("_")[2] for name in sizes) == ["0", "1"], sizes  # __<rank>_<i>.distcp
    rank_0, rank_1 = sizes.values()
    assert 0.8 < rank_0 / rank_1 < 1.25


def test_dapo_export_of_a_two_rank_sharded_checkpoint_has_the_trained_logits(runs, base_model_dir, tmp_path):
    """`dapo export` streams the shards 2 FSDP2 ranks wrote into a Hugging Face directory: it loads with
    transformers and computes the logits of the base model holding the checkpoint's weights."""
    from transformers import AutoModelForCausalLM

    from dapo.cli import main

    checkpoint = runs["fsdp2"] / "checkpoints" / "global_step_3"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    trained = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    trained.load_state_dict(_saved_weights(checkpoint))
    ids = torch.randint(0, trained.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, trained(ids).logits, atol=1e-6, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
        assert not torch.allclose(exported(ids).logits, base(ids).logits)  # it trained


def _kill_at_step(trainer: Trainer, step: int, pid: int) -> None:
    """SIGKILL `pid` as the trainer starts `step` (after the previous step's checkpoint): deterministic, whatever the
    machine's speed (a timer after the checkpoint could fire after a fast run had already finished)."""
    train_step = trainer.train_step

    def killing(s: int):
        if s == step:
            os.kill(pid, signal.SIGKILL)
        return train_step(s)

    trainer.train_step = killing


def test_lost_workers_a_rollout_worker_restarted_then_a_training_rank_stops_the_run_and_resume_completes_it(
    runs, ray_cluster, tmp_path, base_model_dir
):
    """A rollout worker killed before step 1 is restarted and step 1 samples the same tokens; a training rank
    killed in step 3 stops the run with one ClusterError and the step-2 checkpoint intact; the run resumed
    on 2 ranks finishes exactly as the run that lost nothing."""
    from dapo.checkpoint import CheckpointManager
    from dapo.cluster import ClusterError

    overrides = _overrides(base_model_dir, tmp_path, "killed", **STEPS, **RAY, **{"trainer.resume": "auto"})
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    try:
        os.kill(ray_cluster.get(trainer.engine.workers[1].pid.remote()), signal.SIGKILL)
        rank_1 = ray_cluster.get(trainer.policy.group.ranks[1].pid.remote())
        _kill_at_step(trainer, 3, rank_1)
        with pytest.raises(ClusterError, match=r"training rank 1 \(node .*\) died"):
            trainer.train()
    finally:
        trainer.close()
    checkpoints = CheckpointManager(trainer.run_dir / "checkpoints")
    assert checkpoints.latest_step() == 2
    checkpoints.verify(2)  # every file present, sizes and sha256 as written
    _, rows = _run_to_end(overrides)
    assert [r["rollout/worker_restarts"] for r in rows] == [1.0, 1.0, 0.0]  # the resumed step: a new engine
    assert _without_timings(rows) == _without_timings(_read(runs["ray"]))


def test_a_rank_lost_during_a_sharded_save_leaves_the_last_checkpoint_and_resume_continues_exactly(
    runs, ray_cluster, tmp_path, base_model_dir
):
    """FSDP2 rank 1 killed as the step-3 checkpoint's shards are written: one ClusterError, no step-3
    checkpoint, step 2 intact; the run resumed on 2 ranks finishes as the run that lost nothing."""
    from dapo.checkpoint import CheckpointManager
    from dapo.cluster import ClusterError

    fsdp2 = {**FSDP2, "actor.activation_checkpointing": True, "trainer.resume": "auto"}
    overrides = _overrides(base_model_dir, tmp_path, "killed", **STEPS, **fsdp2)
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    save_shards = trainer.policy.save_shards

    def killing(directory: Path) -> None:
        if directory.parent.name.startswith(".tmp-global_step_3"):
            os.kill(ray_cluster.get(trainer.policy.group.ranks[1].pid.remote()), signal.SIGKILL)
        save_shards(directory)

    trainer.policy.save_shards = killing
    try:
        with pytest.raises(ClusterError, match=r"training rank 1 \(node .*\) died"):
            trainer.train()
    finally:
        trainer.close()
    checkpoints = CheckpointManager(trainer.run_dir / "checkpoints")
    assert checkpoints.steps() == [1, 2] and checkpoints.latest_step() == 2
    checkpoints.verify(2)
    assert not list(checkpoints.root.glob(".tmp-*"))  # the half-written save is gone
    _, rows = _run_to_end(overrides)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert _without_timings(rows) == _without_timings(_read(runs["fsdp2"]))
