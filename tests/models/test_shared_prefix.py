"""The shared-prefix training forward: same logits and gradients as the model's own forward over padded rows."""

import pytest
import torch

from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.models.shared_prefix import SharedPrefixForward
from dapo.workers.batch import batch_from_prompts, grouped_micro_batches, position_ids, prompt_sharing
from dapo.workers.forward import ResponseForward


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, arch):
    model = build_tiny_model(tok, "1m", arch=arch, seed=1)
    if arch == "qwen2":  # non-zero q/k/v biases, so a dropped bias would show
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.copy_(torch.randn(proj.bias.shape, generator=g) * 0.5)
    return model


def _groups(vocab, seed=0):
    """3 prompts (lengths 5, 9, 1) with 2, 3 and 1 responses of lengths 1..7 (one of length 1)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in (5, 9, 1)]
    row_prompt = torch.tensor([0, 0, 1, 1, 1, 2])
    lengths = torch.tensor([4, 1, 7, 2, 5, 3])
    responses = torch.randint(3, vocab, (6, 8), generator=g)  # width 8 > longest response: trailing padding
    return prompts, row_prompt, responses, lengths


def _padded_forward(model, prompts, row_prompt, responses, lengths):
    """The reference: the model's own forward over the padded rows."""
    b = batch_from_prompts(prompts, row_prompt, responses, lengths)
    out = model(
        input_ids=b.input_ids, attention_mask=b.attention_mask.long(), position_ids=position_ids(b.attention_mask),
        use_cache=False,
    )  # fmt: skip
    return out.logits[:, b.prompt_width - 1 : b.prompt_width - 1 + responses.shape[1]]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_and_gradients_equal_the_padded_forward(tok, arch):
    # float64, so that rounding is far below any difference in the math. (RMSNorm keeps its statistics in
    # float32 in both forwards, so gradients agree to ~1e-7 relative, not 1e-15.)
    model = _model(tok, arch).train().double()
    inputs = _groups(model.config.vocab_size)
    lengths = inputs[3]
    real = torch.arange(8)[None, :] < lengths[:, None]
    want = _padded_forward(model, *inputs)
    got = SharedPrefixForward(model).response_logits(*inputs)
    assert got.shape == want.shape
    torch.testing.assert_close(got[real], want[real], atol=1e-10, rtol=1e-10)
    # A loss over the real positions only: the gradients of every parameter agree.
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(3)).double() * real[..., None]
    grads = []
    for logits in (want, got):
        model.zero_grad()
        (torch.log_softmax(logits, dim=-1) * weight).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, reference in grads[0].items():
        scale = float(reference.abs().max()) + 1e-8
        torch.testing.assert_close(grads[1][name] / scale, reference / scale, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("longest", [1, 12])
def test_many_rows_of_mixed_lengths_in_length_chunks(tok, longest):
    """Enough rows for several attention chunks (rows sorted by length, then put back in order); with
    longest=1 no response token is fed at all."""
    model = _model(tok, "qwen2").double().eval()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=g) for n in (6, 3, 11)]
    row_prompt = torch.randint(0, 3, (37,), generator=g)
    lengths = torch.randint(1, longest + 1, (37,), generator=g)
    responses = torch.randint(3, model.config.vocab_size, (37, longest + 2), generator=g)
    with torch.no_grad():
        want = _padded_forward(model, prompts, row_prompt, responses, lengths)
        got = SharedPrefixForward(model).response_logits(prompts, row_prompt, responses, lengths)
    real = torch.arange(longest + 2)[None, :] < lengths[:, None]
    torch.testing.assert_close(got[real], want[real], atol=1e-10, rtol=1e-10)


def test_a_prompt_s_responses_do_not_see_each_other(tok):
    """Changing one response changes no other row's logits, even of the same prompt."""
    model = _model(tok, "llama").eval()
    prompts, row_prompt, responses, lengths = _groups(model.config.vocab_size)
    forward = SharedPrefixForward(model)
    with torch.no_grad():
        before = forward.response_logits(prompts, row_prompt, responses, lengths)
        changed = responses.clone()
        changed[2] = (changed[2] + 1) % model.config.vocab_size
        after = forward.response_logits(prompts, row_prompt, changed, lengths)
    others = torch.tensor([0, 1, 3, 4, 5])
    real = torch.arange(8)[None, :] < lengths[others, None]
    torch.testing.assert_close(after[others][real], before[others][real], atol=1e-6, rtol=0)
    assert not torch.allclose(after[2, 1:7], before[2, 1:7])  # its own later tokens do change


