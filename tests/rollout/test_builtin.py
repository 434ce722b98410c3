"""BuiltinEngine: log-probs equal a forward pass, sampling is right, finish reasons and lengths,
weight updates, determinism, and that the trainer's module is left as it was."""

import pytest
import torch
from transformers import GenerationConfig

from dapo.models import build_tiny_model
from dapo.rollout import BuiltinEngine, RolloutEngine, SamplingParams, build_engine, concat_rollouts, wave_seed

BACKENDS = ["fused", "static", "hf"]


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: p = 0.001)."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * a**0.5) ** 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_equal_forward_pass_with_padding_and_early_finish(
    sharp_model, tok, prompts, backend, forward_logprobs
):
    # Several eos ids make rows finish at different steps, so finished rows are dropped from the
    # cache (compact_below=1.0 drops them at once) while the others continue.
    eos = tuple(range(60, 75))
    engine = BuiltinEngine(sharp_model, tok, backend=backend, eos_token_ids=eos, compact_below=1.0)
    assert engine.backend_name == backend
    sp = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=24, return_sampling_logprobs=True)
    batch = engine.generate(prompts, 4, sp, seed=1)
    assert isinstance(engine, RolloutEngine)
    assert batch.response_lengths.unique().numel() > 1, "want rows of different lengths"
    for r in range(batch.response_ids.shape[0]):
        L = int(batch.response_lengths[r])
        prompt = prompts[int(batch.group_index[r])]
        response = batch.response_ids[r, :L].tolist()
        assert batch.prompt_ids[r][batch.prompt_mask[r]].tolist() == prompt
        want, logits = forward_logprobs(sharp_model, prompt, response)
        torch.testing.assert_close(batch.logprobs[r, :L], want, atol=1e-5, rtol=0)
        # Under the sampling distribution: temperature 0.8 then top-20, renormalised.
        x = logits[len(prompt) - 1 : len(prompt) - 1 + L] / 0.8
        x = x.masked_fill(x < x.topk(20, dim=-1).values[:, -1:], float("-inf"))
        want_q = torch.log_softmax(x, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        torch.testing.assert_close(batch.sampling_logprobs[r, :L], want_q, atol=1e-5, rtol=0)
        assert (batch.logprobs[r, L:] == 0).all() and (batch.response_ids[r, L:] == tok.pad_token_id).all()
        assert batch.response_mask[r].sum() == L
        reason = batch.finish_reasons[r]
        assert reason == ("eos" if response[-1] in eos else "length")
        assert (reason == "length") == (L == 24)


def test_layout_group_index_and_prompt_padding(sharp_model, tok, prompts):
    batch = BuiltinEngine(sharp_model, tok).generate(prompts, 3, SamplingParams(max_new_tokens=5), seed=0)
    assert batch.n == 3 and batch.num_prompts == 3
    assert batch.group_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompt_ids.shape == (9, max(map(len, prompts)))
    # left padding: the mask is a suffix
    assert batch.prompt_mask[6].tolist() == [False] * (len(prompts[1]) - 1) + [True]
    ids, mask = batch.sequences()
    assert ids.shape[1] == batch.prompt_ids.shape[1] + batch.response_ids.shape[1]
    assert mask.sum() == batch.prompt_mask.sum() + batch.response_lengths.sum()
    assert batch.response_ids.dtype == torch.long and batch.logprobs.dtype == torch.float32


def test_first_token_frequencies_match_softmax_chi_square(sharp_model, tok):
    prompt = tok("7*8=")["input_ids"]
    N = 4000
    engine = BuiltinEngine(sharp_model, tok, eos_token_ids=())
    batch = engine.generate([prompt], N, SamplingParams(max_new_tokens=1), seed=123)
    with torch.no_grad():
        probs = torch.softmax(sharp_model(torch.tensor([prompt])).logits[0, -1].double(), -1)
    counts = torch.bincount(batch.response_ids[:, 0], minlength=probs.numel()).double()
    expected = probs * N
    big = expected >= 5  # pool the rare tokens into one bin so every bin expects >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    dof = obs.numel() - 1
    assert dof >= 5, "the sharpened model should still spread mass over several tokens"
    chi2 = ((obs - exp) ** 2 / exp).sum().item()
    assert chi2 < chi2_critical(dof), (chi2, dof)


@pytest.mark.parametrize("mode", ["top_k", "top_p"])
def test_top_k_top_p_sample_only_allowed_tokens(sharp_model, tok, mode):
    prompt = tok("12+30=")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(sharp_model(torch.tensor([prompt])).logits[0, -1].double(), -1)
    p_sorted, order = probs.sort(descending=True)
    allowed = set(order[:3].tolist())
    # top_p between the mass of the top 2 and the top 3 tokens: exactly 3 tokens reach it.
    top_k, top_p = (3, 1.0) if mode == "top_k" else (0, float(p_sorted[:2].sum() + 0.5 * p_sorted[2]))
    assert p_sorted[2] > 1e-3, "the third token must be likely enough to be seen"
    sp = SamplingParams(top_k=top_k, top_p=top_p, max_new_tokens=1)
    batch = BuiltinEngine(sharp_model, tok).generate([prompt], 2000, sp, seed=0)
    assert set(batch.response_ids[:, 0].tolist()) == allowed


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_equals_hf_generate_greedy(sharp_model, tok, prompts, backend):
    # Prompt 1's greedy continuation starts with <eos>: EOS handling is compared too.
    engine = BuiltinEngine(sharp_model, tok, backend=backend, eos_token_ids=(tok.eos_token_id,))
    a = engine.generate(prompts, 2, SamplingParams(temperature=0.0, max_new_tokens=12), seed=0)
    b = engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=12), seed=99)
    assert torch.equal(a.response_ids[::2], b.response_ids) and torch.equal(a.response_ids[::2], a.response_ids[1::2])
    Tp = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (Tp - len(p)) + p for p in prompts])
    cfg = GenerationConfig(
        do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    with torch.no_grad():
        ref = sharp_model.generate(
            input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), generation_config=cfg
        )
    assert torch.equal(b.response_ids, ref[:, Tp:])  # HF pads after EOS with the same pad id
    assert b.finish_reasons == ("length", "eos", "length") and b.response_lengths.tolist() == [12, 1, 12]


