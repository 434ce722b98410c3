"""VLLMEngine (optional extra). Skipped unless vllm imports; run them with

    .venv-vllm/bin/python -m pytest -m vllm tests/rollout/test_vllm.py

One in-process vLLM instance is built for the module (~10-25 s with the import)."""

import copy
import os

import pytest
import torch

from dapo.models import build_tiny_model
from dapo.rollout import BuiltinEngine, RolloutEngine, SamplingParams, build_engine

pytestmark = pytest.mark.vllm
os.environ.setdefault("OMP_NUM_THREADS", "1")  # in-process vLLM pins threads; see vllm_engine.py
pytest.importorskip("vllm", reason="vllm is not installed (optional extra)")

PROMPTS_TEXT = ("12+30=", "what is 7*6?", "a")


def _run_options() -> dict:
    """The options a run with this config builds its engine with (components.vllm_options): one engine a process
    (vLLM's parallel state is global to it: closing a second engine breaks the first), so the module's engine is
    the one a run would build."""
    from dapo.components import vllm_options
    from dapo.config import load_config

    overrides = ["rollout.engine=vllm", "data.max_prompt_length=64", "rollout.max_response_length=64",
                 "rollout.kv_cache_gb=0.05"]  # fmt: skip
    return {"dtype": "float32", **vllm_options(load_config("cpu_dapo", None, overrides))}


_RUN_OPTIONS = _run_options()


def _greedy_builtin(model, tok, prompts, k=16):
    engine = BuiltinEngine(model, tok, eos_token_ids=())
    return engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=k), seed=0).response_ids


@pytest.fixture(scope="module")
def setup(tok, sharp_model):
    prompts = [tok(t)["input_ids"] for t in PROMPTS_TEXT]
    free = _greedy_builtin(sharp_model, tok, prompts)[0].tolist()
    # an id that the greedy continuation of prompt 0 first reaches mid-way: "eos" is testable
    eos_id = free[next(j for j in range(3, 16) if free[j] not in free[:j])]
    engine = build_engine("vllm", sharp_model, tok, eos_token_ids=(eos_id,), **_RUN_OPTIONS)
    yield engine, prompts, free, eos_id
    engine.close()


def test_logprobs_equal_forward_pass(setup, sharp_model, forward_logprobs):
    engine, prompts, _, eos_id = setup
    assert isinstance(engine, RolloutEngine)
    sp = SamplingParams(temperature=0.9, top_k=30, max_new_tokens=20)
    batch = engine.generate(prompts, 4, sp, seed=0)
    assert batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for r in range(batch.response_ids.shape[0]):
        L = int(batch.response_lengths[r])
        prompt = prompts[int(batch.group_index[r])]
        response = batch.response_ids[r, :L].tolist()
        want, _ = forward_logprobs(sharp_model, prompt, response)
        torch.testing.assert_close(batch.logprobs[r, :L], want, atol=1e-5, rtol=0)
        assert batch.finish_reasons[r] == ("eos" if response[-1] == eos_id else "length")
        assert (batch.response_ids[r, L:] == engine.pad_token_id).all() and (batch.logprobs[r, L:] == 0).all()


def test_greedy_matches_builtin_and_finish_reasons(setup, sharp_model, tok):
    engine, prompts, free, eos_id = setup
    k = free.index(eos_id) + 1
    out = engine.generate([prompts[0]], 1, SamplingParams(greedy=True, max_new_tokens=16), seed=0)
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == ("eos", k)
    assert out.response_ids[0, :k].tolist() == free[:k]
    out = engine.generate([prompts[0]], 1, SamplingParams(greedy=True, max_new_tokens=min(3, k - 1)), seed=0)
    assert out.finish_reasons == ("length",) and out.response_ids[0].tolist() == free[: min(3, k - 1)]
    text = tok.decode(free)  # one character per token
    needle = text[k - 2 : k]
    end = text.index(needle) + 2
    sp = SamplingParams(greedy=True, max_new_tokens=16, stop_strings=(needle,))
    out = engine.generate([prompts[0]], 1, sp, seed=0)
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == ("stop", end)
    sp = SamplingParams(greedy=True, max_new_tokens=16, stop_token_ids=(free[1],))
    out = engine.generate([prompts[0]], 1, sp, seed=0)
    first = free.index(free[1]) + 1
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == (
        "eos" if free[first - 1] == eos_id else "stop",
        first,
    )


