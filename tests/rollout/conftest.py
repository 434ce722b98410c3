"""Shared tiny models for the rollout tests (built locally, no download)."""

import pytest
import torch

from dapo.models import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def sharp_model(tok):
    """A ~1M Llama with an untied, larger random output head: next-token distributions far from
    uniform (top token ~0.1-0.5), so top-k/top-p/temperature change what is sampled, and greedy
    continuations that vary (a tied random head mostly repeats the last token)."""
    model = build_tiny_model(tok, "1m", seed=0)
    model.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g) * 0.12)
    return model


@pytest.fixture(scope="session")
def prompts(tok):
    """Three prompts of different lengths (left padding and mixed lengths are exercised)."""
    return [tok(t)["input_ids"] for t in ("12+30=", "what is 7*6?", "a")]


@pytest.fixture(scope="session")
def forward_logprobs():
    return _forward_logprobs


def _forward_logprobs(model, prompt, response):
    """log π(response_t | prompt, response_<t) from one plain forward over the unpadded sequence."""
    seq = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(seq).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    Tp = len(prompt)
    return lp[Tp - 1 : Tp - 1 + len(response)].gather(-1, torch.tensor(response)[:, None]).squeeze(-1), logits
