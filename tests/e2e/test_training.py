"""End to end on the built-in task with a real (tiny) Hugging Face model: determinism, resume, baselines."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dapo.config import load_config
from dapo.step.dynamic_sampling import DynamicSamplingError
from dapo.trainer import ResumeConfigError, Trainer

# The fast lane runs these short seeded runs (a few seconds each on 2 cores); the subprocess kill is slow.


def _run(preset: str, overrides: list[str]) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(load_config(preset, None, overrides), log_to_console=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, rows


def _deterministic(rows: list[dict]) -> list[dict]:
    """Everything but wall-clock measurements."""
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in rows]


def test_same_seed_gives_identical_metrics(base_model_dir, tmp_path, e2e_overrides):
    _, first = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "a", **{"trainer.total_steps": 3}))
    _, second = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "b", **{"trainer.total_steps": 3}))
    assert len(first) == 3
    assert _deterministic(first) == _deterministic(second)
    _, other_seed = _run(
        "cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "c", **{"trainer.total_steps": 3, "trainer.seed": 1})
    )
    assert _deterministic(other_seed) != _deterministic(first)


@pytest.mark.parametrize("preset", ["cpu_dapo", "cpu_ppo"])
def test_activation_checkpointing_gives_the_same_run(base_model_dir, tmp_path, e2e_overrides, preset):
    """Recomputing each block in the backward changes no number of a seeded run (the policy's and the critic's)."""
    settings = {"trainer.total_steps": 3, "data.train_batch_size": 8, "data.gen_batch_size": 8}
    _, plain = _run(preset, e2e_overrides(base_model_dir, tmp_path, "plain", **settings))
    _, recomputed = _run(
        preset, e2e_overrides(base_model_dir, tmp_path, "ac", **settings, **{"actor.activation_checkpointing": True})
    )
    assert len(plain) == 3 and _deterministic(recomputed) == _deterministic(plain)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(base_model_dir, tmp_path, e2e_overrides):
    steps = 4
    settings = {"trainer.total_steps": steps, "trainer.save_freq": 1, "trainer.keep_last": 2}
    _, uninterrupted = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "whole", **settings))

    # The same run in a subprocess, SIGKILLed once it has checkpointed a few steps.
    killed_overrides = e2e_overrides(base_model_dir, tmp_path, "killed", **settings, **{"trainer.resume": "auto"})
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "dapo.cli", "train", "--no-plot", *killed_overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and int(pointer.read_text().strip() or 0) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(pointer.read_text())
    assert killed_at < steps

    _, resumed = _run("cpu_dapo", killed_overrides)
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    assert _deterministic(resumed) == _deterministic(uninterrupted)


def test_resume_with_changed_config_lists_differences(base_model_dir, tmp_path, e2e_overrides):
    settings = {"trainer.total_steps": 1, "trainer.save_freq": 1}
    _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "r", **settings))
    changed = e2e_overrides(base_model_dir, tmp_path, "r", **settings, **{"trainer.resume": "auto", "actor.lr": 0.5})
    with pytest.raises(ResumeConfigError, match=r"actor\.lr: 0\.001 -> 0\.5"):
        Trainer(load_config("cpu_dapo", None, changed), log_to_console=False)


def test_the_cli_reports_a_refused_resume_without_a_traceback(base_model_dir, tmp_path, e2e_overrides, capsys):
    from dapo.cli import main

    settings = {"trainer.total_steps": 1, "trainer.save_freq": 1}
    _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "r", **settings))
    changed = e2e_overrides(base_model_dir, tmp_path, "r", **settings, **{"trainer.resume": "auto", "actor.lr": 0.5})
    assert main(["train", "--no-plot", *changed]) == 1
    err = capsys.readouterr().err
    assert "ResumeConfigError" in err and "actor.lr: 0.001 -> 0.5" in err and "accept_config_changes" in err
    assert "Traceback" not in err


def test_dynamic_sampling_fills_the_batch_with_informative_groups(base_model_dir, tmp_path, e2e_overrides):
    # A reward under which most groups are all-correct: they carry no signal and must be replaced.
    reward = Path(__file__).with_name("easy_reward.py")
    overrides = e2e_overrides(
        base_model_dir,
        tmp_path,
        "ds",
        **{"algo.dynamic_sampling.max_gen_batches": 0, "reward.custom_function": f"{reward}:compute_score"},
    )
    _, rows = _run("cpu_dapo", overrides)
    assert all(r["train/num_groups"] == 8 for r in rows)
    # Over every generated group of the run (rounds of 8 prompts), not per step: a step drawn in two rounds
    # sees only 16 groups, and with ~43 % all-correct (G = 8 at ~90 %), <= 20 % of 16 has a ~3 % chance on
    # any machine. Over the run's >= 40 groups, 20 % and 80 % are > 2.9 standard deviations from 43 / 57 %
    # (identical responses share a verdict, which only makes all-correct groups more common).
    rounds = [r["train/num_gen_batches"] for r in rows]
    assert sum(rounds) >= 5  # 4 steps of 8 informative groups, ~4.6 per round, some carried over
    all_correct = sum(n * r["train/all_correct_group_frac"] for n, r in zip(rounds, rows, strict=True) if n)
    informative = sum(n * r["train/informative_group_frac"] for n, r in zip(rounds, rows, strict=True) if n)
    assert all_correct / sum(rounds) > 0.2 and informative / sum(rounds) < 0.8, rows
    # one round of 8 prompts rarely has 8 informative groups (0.57^8 ~ 1 %): the trainer had to draw again
    assert sum(rounds) > len(rows)


def test_generation_round_cap_error_says_what_to_change(base_model_dir, tmp_path, e2e_overrides):
    overrides = e2e_overrides(
        base_model_dir, tmp_path, "cap", **{"data.gen_batch_size": 1, "algo.dynamic_sampling.max_gen_batches": 2}
    )
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    try:
        with pytest.raises(DynamicSamplingError, match="max_gen_batches=0"):
            trainer.train_step(1)
    finally:
        trainer.close()


def test_ppo_critic_learns(base_model_dir, tmp_path, e2e_overrides):
    """The critic learns a return it can predict: every response scores +1 (minus the overlong penalty).

    With the task's ±1 reward the return of a response is a coin flip the critic cannot predict, so how far
    its loss falls depends on the trajectory (measured 0.28-0.79 of the first step's after 6 steps), which
    differs between machines. Measured with this reward over seeds 0-2 at 1 and 2 threads: the loss falls
    to 0.004-0.013 of the first step's, the gap between mean value and mean return to 0.001-0.04.
    """
    reward = Path(__file__).with_name("easy_reward.py")
    overrides = e2e_overrides(
        base_model_dir,
        tmp_path,
        "ppo",
        **{
            "trainer.total_steps": 6,
            "data.train_batch_size": 32,
            "data.gen_batch_size": 32,
            "actor.mini_batch_size": 16,
            "critic.lr": 3e-3,
            "reward.custom_function": f"{reward}:always_right",
        },
    )
    trainer, rows = _run("cpu_ppo", overrides)
    assert trainer.critic is not None
    loss = [r["critic/vf_loss"] for r in rows]
    gap = [abs(r["critic/values/mean"] - r["critic/returns/mean"]) for r in rows]
    # The value head starts at zero: it explains nothing and misses the mean return by the whole return.
    assert rows[0]["critic/vf_explained_var"] == pytest.approx(0.0, abs=1e-6)
    assert gap[0] > 0.5, gap
    assert min(loss[-3:]) < 0.1 * loss[0], loss
    assert min(gap[-3:]) < 0.25 * gap[0], gap


def test_reward_rises_on_a_small_task(base_model_dir, tmp_path, e2e_overrides):
    """The rule reward with DAPO's soft overlong punishment (Eq. 13) on a budget that makes working out cost:
    L_max = 20, L_cache = 8, so a worked solution (~16 tokens) loses ~0.5 and a bare answer (~10 tokens)
    nothing. The base has both habits; DAPO must find out from the reward that answering directly pays.

    A setting with a strong effect, so that the test holds on any machine (float rounding differs between
    CPUs, and with it the base and the whole trajectory). Measured over base/trainer seeds 0-2 at 1 and 2
    threads (6 runs): score gain (last 5 steps vs first 5) +0.29 to +0.40, mean length 12.5-13.3 -> 10.5-10.8
    tokens, accuracy 0.48-0.61 -> 0.56-0.70. The assertions take about half of the smallest effect.
    """
    overrides = e2e_overrides(
        base_model_dir,
        tmp_path,
        "learn",
        **{
            "trainer.total_steps": 25,
            "data.train_batch_size": 16,
            "data.gen_batch_size": 16,
            "actor.mini_batch_size": 8,
            "actor.lr": 2e-4,
            "rollout.max_response_length": 20,
            "algo.overlong.buffer_length": 8,
            "algo.dynamic_sampling.max_gen_batches": 0,
        },
    )
    _, rows = _run("cpu_dapo", overrides)

    def first_and_last(key: str) -> tuple[float, float]:
        values = [r[key] for r in rows]
        return sum(values[:5]) / 5, sum(values[-5:]) / 5

    score, length, accuracy = (
        first_and_last(k) for k in ("critic/score/mean", "response_length/mean", "train/generated_acc/mean")
    )
    assert score[1] > score[0] + 0.15, score
    assert length[1] < length[0] - 1.0, length
    assert accuracy[1] > accuracy[0] - 0.1, accuracy  # shorter, not worse


def test_grpo_uses_the_reference_and_the_kl_moves(base_model_dir, tmp_path, e2e_overrides):
    trainer, rows = _run("cpu_grpo", e2e_overrides(base_model_dir, tmp_path, "grpo", **{"trainer.total_steps": 4}))
    assert trainer.policy.reference is not None
    kl = [r["actor/kl_loss"] for r in rows]
    assert all(k >= 0 for k in kl)
    assert kl[-1] > kl[0] > 0 or kl[-1] > 10 * max(kl[0], 1e-9)
    # the reference stays frozen at the initial policy
    assert not any(p.requires_grad for p in trainer.policy.reference.parameters())


def test_non_finite_reward_is_reported_and_never_reaches_the_weights(base_model_dir, tmp_path, e2e_overrides):
    trainer = Trainer(
        load_config("cpu_dapo", None, e2e_overrides(base_model_dir, tmp_path, "nan")), log_to_console=False
    )
    before = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    original = trainer.rounds.reward_fn  # what scores the generation rounds

    class Poisoned:
        def __call__(self, samples):
            batch = original(samples)
            batch.rewards[3] = float("nan")
            return batch

        def close(self):
            original.close()

    trainer.rounds.reward_fn = Poisoned()
    try:
        with pytest.raises(FloatingPointError, match=r"step 1.*train:"):
            trainer.train_step(1)
    finally:
        trainer.close()
    for k, v in trainer.policy.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_export_is_a_hugging_face_model(base_model_dir, tmp_path, e2e_overrides):
    from transformers import AutoModelForCausalLM

    trainer, _ = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "export", **{"trainer.total_steps": 1}))
    path = trainer.export(tmp_path / "exported")
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    for name, value in trainer.policy.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value)


def test_old_logprobs_taken_from_the_rollout_equal_a_recompute(base_model_dir, tmp_path, e2e_overrides):
    """With 2 mini-batches π_old is needed; the built-in engine's log-probs (same module, float32, T = 1) are
    the training forward's up to float rounding, so the recomputing pass is skipped."""
    from dapo.metrics import Timer
    from dapo.step.advantages import behaviour_logprobs
    from dapo.step.groups import build_train_batch

    config = load_config("cpu_dapo", None, e2e_overrides(base_model_dir, tmp_path, "lp"))
    trainer = Trainer(config, log_to_console=False)
    try:
        assert trainer.parts.logprobs.reuse_rollout_logprobs and not trainer.parts.logprobs.on_policy
        groups, _ = trainer.sampling.collect(1, trainer.rounds.draw(1, Timer()))
        batch = build_train_batch(groups, trainer.tokenizer.pad_token_id, True, with_rollout_logprobs=True)
        with_old, reused, metrics = behaviour_logprobs(trainer.policy, batch, trainer.parts.logprobs, Timer())
        recomputed = trainer.policy.compute_logprobs(batch)
    finally:
        trainer.close()
    assert metrics["train/old_logprobs_from_rollout"] == 1.0 and with_old.old_logprobs is reused
    assert reused is not None and reused.shape == recomputed.shape
    torch.testing.assert_close(reused, recomputed, atol=1e-4, rtol=0)
    generated = batch.generated_mask  # truncated responses included, although overlong filtering masks their loss
    assert (reused[generated == 0] == 0).all() and (reused[generated == 1] < 0).any()


@pytest.mark.parametrize(
    ("extra", "reused"),
    [
        ({}, 1.0),
        ({"actor.reuse_rollout_logprobs": False}, 0.0),
        ({"rollout.temperature": 0.9}, 0.0),  # the engine reports untempered log-probs
        ({"actor.precision": "bf16-mixed"}, 0.0),  # the float32 engine's log-probs are not the bf16 forward's
    ],
)
def test_when_the_rollout_logprobs_are_reused(base_model_dir, tmp_path, e2e_overrides, extra, reused):
    _, rows = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "when", **{"trainer.total_steps": 1}, **extra))
    assert rows[0]["train/old_logprobs_from_rollout"] == reused