def test_seed_determinism(setup):
    engine, prompts, _, _ = setup
    sp = SamplingParams(max_new_tokens=12)
    a, b = engine.generate(prompts, 4, sp, seed=3), engine.generate(prompts, 4, sp, seed=3)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, engine.generate(prompts, 4, sp, seed=4).response_ids)


def test_bad_input_and_unsupported(setup):
    engine, prompts, _, _ = setup
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(prompts, 1, SamplingParams(top_p=0.0), seed=0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([[]], 1, SamplingParams(), seed=0)
    with pytest.raises(ValueError, match="128 tokens"):
        engine.generate([[10] * 200], 1, SamplingParams(), seed=0)
    with pytest.raises(ValueError, match="raw-policy"):
        engine.generate(prompts, 1, SamplingParams(temperature=0.7, return_sampling_logprobs=True), seed=0)
    out = engine.generate(prompts, 1, SamplingParams(max_new_tokens=4, return_sampling_logprobs=True), seed=0)
    assert torch.equal(out.sampling_logprobs, out.logprobs)


def test_update_weights_then_generation_follows_new_weights(setup, tok, sharp_model):
    engine, prompts, _, _ = setup
    other = build_tiny_model(tok, "1m", seed=7)
    sp = SamplingParams(greedy=True, max_new_tokens=10)
    engine.update_weights(other)
    want = BuiltinEngine(other, tok, eos_token_ids=engine.eos_token_ids).generate(prompts, 1, sp, seed=0)
    got = engine.generate(prompts, 1, sp, seed=0)
    assert torch.equal(got.response_ids, want.response_ids)
    engine.update_weights(sharp_model.state_dict())  # back, for any later test
    back = engine.generate(prompts, 1, sp, seed=0)
    want = BuiltinEngine(sharp_model, tok, eos_token_ids=engine.eos_token_ids).generate(prompts, 1, sp, seed=0)
    assert torch.equal(back.response_ids, want.response_ids)


def test_a_push_in_small_buckets_loads_every_weight(setup, tok, sharp_model, forward_logprobs):
    """64 KB buckets (the 1M model in ~70 pushes of a few tensors, q/k/v and gate/up of one layer split across
    buckets): the engine's log-probs are the new model's to 1e-5, so every partial reload landed and none undid
    another (vLLM's CPU path repacks the linear weights after loading)."""
    engine, prompts, _, _ = setup
    other = build_tiny_model(tok, "1m", seed=11)
    other.config.tie_word_embeddings = False
    other.lm_head.weight = torch.nn.Parameter(sharp_model.lm_head.weight.detach() * 1.5)
    engine.bucket_bytes, bucket_bytes = 64 << 10, engine.bucket_bytes
    try:
        engine.update_weights(other)
        batch = engine.generate(prompts, 2, SamplingParams(max_new_tokens=12), seed=1)
        for r in range(batch.response_ids.shape[0]):
            L = int(batch.response_lengths[r])
            want, _ = forward_logprobs(other, prompts[int(batch.group_index[r])], batch.response_ids[r, :L].tolist())
            torch.testing.assert_close(batch.logprobs[r, :L], want, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="not whole: missing"):
            engine.update_weights(dict(list(other.state_dict().items())[2:]))
    finally:
        engine.update_weights(sharp_model.state_dict())  # back, whole, for any later test
        engine.bucket_bytes = bucket_bytes


def test_waves_and_counters_as_the_builtin_engine(setup, tok):
    """The RolloutEngine surface beyond generate: waves of whole prompts, in order, each seeded as the built-in
    engine seeds it (so a seeded stream is reproducible), and the counters dict."""
    from dapo.rollout import concat_rollouts

    engine, prompts, _, _ = setup
    sp = SamplingParams(max_new_tokens=8)
    waves = list(engine.generate_waves(prompts, 2, sp, seed=6, prompts_per_wave=2))
    assert [w.num_prompts for w in waves] == [2, 1]
    again = concat_rollouts(list(engine.generate_waves(prompts, 2, sp, seed=6, prompts_per_wave=2)), tok.pad_token_id)
    assert torch.equal(concat_rollouts(waves, tok.pad_token_id).response_ids, again.response_ids)
    assert isinstance(engine.counters(), dict)


def test_the_engine_gets_the_runs_context_and_says_what_it_got(setup):
    """Built as a run builds it: the context is the run's prompt + response length (64 + 64), the KV cache the size
    asked for (rollout.kv_cache_gb), and the engine reports both."""
    engine = setup[0]
    assert _RUN_OPTIONS["max_model_len"] == engine.max_context == 128
    assert engine.limits.startswith("context 128 tokens, tensor parallel 1, KV cache ")
    # 0.05 GB over 2·4 layers·2 key/value heads·32·4 bytes = 2,048 bytes a token: about 24,000 tokens
    tokens = int(engine.limits.rsplit("KV cache ", 1)[1].split()[0].replace(",", ""))
    assert 20_000 <= tokens <= 25_000


_TENSOR_PARALLEL_RUN = """
import json, sys
from dapo.rollout import SamplingParams, build_engine
from transformers import AutoModelForCausalLM, AutoTokenizer
path, eos_id, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
engine = build_engine("vllm", path, AutoTokenizer.from_pretrained(path), eos_token_ids=(eos_id,), max_model_len=128,
                      tensor_parallel_size=2)
greedy = engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=12), seed=0)
sampled = engine.generate(prompts, 2, SamplingParams(max_new_tokens=12), seed=1)
engine.bucket_bytes = 64 << 10  # a push in small buckets of whole decoder layers, each pickled to both workers
engine.update_weights(AutoModelForCausalLM.from_pretrained(sys.argv[4]))
pushed = engine.generate(prompts, 2, SamplingParams(max_new_tokens=12), seed=2)
def fields(batch):
    return {"ids": batch.response_ids.tolist(), "lengths": batch.response_lengths.tolist(),
            "groups": batch.group_index.tolist(), "logprobs": batch.logprobs.tolist()}
print("RESULT " + json.dumps({
    "limits": engine.limits, "greedy": greedy.response_ids.tolist(), "sampled": fields(sampled),
    "pushed": fields(pushed),
}))
engine.close()
"""


def test_tensor_parallel_engine_gives_the_one_engine_tokens_and_the_trainers_logprobs(
    setup, sharp_model, tok, forward_logprobs, tmp_path
):
    """rollout.tensor_parallel_size=2 on vLLM's CPU backend (two worker processes, a core each), in a process of
    its own as a rollout worker would be (vLLM fixes its environment at the first engine of a process): the same
    greedy tokens as one engine, and the sampled tokens' log-probs equal to the trainer's forward within 1e-5;
    after a push in small buckets (whole decoder layers each, every one sliced by both workers), those of the
    pushed model."""
    import json
    import subprocess
    import sys

    from dapo.models import save_pretrained_pair

    engine, prompts, _, eos_id = setup
    path = save_pretrained_pair(sharp_model, tok, tmp_path / "model")
    other = copy.deepcopy(sharp_model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.3)
    other_path = save_pretrained_pair(other, tok, tmp_path / "pushed")
    done = subprocess.run(
        [sys.executable, "-c", _TENSOR_PARALLEL_RUN, str(path), str(eos_id), json.dumps(prompts), str(other_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    got = json.loads(lines[0].removeprefix("RESULT "))
    assert "tensor parallel 2" in got["limits"]
    one = engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=12), seed=0)
    assert got["greedy"] == one.response_ids.tolist()
    for model, batch in ((sharp_model, got["sampled"]), (other, got["pushed"])):
        for r, (ids, length, group) in enumerate(zip(batch["ids"], batch["lengths"], batch["groups"], strict=True)):
            want, _ = forward_logprobs(model, prompts[group], ids[:length])
            torch.testing.assert_close(torch.tensor(batch["logprobs"][r][:length]), want, atol=1e-5, rtol=0)


def test_sleep_and_wake_keep_the_engine_generating_the_same(setup):
    """On a CPU vLLM's sleep and wake free nothing (it logs so), but the lifecycle calls them every step: the
    engine must come back generating exactly what it generated before."""
    engine, prompts, _, _ = setup
    sp = SamplingParams(max_new_tokens=10)
    before = engine.generate(prompts, 2, sp, seed=8)
    engine.sleep(1)
    engine.wake_up(("weights",))
    engine.wake_up(("kv_cache",))
    assert torch.equal(engine.generate(prompts, 2, sp, seed=8).response_ids, before.response_ids)