def test_seed_determinism(sharp_model, tok, prompts):
    engine = BuiltinEngine(sharp_model, tok)
    sp = SamplingParams(max_new_tokens=16)
    a, b = engine.generate(prompts, 4, sp, seed=5), engine.generate(prompts, 4, sp, seed=5)
    c = engine.generate(prompts, 4, sp, seed=6)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def _greedy(engine, prompt, k=16):
    return engine.generate([prompt], 1, SamplingParams(greedy=True, max_new_tokens=k), seed=0).response_ids[0].tolist()


def test_eos_stop_token_stop_string_and_length_finish(sharp_model, tok, prompts):
    prompt = prompts[0]
    free = _greedy(BuiltinEngine(sharp_model, tok, eos_token_ids=()), prompt)  # 16 tokens, no stops
    k = next(j for j in range(3, 16) if free[j] not in free[:j])  # a token first seen mid-response
    engine = BuiltinEngine(sharp_model, tok, eos_token_ids=(free[k],))
    out = engine.generate([prompt], 1, SamplingParams(greedy=True, max_new_tokens=16), seed=0)
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == ("eos", k + 1)
    assert out.response_ids[0, : k + 1].tolist() == free[: k + 1]  # EOS is part of the response

    engine = BuiltinEngine(sharp_model, tok, eos_token_ids=())
    out = engine.generate(
        [prompt], 1, SamplingParams(greedy=True, max_new_tokens=16, stop_token_ids=(free[k],)), seed=0
    )
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == ("stop", k + 1)

    text = tok.decode(free)
    assert len(text) == 16, "one character per token"
    needle = text[k - 1 : k + 1]
    end_char = text.index(needle) + len(needle)
    out = engine.generate([prompt], 1, SamplingParams(greedy=True, max_new_tokens=16, stop_strings=(needle,)), seed=0)
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == ("stop", end_char)
    assert tok.decode(out.response_ids[0, :end_char].tolist()).endswith(needle)

    out = engine.generate([prompt], 1, SamplingParams(greedy=True, max_new_tokens=7), seed=0)
    assert (out.finish_reasons[0], int(out.response_lengths[0])) == ("length", 7)
    assert out.response_ids[0].tolist() == free[:7]

    # The context limit caps each row by its own prompt length.
    ctx = BuiltinEngine(sharp_model, tok, eos_token_ids=(), max_context=len(prompts[1]) + 3)
    out = ctx.generate(prompts, 1, SamplingParams(max_new_tokens=16), seed=0)
    assert out.response_lengths.tolist() == [min(16, len(prompts[1]) + 3 - len(p)) for p in prompts]
    assert out.finish_reasons == ("length",) * 3