def test_groups_carried_to_the_next_step_drop_their_rollout_logprobs(base_model_dir, tmp_path, e2e_overrides):
    overrides = e2e_overrides(
        base_model_dir,
        tmp_path,
        "carry",
        **{"trainer.total_steps": 1, "data.gen_batch_size": 32, "algo.dynamic_sampling.keep_surplus": True},
    )
    first, rows = _run("cpu_dapo", overrides)
    assert rows[0]["train/old_logprobs_from_rollout"] == 1.0
    assert first.sampling.buffer and all(g.rollout_logprobs is None for g in first.sampling.buffer)
    # A step that starts from the buffer (sampled by other weights) recomputes π_old.
    overrides[overrides.index("trainer.run_name=carry")] = "trainer.run_name=carry2"
    second = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    try:
        second.sampling.buffer = first.sampling.buffer
        metrics = second.train_step(1)
    finally:
        second.close()
    assert metrics["train/groups_from_buffer"] > 0 and metrics["train/old_logprobs_from_rollout"] == 0.0


def test_lora_trains_the_adapter_checkpoints_it_and_resumes_exactly(base_model_dir, tmp_path, e2e_overrides):
    """DAPO with LoRA adapters (PEFT): the run stopped after step 2 and resumed from its adapter-only checkpoint
    ends exactly as the run that went straight through; the exported adapter loads with PEFT."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    lora = {"model.lora.rank": 8, "model.lora.export": "adapter", "trainer.save_freq": 1, "trainer.keep_last": 3}
    whole_trainer, whole = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "whole", **lora))
    parts = e2e_overrides(base_model_dir, tmp_path, "parts", **lora, **{"trainer.resume": "auto"})
    _run("cpu_dapo", [*parts, "trainer.total_steps=2"])
    saved = load_file(str(tmp_path / "parts" / "checkpoints" / "global_step_2" / "model.safetensors"))
    assert saved and all(".lora_" in k for k in saved)  # the adapter only
    _, resumed = _run("cpu_dapo", [*parts, "trainer.accept_config_changes=true"])
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert _deterministic(resumed) == _deterministic(whole)
    assert all(r["train/old_logprobs_from_rollout"] == 0.0 for r in whole if "train/old_logprobs_from_rollout" in r)
    policy = whole_trainer.export(tmp_path / "exported")
    assert (policy / "adapter_config.json").exists()


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full-model", "lora"])
def test_a_sharded_checkpoint_resumes_exactly_in_one_process(base_model_dir, tmp_path, e2e_overrides, lora):
    """trainer.checkpoint_format=sharded in one process (torch.distributed.checkpoint with no process group): the
    run stopped after step 2 and resumed from its shards ends exactly as the run that went straight through; the
    shards hold the weights and the optimiser state (the adapter's only, for LoRA) and no gathered model file."""
    from torch.distributed.checkpoint import FileSystemReader

    sharded = {"trainer.checkpoint_format": "sharded", "trainer.save_freq": 1, "trainer.keep_last": 3}
    if lora:
        sharded.update({"model.lora.rank": 8, "model.lora.export": "adapter"})
    whole_trainer, whole = _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "whole", **sharded))
    parts = e2e_overrides(base_model_dir, tmp_path, "parts", **sharded, **{"trainer.resume": "auto"})
    _run("cpu_dapo", [*parts, "trainer.total_steps=2"])
    step_dir = tmp_path / "parts" / "checkpoints" / "global_step_2"
    assert not (step_dir / "model.safetensors").exists() and not (step_dir / "optimizer.pt").exists()
    names = FileSystemReader(str(step_dir / "policy_shards")).read_metadata().state_dict_metadata
    weights = [n for n in names if n.startswith("model.")]
    assert weights and all((".lora_" in n) == lora for n in weights)
    assert any(n.startswith("optimizer.state.") and n.endswith("exp_avg_sq") for n in names)
    _, resumed = _run("cpu_dapo", [*parts, "trainer.accept_config_changes=true"])
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert _deterministic(resumed) == _deterministic(whole)
    _assert_export_has_the_trained_logits(whole_trainer, tmp_path / "whole" / "checkpoints" / "global_step_4", tmp_path)


