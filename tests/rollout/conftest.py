"""Shared tiny models for the rollout tests (built locally, no download)."""

import pytest
import torch

from dapo.models import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def sharp_model(tok):
    """A ~1M Llama whose next-token distributions are far from uniform: the final norm is scaled
    up, so top-k/top-p/temperature actually change what gets sampled."""
    model = build_tiny_model(tok, "1m", seed=0)
    with torch.no_grad():
        model.model.norm.weight.mul_(12.0)
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
