"""LoRA through PEFT on the tiny model: only the adapters train, the engine decodes the merged weights after
every update, a checkpoint holds the adapter and resumes exactly, and both exports load back."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("peft")

from dapo import algo
from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.models.lora import adapter_state_dict, apply_lora, merged_model, merged_state_dict, save_lora
from dapo.rollout import SamplingParams, build_engine
from dapo.workers.base import OptimParams, PolicyLossParams, PolicySettings
from dapo.workers.batch import TrainBatch
from dapo.workers.policy import PolicyWorker

TARGETS = ("q_proj", "v_proj", "up_proj")
LOSS = PolicyLossParams(0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0)
OPTIM = OptimParams(1e-2, (0.9, 0.999), 0.0, 1e9, 0, "constant", 10, 0.0)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _lora_worker(tok, rank=4):
    model = apply_lora(build_tiny_model(tok, "1m", seed=0), rank, 8.0, 0.0, TARGETS)
    return model, PolicyWorker(model, PolicySettings(OPTIM, micro_batch_max_tokens=10_000))


def _batch(tok, seed=0) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    rows, tp, t = 8, 4, 6
    ids = torch.randint(3, len(tok), (rows, tp + t), generator=gen)
    ids[:, :tp] = ids[::4, :tp].repeat_interleave(4, dim=0)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    mask = torch.ones(rows, t)
    adv = algo.broadcast_to_tokens(algo.grpo_advantages(rewards).reshape(-1), mask)
    return TrainBatch(
        input_ids=ids, attention_mask=torch.ones(rows, tp + t, dtype=torch.bool), response_mask=mask,
        prompt_width=tp, group_index=torch.arange(2).repeat_interleave(4), advantages=adv,
    )  # fmt: skip


def test_only_the_adapters_train_through_the_shared_prefix_forward(tok):
    model, worker = _lora_worker(tok)
    assert worker.forward.name == "shared_prefix"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worker.update(_batch(tok), LOSS, 2, 1, None)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_B." in k or ".lora_A." in k for k in changed)
    assert any(".lora_B." in k for k in changed)  # B leaves 0: the adapters now change the model
    with pytest.raises(ValueError, match=r"match no linear layer"):
        apply_lora(build_tiny_model(tok, "1m"), 4, 8.0, 0.0, ["qkv"])


@pytest.mark.parametrize("targets", [TARGETS, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")])
def test_the_shared_prefix_forward_gives_peft_s_logits_and_adapter_gradients(tok, targets):
    from dapo.models.shared_prefix import SharedPrefixForward

    # float64 and B != 0 (at initialisation B = 0 and the adapters would change nothing): the low-rank update
    # [s·B_i A_i x] of a group with and without adapted members (q, k, v; gate, up) is PEFT's own.
    model = apply_lora(build_tiny_model(tok, "1m", seed=0), 4, 8.0, 0.0, targets).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    prompts = [torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10])]
    row_prompt, lengths = torch.tensor([0, 0, 1]), torch.tensor([3, 1, 4])
    responses = torch.randint(3, len(tok), (3, 5), generator=g)
    real = torch.arange(5)[None, :] < lengths[:, None]
    ids = [torch.cat([prompts[p], responses[r, : lengths[r]]]) for r, p in enumerate(row_prompt.tolist())]
    got = SharedPrefixForward(model).response_logits(prompts, row_prompt, responses, lengths)
    grads = []
    for which in ("peft", "shared"):
        model.zero_grad()
        if which == "peft":  # row by row, unpadded: PEFT's own forward
            rows = [
                model(input_ids=x[None]).logits[0, len(prompts[p]) - 1 : -1]
                for x, p in zip(ids, row_prompt.tolist(), strict=True)
            ]
            logits = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        else:
            logits = SharedPrefixForward(model).response_logits(prompts, row_prompt, responses, lengths)[:, :4]
        (torch.log_softmax(logits, -1)[real[:, :4]] * torch.arange(len(tok), dtype=torch.float64)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        if which == "peft":
            want = logits
    torch.testing.assert_close(got[:, :4][real[:, :4]], want[real[:, :4]], atol=1e-10, rtol=1e-10)
    assert grads[0].keys() == grads[1].keys() and all(".lora_" in n for n in grads[0])
    for name, reference in grads[0].items():  # RMSNorm keeps float32 statistics in both: ~1e-7 relative
        scale = float(reference.abs().max()) + 1e-8
        torch.testing.assert_close(grads[1][name] / scale, reference / scale, atol=1e-6, rtol=0, msg=name)


def test_lora_dropout_keeps_the_model_s_own_forward(tok):
    from dapo.workers.forward import ResponseForward

    model = apply_lora(build_tiny_model(tok, "1m", seed=0), 4, 8.0, 0.1, TARGETS)
    forward = ResponseForward(model, True)
    assert forward.name == "hf" and "dropout" in forward.fallback_reason


def test_the_engine_decodes_the_merged_weights_after_each_update(tok):
    model, worker = _lora_worker(tok)
    engine = build_engine("builtin", merged_model(model), tok)
    worker.update(_batch(tok), LOSS, 2, 1, None)
    worker.push_weights(engine)
    reference = merged_model(model)  # PEFT's own merge, on a copy
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(engine.model.state_dict()[key], value, atol=1e-6, rtol=1e-6)
    prompts = [[5, 6, 7], [8, 9]]
    sampling = SamplingParams(max_new_tokens=8)
    got = engine.generate(prompts, 3, sampling, seed=1)
    expected = build_engine("builtin", reference, tok).generate(prompts, 3, sampling, seed=1)
    assert torch.equal(got.response_ids, expected.response_ids)
    assert merged_state_dict(model).keys() == build_tiny_model(tok, "1m").state_dict().keys()


def test_a_checkpoint_holds_the_adapter_and_resumes_exactly(tok):
    model, worker = _lora_worker(tok)
    worker.update(_batch(tok, 0), LOSS, 2, 1, None)
    state = copy.deepcopy(worker.state_dict())
    assert state["model"] and all(".lora_" in k for k in state["model"])
    worker.update(_batch(tok, 1), LOSS, 2, 1, None)
    fresh_model, fresh = _lora_worker(tok)  # the same base from "model.path", fresh adapters
    fresh.load_state_dict(state)
    fresh.update(_batch(tok, 1), LOSS, 2, 1, None)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="no LoRA adapter weights"):
        fresh.load_weights(build_tiny_model(tok, "1m").state_dict())


@pytest.mark.parametrize("export", ["merged", "adapter"])
def test_both_exports_load_back_with_the_trained_logits(tok, tmp_path, export):
    from transformers import AutoModelForCausalLM

    model, worker = _lora_worker(tok)
    worker.update(_batch(tok), LOSS, 2, 1, None)
    path = save_lora(model, tok, tmp_path / export, export)
    if export == "merged":
        loaded = AutoModelForCausalLM.from_pretrained(path)
    else:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(build_tiny_model(tok, "1m", seed=0), path)
        assert adapter_state_dict(loaded.state_dict()).keys() == adapter_state_dict(model.state_dict()).keys()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
