"""Token log-probs and entropy from logits: hand values, chunking changes nothing, gradients, numerics at the edges."""

import math

import pytest
import torch
import torch.nn.functional as F

from dapo.algo import entropy_from_logits, head_token_logprobs, token_logprobs


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
    # float64 logits are computed in float64 (bf16/fp16/fp32 in float32), so the match is to float64 rounding
    lp = token_logprobs(logits, ids, chunk_size=2)
    lp.sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    ref_logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    logits.grad = None
    entropy_from_logits(logits, chunk_size=4).sum().backward()
    ref_logits.grad = None
    log_p = ref_logits.log_softmax(-1)
    (-(log_p.exp() * log_p).sum()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


# ---------------------------------------------------------------- numerics at the edges


def _entropy_float64(logits):
    """Reference: the entropy of the given (float32) logits, computed in float64."""
    log_p = logits.double().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def test_entropy_of_two_large_logits():
    # z = [273.514168780521, 273.6313389402744] (float32): only Δ = 0.117170 matters,
    # p = [1/(1+e^Δ), e^Δ/(1+e^Δ)] = [0.470741, 0.529259], H = −Σ p ln p = 0.691434.
    # The unshifted logsumexp(z) − Σ p z gave 0.689240 (each term is ≈ 274, their rounding does not cancel).
    logits = torch.tensor([[[273.514168780521, 273.6313389402744]]])
    assert entropy_from_logits(logits).item() == pytest.approx(_entropy_float64(logits).item(), abs=1e-6)
    assert entropy_from_logits(logits).item() == pytest.approx(0.691434, abs=1e-6)


@pytest.mark.parametrize("offset", [0.0, 300.0])
@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1000.0])
def test_float32_entropy_matches_float64_and_is_nonnegative(scale, offset):
    # 32k vocabulary; at scale ≥ 100 the distributions are peaked (H ≈ 0), where the old form went negative.
    gen = torch.Generator().manual_seed(int(scale))
    logits = (torch.randn(1, 16, 32_000, generator=gen, dtype=torch.float64) * scale + offset).float()
    entropy = entropy_from_logits(logits)
    assert entropy.dtype == torch.float32 and (entropy >= 0).all()
    # measured worst error 1e-6 (scale 1, H ≈ 10) down to 5e-8 (scale 1000); the old form: 2e-6 … 1.0
    torch.testing.assert_close(entropy.double(), _entropy_float64(logits), atol=3e-6, rtol=0)


@pytest.mark.parametrize("gap", [20.0, 50.0, 100.0, 200.0, 1e3, 1e4])
def test_entropy_of_nearly_one_hot_distributions_is_accurate_and_nonnegative(gap):
    # One logit `gap` above K = 49151 others: r = K e^{−g} = Σ_{v≠max} e^{s_v}, S = 1 + r,
    #   H = log(1+r)/(1+r) + K e^{−g}/(1+r) · (g + log(1+r)) = log1p(r) + g·r/(1+r)
    # g = 20: r = 49151 · 2.0612e-9 = 1.01308e-4 -> H = 1.01303e-4 + 20 · 1.01298e-4 = 2.12726e-3.
    # (float64 log_softmax is not a reference here: it rounds log(1 + r) to 0 once r < 1e-16.)
    # From g ≈ 87 on, e^{−g} is subnormal in float32 (relative precision is lost, hence abs=1e-36), from
    # g ≈ 104 on it is 0 and H comes out exactly 0 (the truth is < 1e-40).
    num_others = 49_151
    logits = torch.zeros(1, 1, num_others + 1)
    logits[..., 7] = gap
    entropy = entropy_from_logits(logits).item()
    r = num_others * math.exp(-gap)
    expected = math.log1p(r) + gap * r / (1.0 + r)
    assert entropy >= 0.0
    assert entropy == pytest.approx(expected, rel=1e-5, abs=1e-36)


