"""Token log-probs and entropy from logits: hand values, chunking changes nothing, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from dapo.algo import entropy_from_logits, token_logprobs


def test_entropy_hand_computed():
    # uniform over 2 -> ln 2; p = [1/4, 3/4] -> −(¼ ln ¼ + ¾ ln ¾) = 0.562335
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(2.0), 0.562335]]))


def test_token_logprobs_hand_computed():
    # logits [0, ln 3]: log p = [ln ¼, ln ¾]; with τ = 2: z/τ = [0, ½ ln 3] -> p = [1/(1+√3), √3/(1+√3)]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    ids = torch.tensor([[0, 1]])
    torch.testing.assert_close(token_logprobs(logits, ids), torch.tensor([[math.log(0.25), math.log(0.75)]]))
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(
        token_logprobs(logits, ids, temperature=2.0),
        torch.tensor([[math.log(1 / (1 + s3)), math.log(s3 / (1 + s3))]]),
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_chunking_changes_nothing(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen)
    ids = torch.randint(0, 11, (3, 5), generator=gen)
    expected_lp = -F.cross_entropy(logits.reshape(-1, 11), ids.reshape(-1), reduction="none").reshape(3, 5)
    torch.testing.assert_close(token_logprobs(logits, ids, chunk_size=chunk_size), expected_lp)
    log_p = logits.log_softmax(-1)
    expected_h = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk_size), expected_h)


def test_gradients_through_chunks_match_finite_differences():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (2, 3), generator=gen)
    # the chunk functions compute in float32 by design (bf16 logits are upcast); check in float32 tolerance
    lp = token_logprobs(logits, ids, chunk_size=2)
    lp.sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    ref_logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-5)
    logits.grad = None
    entropy_from_logits(logits, chunk_size=4).sum().backward()
    ref_logits.grad = None
    log_p = ref_logits.log_softmax(-1)
    (-(log_p.exp() * log_p).sum()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-5)
