"""Generation on Ray rollout workers: the tokens of one worker with two, the waves in order, and a worker
that dies mid-request restarted and its waves generated again, with the same tokens."""

import copy
import os
import signal
import threading
import time

import pytest
import torch

from dapo.rollout import SamplingParams, build_engine

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SAMPLING = SamplingParams(max_new_tokens=12, temperature=1.0)


def _engine(
    model, tok, workers: int, rows_per_wave: int | None = 8, max_restarts: int = 2, kind: str = "builtin",
    bucket_bytes: int = 256 << 10,
):  # fmt: skip
    """256 KB buckets: a push of the 1M model (~4 MB) travels in about 16."""
    from dapo.rollout.ray_engine import RayRolloutEngine, RolloutSettings

    vllm = (("max_model_len", 128), ("kv_cache_memory_bytes", 64 << 20)) if kind == "vllm" else ()
    settings = RolloutSettings(
        workers, 1.0, 0.0, max_restarts, rows_per_wave, kind, "float32", vllm, bucket_bytes=bucket_bytes
    )
    return RayRolloutEngine(settings, copy.deepcopy(model), tok)


# The worker-failure tests run on both engines; vLLM's in the vllm lane (its own environment).
ENGINES = pytest.mark.parametrize("kind", ["builtin", pytest.param("vllm", marks=pytest.mark.vllm)])


def _vllm_if(kind: str) -> None:
    if kind == "vllm":
        pytest.importorskip("vllm")


def _request(tok):
    texts = [f"{a}+{b}=" for a in range(6) for b in (3, 17)]  # 12 prompts × n=4: 6 waves of 8 rows
    return [tok(t)["input_ids"] for t in texts]


def _same(a, b) -> bool:
    return (
        all(
            torch.equal(getattr(a, f), getattr(b, f))
            for f in ("prompt_ids", "response_ids", "response_mask", "response_lengths", "group_index")
        )
        and a.finish_reasons == b.finish_reasons
    )


@pytest.fixture(scope="module")
def two_workers(ray_cluster, sharp_model, tok):
    engine = _engine(sharp_model, tok, 2)
    yield engine
    engine.close()


def test_two_workers_give_the_tokens_of_one_and_of_the_local_engine_in_waves(two_workers, sharp_model, tok):
    one = _engine(sharp_model, tok, 1)
    try:
        expected = one.generate(_request(tok), 4, SAMPLING, seed=11)
    finally:
        one.close()
    got = two_workers.generate(_request(tok), 4, SAMPLING, seed=11)
    assert _same(got, expected)
    torch.testing.assert_close(got.logprobs, expected.logprobs, atol=0, rtol=0)
    assert got.num_prompts == 12 and got.group_index.tolist() == [i // 4 for i in range(48)]
    # the local engine cuts the request into the same waves (at 1 thread, as each worker)
    torch.set_num_threads(1)
    local = build_engine("builtin", copy.deepcopy(sharp_model), tok, max_rows_in_flight=8)
    assert _same(local.generate(_request(tok), 4, SAMPLING, seed=11), got)


def test_waves_streamed_in_order_are_the_request_and_a_stream_closed_early_leaves_nothing_behind(two_workers, tok):
    from dapo.rollout import concat_rollouts

    whole = two_workers.generate(_request(tok), 4, SAMPLING, seed=5)
    waves = list(two_workers.generate_waves(_request(tok), 4, SAMPLING, seed=5, prompts_per_wave=2))
    assert [w.num_prompts for w in waves] == [2] * 6
    assert _same(concat_rollouts(waves, tok.pad_token_id), whole)
    stream = two_workers.generate_waves(_request(tok), 4, SAMPLING, seed=5, prompts_per_wave=2)
    assert _same(next(stream), waves[0]) and _same(next(stream), waves[1])
    stream.close()  # the queued waves are cancelled, running ones dropped: the next request is not disturbed
    assert _same(two_workers.generate(_request(tok), 4, SAMPLING, seed=5), whole)


def test_the_workers_sleep_and_wake_and_sample_as_before(two_workers, tok):
    before = two_workers.generate(_request(tok), 4, SAMPLING, seed=2)
    two_workers.sleep(2)
    two_workers.wake_up(("weights",))
    two_workers.wake_up(("kv_cache",))
    assert _same(two_workers.generate(_request(tok), 4, SAMPLING, seed=2), before)


def test_weights_pushed_to_the_workers_change_what_they_sample(two_workers, sharp_model, tok):
    before = two_workers.generate(_request(tok), 4, SAMPLING, seed=3)
    other = copy.deepcopy(sharp_model)
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)
    two_workers.update_weights(other.state_dict())
    after = two_workers.generate(_request(tok), 4, SAMPLING, seed=3)
    two_workers.update_weights(sharp_model.state_dict())
    assert not _same(before, after)
    assert _same(two_workers.generate(_request(tok), 4, SAMPLING, seed=3), before)