@pytest.mark.parametrize("shift", [-4096.0, 1024.0, 8192.0])
def test_adding_a_constant_to_every_logit_changes_nothing(shift):
    # Logits on a 2⁻¹⁰ grid with |z| < 2⁹, shifts that are multiples of 2⁻¹⁰ below 2¹³: z + c is exact in
    # float32, so the shifted logits s = z − max z are bit-identical and so must be every output.
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 1000, generator=gen) * 40).clamp(-500, 500).mul(1024).round().div(1024)
    ids = torch.randint(0, 1000, (2, 5), generator=gen)
    assert torch.equal(logits + shift - shift, logits)  # the shift is exact
    assert torch.equal(entropy_from_logits(logits + shift), entropy_from_logits(logits))
    assert torch.equal(token_logprobs(logits + shift, ids), token_logprobs(logits, ids))


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1000.0])
def test_float32_logprobs_match_float64(scale):
    # Both the sampled-at-random tokens (log p ≈ −scale·4, where float32 itself has spacing ∝ |log p|) and the
    # most likely ones (log p ≈ 0, where the old z_o − logsumexp(z) lost |z|·2⁻²⁴ ≈ 2e-5 at |z| ≈ 300).
    gen = torch.Generator().manual_seed(int(scale))
    logits = (torch.randn(1, 16, 32_000, generator=gen, dtype=torch.float64) * scale + 300.0).float()
    reference = logits.double().log_softmax(-1)
    for ids in (torch.randint(0, 32_000, (1, 16), generator=gen), logits.argmax(-1)):
        expected = reference.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        error = (token_logprobs(logits, ids).double() - expected).abs()
        assert (error <= 1e-6 * (1.0 + expected.abs())).all(), error.max()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_hand_written_backward_passes_gradcheck(temperature):
    # float64 logits are computed in float64, so the analytic backward can be checked by finite differences.
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(3, 4, 9, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    ids = torch.randint(0, 9, (3, 4), generator=gen)
    assert torch.autograd.gradcheck(lambda z: token_logprobs(z, ids, temperature, chunk_size=5), (logits,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, temperature, chunk_size=5), (logits,))


def test_float32_gradients_at_large_logit_scale_match_float64():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(1, 8, 5000, generator=gen, dtype=torch.float64) * 30 + 300).float().requires_grad_()
    ids = logits.detach().argmax(-1)
    reference = logits.detach().double().requires_grad_()
    log_p = reference.log_softmax(-1)
    (log_p.gather(-1, ids.unsqueeze(-1)).sum() - (log_p.exp() * log_p).sum()).backward()
    (token_logprobs(logits, ids).sum() + entropy_from_logits(logits).sum()).backward()
    torch.testing.assert_close(logits.grad.double(), reference.grad, atol=1e-6, rtol=0)


def test_temperature_is_the_same_as_dividing_the_logits():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 50, generator=gen) * 5
    ids = torch.randint(0, 50, (2, 3), generator=gen)
    torch.testing.assert_close(entropy_from_logits(logits, temperature=0.7), entropy_from_logits(logits / 0.7))
    torch.testing.assert_close(token_logprobs(logits, ids, temperature=0.7), token_logprobs(logits / 0.7, ids))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            entropy_from_logits(logits, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            token_logprobs(logits, ids, temperature=bad)


def test_minus_inf_logits_are_excluded_tokens():
    # [0, −inf, ln 3]: the −inf token has p = 0 and contributes 0·log 0 = 0; the rest is p = [¼, ¾]:
    # H = 0.562335 as in the hand-computed test, log p = [ln ¼, −inf, ln ¾], and no gradient reaches it.
    logits = torch.tensor([[[0.0, float("-inf"), math.log(3.0)]]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    logprobs = token_logprobs(logits.expand(3, 1, 3), torch.tensor([[0], [1], [2]]))
    torch.testing.assert_close(entropy, torch.tensor([[0.562335]]))
    assert logprobs[1].item() == float("-inf")
    torch.testing.assert_close(logprobs[[0, 2]].squeeze(), torch.tensor([math.log(0.25), math.log(0.75)]))
    (entropy.sum() + logprobs[[0, 2]].sum()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0, 1].item() == 0.0


def test_bf16_logits_are_upcast_and_get_bf16_gradients():
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 3, 64, generator=gen) * 4).bfloat16().requires_grad_()
    ids = torch.randint(0, 64, (2, 3), generator=gen)
    entropy, logprobs = entropy_from_logits(logits), token_logprobs(logits, ids)
    assert entropy.dtype == logprobs.dtype == torch.float32
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach().float()))
    (entropy.sum() + logprobs.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16


def test_no_positions_give_empty_outputs():
    logits = torch.randn(2, 0, 7, requires_grad=True)
    entropy = entropy_from_logits(logits)
    logprobs = token_logprobs(logits, torch.zeros(2, 0, dtype=torch.long))
    assert entropy.shape == logprobs.shape == (2, 0)
    (entropy.sum() + logprobs.sum()).backward()
    assert logits.grad.shape == (2, 0, 7)


@pytest.mark.parametrize("fn", ["entropy", "logprobs"])
def test_backward_keeps_no_copy_of_the_logits(fn):
    # Memory: autograd holds only the input chunks (views of the logits) and per-position scalars, never a
    # (positions, V) float32 buffer of its own; the backward recomputes what it needs.
    logits = torch.randn(2, 6, 300, requires_grad=True)
    ids = torch.randint(0, 300, (2, 6))
    full_size = []

    def pack(t):
        if t.dim() == 2 and t.shape[-1] == 300:
            full_size.append(t.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = entropy_from_logits(logits, chunk_size=4) if fn == "entropy" else token_logprobs(logits, ids, 1.0, 4)
    assert full_size and all(full_size)  # three chunks, each saved as a view of the logits' own storage
    out.sum().backward()


# ---------------------------------------------------------------- the head, chunk by chunk


def _head_case(seed: int = 0, n: int = 37, d: int = 8, v: int = 50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(v, d, generator=g, dtype=torch.float64) * 3).requires_grad_()
    bias = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True)
    return hidden, weight, bias, torch.randint(0, v, (n,), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 10, 1024])
