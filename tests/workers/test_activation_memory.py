"""What an update's forward keeps for its backward: activation checkpointing (the same gradients, and the bytes
cut by the factor the planner predicts) and the chunked log-prob head (no [tokens, vocab] tensor kept), measured
from the profiler's allocation events (`dapo.metrics.measure_activation_memory`) and pinned to the plan."""

from __future__ import annotations

import copy

import pytest
import torch

from dapo.metrics import measure_activation_memory
from dapo.models import build_char_tokenizer
from dapo.models.tiny import build_tiny_model
from dapo.plan import activation_bytes, head_bytes
from dapo.workers.base import CriticSettings, OptimParams
from dapo.workers.batch import batch_from_prompts
from dapo.workers.critic import CriticWorker
from dapo.workers.forward import ResponseForward

OPTIM = OptimParams(1e-3, (0.9, 0.999), 0.0, 1e9, 0, "constant", 10, 0.0)


def _batch(vocab: int, groups: int = 4, group_size: int = 8, prompt: int = 40, response: int = 60, seed: int = 0):
    """Rows of different lengths (a response of 1 token among them), prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (prompt - 3 * i,), generator=g) for i in range(groups)]
    rows = groups * group_size
    lengths = torch.randint(response // 2, response + 1, (rows,), generator=g)
    lengths[1] = 1
    responses = torch.randint(5, vocab, (rows, response), generator=g)
    return batch_from_prompts(prompts, torch.arange(groups).repeat_interleave(group_size), responses, lengths)


def _gradients(model, batch, share: bool, checkpoint: bool) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).train()
    forward = ResponseForward(model, share, temperature=0.7, checkpoint_blocks=checkpoint)
    assert (forward.shared is not None) == share
    logprobs, entropy = forward.logprobs(batch)
    weights = torch.randn(entropy.shape, generator=torch.Generator().manual_seed(1), dtype=entropy.dtype)
    mask = batch.response_mask
    # a log-prob loss, as the update's, and an entropy term
    ((logprobs * mask).sum() + (entropy * weights * mask).sum()).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
def test_checkpointing_changes_no_gradient(share):
    model = build_tiny_model(build_char_tokenizer(), "1m").double()
    batch = _batch(model.config.vocab_size)
    plain, recomputed = (_gradients(model, batch, share, checkpoint) for checkpoint in (False, True))
    assert plain.keys() == recomputed.keys() and len(plain) == len(list(model.parameters()))
    worst = max(float((plain[k] - recomputed[k]).abs().max()) for k in plain)
    assert worst <= 1e-10, worst


def test_checkpointing_composes_with_lora():
    pytest.importorskip("peft")
    from dapo.models.lora import apply_lora

    model = apply_lora(build_tiny_model(build_char_tokenizer(), "1m").double(), 4, 8.0, 0.0, ["q_proj", "down_proj"])
    for p in model.parameters():  # B != 0, so that the adapters change the logits and get a gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    batch = _batch(model.config.vocab_size)
    plain, recomputed = (_gradients(model, batch, True, checkpoint) for checkpoint in (False, True))
    assert len(plain) == 2 * 2 * 4  # A and B of two projections in 4 layers: only the adapters train
    assert max(float((plain[k] - recomputed[k]).abs().max()) for k in plain) <= 1e-10


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
def test_the_critic_follows_it_with_the_same_values_and_gradients(share):
    model = build_tiny_model(build_char_tokenizer(), "1m").double()
    batch = _batch(model.config.vocab_size)
    grads = []
    for checkpoint in (False, True):
        settings = CriticSettings(OPTIM, 10_000, share_prompt_forward=share, activation_checkpointing=checkpoint)
        critic = CriticWorker(model, settings)
        torch.manual_seed(0)  # the head starts at 0: no gradient would reach the body
        torch.nn.init.normal_(critic.model.head.weight, std=0.1)
        critic.model.train()
        critic.trainable(batch).sum().backward()
        grads.append({k: p.grad for k, p in critic.model.named_parameters()})
    assert max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0]) <= 1e-10


def _shared_tokens(batch) -> int:
    """Tokens the shared-prefix forward computes: each prompt once, every response but its last token."""
    fed = batch.attention_mask[:, batch.prompt_width :].sum(dim=1).clamp(min=1) - 1
    groups = int(batch.group_index.max()) + 1
    prompt_tokens = int(batch.attention_mask[:: batch.num_rows // groups, : batch.prompt_width].sum())
    return prompt_tokens + int(fed.sum())


def _update_loss(forward: ResponseForward, batch):
    def run():
        logprobs, _entropy = forward.logprobs(batch)  # the entropy too, as the update computes it
        return (logprobs * batch.response_mask).sum()

    return run


@pytest.mark.parametrize("size", ["1m", "5m", "20m"])
def test_what_the_forward_keeps_is_cut_by_the_planned_factor_and_the_plan_is_within_25_percent(size):
    """The shared-prefix forward and the log-prob head of an update's micro-batch, float32: measured kept bytes
    and peak against `plan.activation_bytes` + `plan.head_bytes`, with and without checkpointing."""
    model = build_tiny_model(build_char_tokenizer(), size).train()
    c = model.config
    batch = _batch(c.vocab_size, response=80)
    tokens = _shared_tokens(batch)
    measured, planned = {}, {}
    for checkpoint in (False, True):
        forward = ResponseForward(model, True, checkpoint_blocks=checkpoint)
        measured[checkpoint] = measure_activation_memory(model.parameters(), _update_loss(forward, batch))
        body = activation_bytes(tokens, c.num_hidden_layers, c.hidden_size, c.intermediate_size, 4, checkpoint)
        head = head_bytes(batch.response_mask.numel(), c.vocab_size, c.hidden_size)
        planned[checkpoint] = (body[0] + head[0], sum(body) + sum(head))
    for checkpoint in (False, True):
        (kept, peak), (plan_kept, plan_peak) = measured[checkpoint], planned[checkpoint]
        assert abs(kept / plan_kept - 1) < 0.25, (checkpoint, kept, plan_kept)
        assert abs(peak / plan_peak - 1) < 0.25, (checkpoint, peak, plan_peak)
    factor, planned_factor = measured[False][0] / measured[True][0], planned[False][0] / planned[True][0]
    assert factor > 4 and abs(factor / planned_factor - 1) < 0.25, (factor, planned_factor)


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
def test_the_log_prob_head_keeps_no_tokens_by_vocab_tensor(share):
    """A 16k vocabulary: the float32 [tokens, vocab] logits would be 32 x 60 x 16,384 x 4 = 126 MB; what the whole
    forward keeps, checkpointed, is the blocks' inputs and the head's hidden states, as planned."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16_384, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).train()
    batch = _batch(config.vocab_size, response=60)
    forward = ResponseForward(model, share, checkpoint_blocks=True)
    kept, _ = measure_activation_memory(model.parameters(), _update_loss(forward, batch))
    rows_by_vocab = batch.response_mask.numel() * config.vocab_size * 4
    tokens = _shared_tokens(batch) if share else int(batch.attention_mask.sum())
    body = activation_bytes(tokens, 2, 128, 512, 4, checkpointing=True)
    plan_kept = body[0] + head_bytes(batch.response_mask.numel(), config.vocab_size, 128)[0]
    assert kept < rows_by_vocab / 10, (kept, rows_by_vocab)
    if share:  # the plan counts the shared-prefix forward's tokens; the model's own runs on padded rows
        assert abs(kept / plan_kept - 1) < 0.25, (kept, plan_kept)
