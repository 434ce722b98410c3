"""The training path on a CUDA device against the same computation on the CPU (`scripts/gpu_check.sh` runs these
on a machine with a GPU; no CPU lane does). DAPO_TEST_DEVICE=cpu runs them against the CPU itself, which checks
the code of the tests and of the device moves, not the GPU."""

import copy
import math
import os

import pytest
import torch

from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.workers.base import OptimParams, PolicyLossParams, PolicySettings
from dapo.workers.policy import PolicyWorker

DEVICE = os.environ.get("DAPO_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
]
OPTIM = OptimParams(1e-3, (0.9, 0.999), 0.0, 1.0, 0, "constant", 10, 0.0, eps=1e-4)
LOSS = PolicyLossParams(0.2, 0.28, 3.0, 20.0, "token-mean", 7.0, 0.01, "k3", 0.001)


def _batch(vocab: int):
    """Three groups of four responses of uneven lengths, with π_old, π_ref and advantages."""
    from dapo.workers.batch import batch_from_prompts

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in (7, 4, 11)]
    row_prompt = torch.arange(3).repeat_interleave(4)
    lengths = torch.randint(3, 16, (12,), generator=g)
    batch = batch_from_prompts(prompts, row_prompt, torch.randint(3, vocab, (12, 16), generator=g), lengths)
    shape = batch.response_mask.shape
    return batch.replace(
        old_logprobs=torch.randn(shape, generator=g) * 0.1 - 2.0,
        ref_logprobs=torch.randn(shape, generator=g) * 0.1 - 2.0,
        advantages=torch.randn(shape, generator=g),
    )


def _workers(precision: str = "fp32", share: bool = True):
    model = build_tiny_model(build_char_tokenizer(), "5m", seed=0)
    settings = PolicySettings(OPTIM, micro_batch_max_tokens=64, with_reference=True, share_prompt_forward=share,
                              precision=precision)  # fmt: skip
    return PolicyWorker(copy.deepcopy(model), settings), PolicyWorker(copy.deepcopy(model).to(DEVICE), settings)


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "hf-forward"])
def test_logprobs_and_an_update_on_the_device_equal_the_cpu(share):
    """Log-probs (policy and reference), one update of two mini-batches with KL and entropy terms, and the weights
    after it: the device's equal the CPU's to float rounding (float32)."""
    cpu, device = _workers(share=share)
    batch = _batch(cpu.model.config.vocab_size)
    for reference in (False, True):
        torch.testing.assert_close(
            device.compute_logprobs(batch, reference=reference), cpu.compute_logprobs(batch, reference=reference),
            atol=1e-4, rtol=0,
        )  # fmt: skip
    expected, got = cpu.update(batch, LOSS, 2, 1, None), device.update(batch, LOSS, 2, 1, None)
    assert got.tokens_computed == expected.tokens_computed
    for name, value in expected.metrics.items():
        assert got.metrics[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name
    weights = device.full_weights()
    for name, value in cpu.full_weights().items():
        torch.testing.assert_close(weights[name].cpu(), value, atol=1e-4, rtol=0)


def test_bf16_mixed_on_the_device_stays_near_float32():
    """bf16-mixed (autocast) on the device: log-probs within bf16 rounding of the CPU's float32, float32 out."""
    cpu, _ = _workers()
    _, device = _workers(precision="bf16-mixed")
    batch = _batch(cpu.model.config.vocab_size)
    got = device.compute_logprobs(batch)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, cpu.compute_logprobs(batch), atol=0.1, rtol=0)
    update = device.update(batch, LOSS, 2, 1, None)
    assert all(torch.isfinite(torch.tensor(v)) for v in update.metrics.values())


def test_the_ranks_process_group_takes_cpu_and_device_tensors(tmp_path):
    """The training ranks' group (`process_group_backend`: NCCL and gloo on a GPU) runs both the collectives on
    CPU tensors (metric sums and maxima, micro-batch counts: an NCCL-only group refuses them) and an FSDP2 update
    on the device, here in a group of one process."""
    import torch.distributed as dist

    from dapo.workers.parallel import TorchDistributed
    from dapo.workers.ray_group import process_group_backend

    backend = process_group_backend(DEVICE == "cuda")
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dp = TorchDistributed("fsdp2", device=DEVICE)
        assert dp.sum([1.0, 2.5]) == [1.0, 2.5] and dp.max([3.0]) == [3.0]
        assert len(dp.pad([torch.arange(2)], filler=torch.arange(1))) == 1
        model = build_tiny_model(build_char_tokenizer(), "1m", seed=0).to(DEVICE)
        settings = PolicySettings(OPTIM, micro_batch_max_tokens=64, share_prompt_forward=True)
        worker = PolicyWorker(model, settings, parallel=dp)
        batch = _batch(model.config.vocab_size)
        update = worker.update(batch, LOSS, 3, 1, None)
        assert update.tokens_computed > 0 and all(map(math.isfinite, update.metrics.values()))
    finally:
        dist.destroy_process_group()