def test_the_head_gives_the_logits_functions_values_and_gradients(temperature, chunk_size):
    """head_token_logprobs(h, W, b) = token_logprobs / entropy_from_logits of z = h·Wᵀ + b, values and the
    gradients of any combination of both (float64, to 1e-12), however the rows are chunked."""
    hidden, weight, bias, ids = _head_case()
    g = torch.Generator().manual_seed(1)
    w_lp, w_h = torch.randn(len(ids), generator=g, dtype=torch.float64), torch.randn(len(ids), generator=g).double()
    logprobs, entropy = head_token_logprobs(hidden, weight, bias, ids, temperature, chunk_size, with_entropy=True)
    z = torch.nn.functional.linear(hidden, weight, bias)[None]
    want_lp, want_h = token_logprobs(z, ids[None], temperature)[0], entropy_from_logits(z, temperature)[0]
    torch.testing.assert_close(logprobs, want_lp, atol=1e-12, rtol=0)
    torch.testing.assert_close(entropy, want_h, atol=1e-12, rtol=0)
    got = torch.autograd.grad((logprobs * w_lp + entropy * w_h).sum(), (hidden, weight, bias))
    want = torch.autograd.grad((want_lp * w_lp + want_h * w_h).sum(), (hidden, weight, bias))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_the_head_passes_gradcheck_with_and_without_bias_and_entropy():
    hidden, weight, bias, ids = _head_case(n=9, v=11)
    assert torch.autograd.gradcheck(
        lambda h, w, b: head_token_logprobs(h, w, b, ids, 0.6, 4, True), (hidden, weight, bias)
    )
    assert torch.autograd.gradcheck(lambda h, w: head_token_logprobs(h, w, None, ids, 1.0, 4)[0], (hidden, weight))
    assert head_token_logprobs(hidden, weight, None, ids)[1] is None


def test_the_head_keeps_the_shape_of_its_tokens_and_takes_bf16_autocast():
    hidden, weight, bias, ids = _head_case(n=12)
    logprobs, entropy = head_token_logprobs(
        hidden.reshape(3, 4, -1), weight, bias, ids.reshape(3, 4), with_entropy=True
    )
    assert logprobs.shape == entropy.shape == (3, 4)
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = head_token_logprobs(h32, w32, None, ids)
    assert low.dtype == torch.float32  # bf16 matmul, float32 log-softmax
    torch.testing.assert_close(low.double(), head_token_logprobs(hidden, weight, None, ids)[0], atol=0.1, rtol=0)
    low.sum().backward()
    assert h32.grad.dtype == w32.grad.dtype == torch.float32 and torch.isfinite(w32.grad).all()