def test_weight_update_and_shared_module(tok, prompts):
    model = build_tiny_model(tok, "1m", seed=0)
    other = build_tiny_model(tok, "1m", seed=1)
    engine = build_engine("builtin", model, tok, eos_token_ids=())
    before = _greedy(engine, prompts[0])
    want = _greedy(BuiltinEngine(other, tok, eos_token_ids=()), prompts[0])
    assert before != want
    engine.update_weights(other.state_dict())
    assert _greedy(engine, prompts[0]) == want
    engine.update_weights(build_tiny_model(tok, "1m", seed=0))  # a module works too
    assert _greedy(engine, prompts[0]) == before
    # In-process sharing: an in-place change to the trainer's parameters is seen without a call.
    with torch.no_grad():
        for p_mine, p_other in zip(model.parameters(), other.parameters(), strict=True):
            p_mine.copy_(p_other)
    engine.update_weights(model)  # no-op for the shared module
    assert _greedy(engine, prompts[0]) == want
    with pytest.raises(TypeError):
        engine.update_weights(42)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaves_module_as_it_was(tok, prompts, backend):
    model = build_tiny_model(tok, "1m", seed=2)
    model.train()
    attn = model.config._attn_implementation
    engine = BuiltinEngine(model, tok, backend=backend)
    engine.generate(prompts, 2, SamplingParams(max_new_tokens=6), seed=0)
    assert model.training and all(m.training for m in model.modules())
    assert model.config._attn_implementation == attn
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # The trainer's forward still works with autograd after a rollout.
    out = model(torch.tensor([prompts[0]])).logits.sum()
    out.backward()
    assert model.lm_head.weight.grad is not None


def test_stop_strings_need_a_tokenizer(sharp_model, prompts):
    engine = BuiltinEngine(sharp_model, None, eos_token_ids=(3,), pad_token_id=0)
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate(prompts, 1, SamplingParams(stop_strings=("ab",)), seed=0)
    assert engine.generate(prompts, 1, SamplingParams(max_new_tokens=3), seed=0).response_ids.shape[0] == 3


class _CountingHook:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1


@pytest.mark.parametrize(
    "prompts_fn, n, sampling, match",
    [
        (lambda p: [p[0], []], 1, SamplingParams(), "prompt 1 is empty"),
        (lambda p: [], 1, SamplingParams(), "non-empty"),
        (lambda p: [list(range(10, 90)) * 30], 1, SamplingParams(), "2400 tokens"),
        (lambda p: p, 0, SamplingParams(), "n .* got 0"),
        (lambda p: p, 1, SamplingParams(top_p=0.0), "top_p .* got 0.0"),
        (lambda p: p, 1, SamplingParams(top_p=1.5), "top_p .* got 1.5"),
        (lambda p: p, 1, SamplingParams(temperature=-0.5), "temperature .* got -0.5"),
        (lambda p: p, 1, SamplingParams(stop_token_ids=(5000,)), "stop token id 5000"),
        (lambda p: p, 1, SamplingParams(max_new_tokens=0), "max_new_tokens"),
        (lambda p: [[1, 2, 999]], 1, SamplingParams(), "token id 999"),
    ],
)
def test_bad_input_fails_before_any_work(sharp_model, tok, prompts, prompts_fn, n, sampling, match):
    engine = BuiltinEngine(sharp_model, tok)
    hook = _CountingHook(sharp_model)
    try:
        with pytest.raises(ValueError, match=match):
            engine.generate(prompts_fn(prompts), n, sampling, seed=0)
        assert hook.calls == 0
    finally:
        hook.handle.remove()


def test_constructor_errors(sharp_model, tok):
    with pytest.raises(ValueError, match="backend"):
        BuiltinEngine(sharp_model, tok, backend="paged")
    with pytest.raises(ValueError, match="9999"):
        BuiltinEngine(sharp_model, tok, eos_token_ids=(9999,))
    with pytest.raises(ValueError, match="engine kind"):
        build_engine("tgi", sharp_model, tok)