def test_prompt_sharing_reads_the_batch_and_refuses_rows_with_another_prompt(tok):
    inputs = _groups(104)
    batch = batch_from_prompts(*inputs)
    prompts, row_prompt, lengths = prompt_sharing(batch)
    assert [p.tolist() for p in prompts] == [p.tolist() for p in inputs[0]]
    assert row_prompt.tolist() == inputs[1].tolist() and lengths.tolist() == inputs[3].tolist()
    bad_ids = batch.input_ids.clone()
    bad_ids[3, batch.prompt_width - 1] += 1  # row 3 claims group 1 but carries another prompt
    with pytest.raises(ValueError, match="row 3 of group 1 has a different prompt"):
        prompt_sharing(batch.replace(input_ids=bad_ids))


def test_grouped_micro_batches_keep_groups_together_within_the_budget():
    inputs = _groups(104)
    batch = batch_from_prompts(*inputs)
    prompt_len = [5, 5, 9, 9, 9, 1]
    response_len = inputs[3].tolist()
    for budget in (1, 10, 16, 1000):
        parts = grouped_micro_batches(batch, torch.arange(6), budget)
        assert sorted(torch.cat(parts).tolist()) == list(range(6))
        for part in parts:
            rows = part.tolist()
            groups = [int(batch.group_index[r]) for r in rows]
            assert groups == sorted(groups)  # a group's rows are contiguous
            prompts_once = {g: prompt_len[r] for g, r in zip(groups, rows, strict=True)}
            cost = sum(response_len[r] for r in rows) + sum(prompts_once.values())
            assert len(rows) == 1 or cost <= budget
    assert len(grouped_micro_batches(batch, torch.arange(6), 1000)) == 1


def test_tokens_computed_counts_each_prompt_once(tok):
    model = _model(tok, "llama")
    batch = batch_from_prompts(*_groups(model.config.vocab_size))
    shared, plain = ResponseForward(model, True), ResponseForward(model, False)
    assert shared.name == "shared_prefix" and plain.name == "hf" and plain.fallback_reason == "not asked for"
    all_rows = torch.arange(6)
    assert plain.tokens_computed(batch, all_rows) == 2 * 5 + 3 * 9 + 1 + 22
    assert shared.tokens_computed(batch, all_rows) == 5 + 9 + 1 + (22 - 6)
    assert shared.tokens_computed(batch, torch.tensor([2, 3])) == 9 + (7 - 1) + (2 - 1)


def test_models_it_does_not_cover_fall_back_to_their_own_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(NotImplementedError, match="gpt2"):
        SharedPrefixForward(model)
    forward = ResponseForward(model, True)
    assert forward.name == "hf" and "gpt2" in forward.fallback_reason


def test_a_model_with_attention_dropout_keeps_its_own_forward(tok):
    model = build_tiny_model(tok, "1m", arch="llama")
    model.config.attention_dropout = 0.1  # the HF forward drops attention weights in training; ours would not
    forward = ResponseForward(model, True)
    assert forward.name == "hf" and "attention_dropout" in forward.fallback_reason


def test_blocks_are_called_through_their_modules_and_the_model_stays_itself(tok):
    """The shared-prefix forward calls every decoder block through its module (so hooks on it, FSDP2's units, act);
    the model's own forward, its state dict, pickling and copies are unchanged, and a copy is dispatched again by
    the forward built on it."""
    import copy
    import pickle

    model = _model(tok, "llama")
    x = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    own_logits, keys = model(x).logits, list(model.state_dict())
    forward = SharedPrefixForward(model)
    calls = []
    handles = [layer.register_forward_pre_hook(lambda m, a, k: calls.append(m), with_kwargs=True)
               for layer in model.model.layers]  # fmt: skip
    prompts, row_prompt, responses, lengths = _groups(model.config.vocab_size)
    forward.response_logits(prompts, row_prompt, responses, lengths)
    assert calls == list(model.model.layers)  # each block once, in order, through its __call__
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(model(x).logits, own_logits, atol=0, rtol=0)
    assert list(model.state_dict()) == keys
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        torch.testing.assert_close(copied(x).logits, own_logits, atol=0, rtol=0)
        again = SharedPrefixForward(copied).response_logits(prompts, row_prompt, responses, lengths)
        torch.testing.assert_close(again, forward.response_logits(prompts, row_prompt, responses, lengths))