def test_a_push_in_many_buckets_samples_what_a_push_in_one_does(ray_cluster, sharp_model, tok):
    other = _doubled_head(sharp_model)
    one = _engine(sharp_model, tok, 1, bucket_bytes=1 << 30)
    try:
        one.update_weights(other.state_dict())
        expected = one.generate(_request(tok), 4, SAMPLING, seed=8)
        assert one.counters()["rollout/weight_sync_buckets"] == 1
    finally:
        one.close()
    many = _engine(sharp_model, tok, 1, bucket_bytes=64 << 10)
    try:
        many.update_weights(other.state_dict())
        assert _same(many.generate(_request(tok), 4, SAMPLING, seed=8), expected)
        counters = many.counters()
        largest = max(t.numel() * 4 for t in other.state_dict().values())
        assert counters["rollout/weight_sync_buckets"] > 10
        assert counters["rollout/weight_sync_peak_mb"] * 2**20 <= (64 << 10) + largest
    finally:
        many.close()


def test_a_worker_killed_mid_request_is_restarted_and_its_waves_regenerated(ray_cluster, sharp_model, tok):
    """Killed a third of the way into a request: restarted, given the current weights (not the first ones),
    its waves generated again with the same tokens. Killed once more, past the budget: one clear error."""
    from dapo.cluster import ClusterError

    engine = _engine(sharp_model, tok, 2, max_restarts=1)
    try:
        other = copy.deepcopy(sharp_model)
        with torch.no_grad():
            other.lm_head.weight.mul_(2.0)
        engine.update_weights(other.state_dict())
        long = SamplingParams(max_new_tokens=48, temperature=1.0)
        start = time.monotonic()
        expected = engine.generate(_request(tok), 4, long, seed=5)
        victim = ray_cluster.get(engine.workers[1].pid.remote())
        threading.Timer((time.monotonic() - start) / 3, os.kill, (victim, signal.SIGKILL)).start()
        got = engine.generate(_request(tok), 4, long, seed=5)
        assert engine.counters()["rollout/worker_restarts"] == 1.0
        assert _same(got, expected)
        os.kill(ray_cluster.get(engine.workers[1].pid.remote()), signal.SIGKILL)
        with pytest.raises(ClusterError, match=r"rollout worker 1 died .*ray.max_rollout_restarts=1"):
            engine.generate(_request(tok), 4, SAMPLING, seed=5)
    finally:
        engine.close()


def _doubled_head(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(2.0)
    return other


@ENGINES
def test_a_worker_dead_at_a_weight_push_is_restarted_and_given_the_new_weights(ray_cluster, sharp_model, tok, kind):
    """Killed just before a push: the push finds it dead (the engine restarts it and pushes again) or lands on the
    process Ray already brought back; either way it holds the pushed weights, not its constructor's, and the next
    request samples what a healthy engine samples after the same push."""
    _vllm_if(kind)
    engine = _engine(sharp_model, tok, 2, kind=kind)
    try:
        other = _doubled_head(sharp_model)
        engine.update_weights(other.state_dict())
        expected = engine.generate(_request(tok), 4, SAMPLING, seed=9)
        engine.update_weights(sharp_model.state_dict())
        os.kill(ray_cluster.get(engine.workers[1].pid.remote()), signal.SIGKILL)
        engine.update_weights(other.state_dict())
        restarts = engine.counters()["rollout/worker_restarts"]
        assert restarts in (0.0, 1.0)
        assert _same(engine.generate(_request(tok), 4, SAMPLING, seed=9), expected)
        assert engine.counters()["rollout/worker_restarts"] == restarts  # nothing stale left to reload
    finally:
        engine.close()


@ENGINES
def test_a_worker_ray_restarted_while_idle_reloads_the_weights_before_it_samples(ray_cluster, sharp_model, tok, kind):
    """Killed after a push, while idle: Ray brings it back with its constructor's (step-0) weights. The next
    request carries the weights' version, so the worker loads the current ones first (counted as a restart) and
    the tokens are those of the pushed weights."""
    _vllm_if(kind)
    engine = _engine(sharp_model, tok, 2, kind=kind)
    try:
        engine.update_weights(_doubled_head(sharp_model).state_dict())
        expected = engine.generate(_request(tok), 4, SAMPLING, seed=4)
        victim = ray_cluster.get(engine.workers[1].pid.remote())
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until Ray has restarted it, without a call from the engine
            try:
                if ray_cluster.get(engine.workers[1].pid.remote(), timeout=5) != victim:
                    break
            except Exception:
                time.sleep(0.2)
        assert engine.counters()["rollout/worker_restarts"] == 0.0
        assert _same(engine.generate(_request(tok), 4, SAMPLING, seed=4), expected)
        assert engine.counters()["rollout/worker_restarts"] == 1.0
    finally:
        engine.close()