def test_auto_picks_the_fused_decode_for_llama_and_qwen2_with_biases(tok, prompts, forward_logprobs):
    """Qwen2 has q/k/v biases; random non-zero biases (HF inits them to 0) must reach the logits too."""
    for arch in ("llama", "qwen2"):
        model = build_tiny_model(tok, "1m", seed=3, arch=arch)
        if arch == "qwen2":
            with torch.no_grad():
                for layer in model.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        proj.bias.normal_(0, 0.5)
        engine = BuiltinEngine(model, tok)
        assert engine.backend_name == "fused"
        batch = engine.generate(prompts, 3, SamplingParams(max_new_tokens=12), seed=0)
        for r in range(batch.response_ids.shape[0]):
            L = int(batch.response_lengths[r])
            response = batch.response_ids[r, :L].tolist()
            want, _ = forward_logprobs(model, prompts[int(batch.group_index[r])], response)
            torch.testing.assert_close(batch.logprobs[r, :L], want, atol=1e-5, rtol=0)


def test_auto_falls_back_to_static_for_an_architecture_fused_does_not_cover(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    from dapo.rollout.fused_decode import FusedDecoder, unsupported_reason

    config = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    assert "gpt2" in unsupported_reason(model)
    with pytest.raises(NotImplementedError, match="gpt2"):
        FusedDecoder(model)
    assert BuiltinEngine(model, tok).backend_name in ("static", "hf")


def _same_rollout(a, b) -> None:
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "response_lengths"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.finish_reasons == b.finish_reasons and torch.equal(a.group_index, b.group_index)


def test_a_request_over_the_row_budget_runs_in_waves_of_whole_prompts(sharp_model, tok, prompts, monkeypatch):
    many = [*prompts, *prompts, prompts[0]]  # 7 prompts of mixed lengths
    sp = SamplingParams(max_new_tokens=12)
    whole = BuiltinEngine(sharp_model, tok).generate(many, 3, sp, seed=4)
    limited = BuiltinEngine(sharp_model, tok, max_rows_in_flight=7)  # 2 prompts x 3 rows per wave
    waves = []
    original = limited._generate

    def spy(wave_prompts, n, sampling, seed):
        waves.append((len(wave_prompts) * n, seed))
        return original(wave_prompts, n, sampling, seed)

    monkeypatch.setattr(limited, "_generate", spy)
    batched = limited.generate(many, 3, sp, seed=4)
    assert [rows for rows, _ in waves] == [6, 6, 6, 3] and max(rows for rows, _ in waves) <= 7
    assert [seed for _, seed in waves] == [wave_seed(4, w) for w in range(4)] and waves[0][1] == 4
    # The layout of one request: row i·n … i·n + n − 1 answers prompt i, prompts left-padded to the longest.
    assert batched.response_ids.shape[0] == 21
    assert batched.group_index.tolist() == [p for p in range(7) for _ in range(3)]
    for i, p in enumerate(many):
        row = 3 * i
        assert batched.prompt_ids[row][batched.prompt_mask[row]].tolist() == p
    # Each wave is what generating its prompts alone with the wave's seed gives.
    alone = BuiltinEngine(sharp_model, tok).generate(many[2:4], 3, sp, seed=wave_seed(4, 1))
    width = int(alone.response_mask.sum(1).max())
    torch.testing.assert_close(batched.response_ids[6:12, :width], alone.response_ids[:, :width], rtol=0, atol=0)
    assert torch.equal(batched.response_lengths[6:12], alone.response_lengths)
    # Deterministic for a fixed seed and budget; a request that fits in one wave is generated as without it.
    _same_rollout(batched, limited.generate(many, 3, sp, seed=4))
    _same_rollout(BuiltinEngine(sharp_model, tok, max_rows_in_flight=21).generate(many, 3, sp, seed=4), whole)
    # n larger than the budget still makes progress: one prompt per wave.
    assert BuiltinEngine(sharp_model, tok, max_rows_in_flight=2).generate(prompts, 3, sp, seed=0).n == 3


def test_waves_one_at_a_time_are_the_waves_of_the_whole_request_and_stop_when_closed(
    sharp_model, tok, prompts, monkeypatch
):
    many = [*prompts, *prompts, prompts[0]]
    sp = SamplingParams(max_new_tokens=12)
    engine = BuiltinEngine(sharp_model, tok, max_rows_in_flight=6)
    whole = engine.generate(many, 3, sp, seed=4)
    waves = list(engine.generate_waves(many, 3, sp, seed=4, prompts_per_wave=2))
    assert [w.num_prompts for w in waves] == [2, 2, 2, 1]
    _same_rollout(concat_rollouts(waves, engine.pad_token_id), whole)
    generated = []
    original = engine._generate
    monkeypatch.setattr(engine, "_generate", lambda p, *a: generated.append(len(p)) or original(p, *a))
    stream = engine.generate_waves(many, 3, sp, seed=4, prompts_per_wave=2)
    _same_rollout(next(stream), waves[0])
    stream.close()
    assert generated == [2]  # a wave not asked for is never generated
    with pytest.raises(ValueError, match="prompts_per_wave"):
        next(engine.generate_waves(many, 3, sp, seed=4, prompts_per_wave=0))


def test_the_automatic_row_budget_follows_memory(sharp_model, tok, prompts, monkeypatch):
    import dapo.rollout.builtin as builtin

    engine = BuiltinEngine(sharp_model, tok)
    sp = SamplingParams(max_new_tokens=100)
    config = sharp_model.config
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    per_row = kv_per_token * (max(len(p) for p in prompts) + 100) + 6 * 4 * engine.vocab_size
    monkeypatch.setattr(builtin, "machine_memory_bytes", lambda: 4 * 50 * per_row)
    assert engine.rows_per_wave(prompts, sp) == 50
    monkeypatch.setattr(builtin, "machine_memory_bytes", lambda: 1)
    assert engine.rows_per_wave(prompts, sp) == 1
    with pytest.raises(ValueError, match="max_rows_in_flight"):
        BuiltinEngine(sharp_model, tok, max_rows_in_flight=0)


def test_concat_rollouts_pads_to_the_widest_part(sharp_model, tok, prompts):
    sp = SamplingParams(max_new_tokens=6)
    engine = BuiltinEngine(sharp_model, tok)
    first, second = engine.generate(prompts[:1], 2, sp, seed=0), engine.generate(prompts[1:], 2, sp, seed=1)
    joined = concat_rollouts([first, second])
    assert joined.n == 2 and joined.num_prompts == 3 and joined.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert joined.prompt_ids.shape[1] == max(first.prompt_ids.shape[1], second.prompt_ids.shape[1])
    for part, rows in ((first, slice(0, 2)), (second, slice(2, 6))):
        t = part.response_ids.shape[1]
        assert torch.equal(joined.response_ids[rows, :t], part.response_ids)
        assert not joined.response_mask[rows, t:].any() and (joined.logprobs[rows, t:] == 0).all()
        assert torch.equal(joined.prompt_ids[rows][joined.prompt_mask[rows]], part.prompt_ids[part.prompt_mask])
    assert (joined.prompt_ids[~joined.prompt_mask] == engine.pad_token_id).all()
    assert (joined.response_ids[~joined.response_mask] == engine.pad_token_id).all()


def test_a_bfloat16_engine_holds_a_copy_refreshed_from_the_trained_weights(sharp_model, tok, prompts):
    import copy

    from dapo.components import _local_engine
    from dapo.config import load_config

    engine = _local_engine(load_config("cpu_dapo", overrides=["rollout.dtype=bfloat16"]), sharp_model, tok)
    assert engine.model is not sharp_model and engine.model.lm_head.weight.dtype == torch.bfloat16
    assert not engine.reports_logprobs_of(sharp_model)  # π_old must be recomputed by the trainer
    trained = copy.deepcopy(sharp_model)
    with torch.no_grad():
        trained.lm_head.weight.mul_(1.5)
    engine.update_weights(trained)
    assert torch.equal(engine.model.lm_head.weight, trained.lm_head.weight.to(torch.bfloat16))
    assert sharp_model.lm_head.weight.dtype == torch.float32  # the trained module is untouched
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=8), seed=0)
    assert out.logprobs.dtype == torch.float32 and torch.isfinite(out.logprobs).all()
    assert _local_engine(load_config("cpu_dapo"), sharp_model, tok).model is sharp_model  # float32: shared