def _assert_export_has_the_trained_logits(trainer, checkpoint, tmp_path) -> None:
    """`dapo export` of the run's last checkpoint loads with transformers and gives the trained policy's logits."""
    from transformers import AutoModelForCausalLM

    from dapo.export import export_checkpoint
    from dapo.models.lora import merged_state_dict

    result = export_checkpoint(checkpoint, tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(result.out).eval()
    trained = trainer.policy.model
    ids = torch.randint(0, exported.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if hasattr(trained, "peft_config"):  # the merged LoRA policy
            exported_weights = exported.state_dict()
            assert all(torch.allclose(exported_weights[k], v, atol=1e-6) for k, v in merged_state_dict(trained).items()
                       if k in exported_weights)  # fmt: skip
        torch.testing.assert_close(exported(ids).logits, trained(ids).logits, atol=1e-5, rtol=0)


def test_a_corrupted_shard_is_named_and_the_previous_checkpoint_loads(base_model_dir, tmp_path, e2e_overrides):
    from dapo.checkpoint import CheckpointError, CheckpointManager, ShardedState

    settings = {"trainer.checkpoint_format": "sharded", "trainer.save_freq": 1, "trainer.keep_last": 2}
    _run("cpu_dapo", e2e_overrides(base_model_dir, tmp_path, "run", **settings, **{"trainer.total_steps": 2}))
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    shard = next((manager.step_dir(2) / "policy_shards").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=shard.name):
        manager.load(2)
    with pytest.warns(UserWarning, match="instead of step 2"):
        step, state = manager.load(2, fallback=True)
    assert step == 1 and isinstance(state["policy_shards"], ShardedState)
