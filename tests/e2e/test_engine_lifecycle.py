"""The colocated engine's lifecycle (rollout.sleep_level): asleep while the ranks train, woken around each push in
the order that avoids the out-of-memory verl's users hit. On a CPU sleep and wake free nothing, so the order is
tested with an engine that records its calls."""

import pytest

from dapo.config import ConfigError, load_config
from dapo.rollout.lifecycle import EngineLifecycle


class Recording:
    """An engine (or policy) that records the calls that matter to the lifecycle and passes everything on."""

    def __init__(self, inner, calls: list):
        self._inner, self.calls = inner, calls

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if name not in ("generate", "generate_waves", "update_weights", "sleep", "wake_up"):
            return attribute

        def recorded(*args, **kwargs):
            self.calls.append(name if name not in ("sleep", "wake_up") else f"{name}{args}")
            return attribute(*args, **kwargs)

        return recorded


class _Engine:
    def sleep(self, level):
        pass

    def wake_up(self, tags):
        pass

    def update_weights(self, weights):
        pass


class _Policy:
    def __init__(self, calls):
        self.calls = calls

    def push_weights(self, engine):
        engine.update_weights({})


def test_the_weights_wake_before_the_push_and_the_kv_cache_after_the_trainer_frees_its_memory():
    calls: list = []
    engine = Recording(_Engine(), calls)
    lifecycle = EngineLifecycle(engine, 1, lambda: calls.append("release_cached_memory"))
    lifecycle.after_generation()
    lifecycle.push(_Policy(calls))
    assert calls == ["sleep(1,)", "wake_up(('weights',),)", "update_weights", "release_cached_memory",
                     "wake_up(('kv_cache',),)"]  # fmt: skip
    calls.clear()
    never = EngineLifecycle(engine, 0, lambda: calls.append("release_cached_memory"))
    never.after_generation()
    never.push(_Policy(calls))
    assert calls == ["update_weights"]  # level 0: a push is only a push


def test_a_training_step_sleeps_after_generation_and_wakes_in_order(base_model_dir, tmp_path, e2e_overrides):
    """Two seeded DAPO steps with the lifecycle at level 2 around the run's own engine: every step generates,
    sleeps through the update, then wakes the weights, takes the push, frees the trainer's cache, wakes the KV
    cache; and the metrics are those of the run without it (sleep and wake change nothing here)."""
    import json

    from dapo.trainer import Trainer

    def run(name: str, with_lifecycle: bool) -> tuple[list, list]:
        overrides = e2e_overrides(base_model_dir, tmp_path, name, **{"trainer.total_steps": 2})
        trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
        calls: list = []
        if with_lifecycle:
            engine = Recording(trainer.engine, calls)
            trainer.rounds.engine = engine
            trainer.lifecycle = EngineLifecycle(engine, 2, lambda: calls.append("release_cached_memory"))
        try:
            trainer.train()
        finally:
            trainer.close()
        rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        return calls, [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in rows]

    calls, rows = run("asleep", True)
    _, plain = run("awake", False)
    assert rows == plain
    steps = "".join("G" if c in ("generate", "generate_waves") else f"[{c}]" for c in calls).split("G[sleep(2,)]")
    assert len(steps) == 3 and steps[0].strip("G") == ""  # two steps, each: generation rounds, then sleep
    woken = "[wake_up(('weights',),)][update_weights][release_cached_memory][wake_up(('kv_cache',),)]"
    for after in steps[1:]:  # up to the next step's generation rounds
        assert after.rstrip("G") == woken


def test_sleep_needs_an_engine_that_can_sleep():
    with pytest.raises(ConfigError, match=r"rollout\.sleep_level = 1: > 0 needs rollout\.engine=vllm"):
        load_config("cpu_dapo", None, ["rollout.sleep_level=1"])
    with pytest.raises(ConfigError, match=r"rollout\.sleep_level"):
        load_config("cpu_dapo", None, ["rollout.engine=vllm", "rollout.sleep_level=3"])
