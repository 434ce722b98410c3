"""Weight sync in buckets: bounded buckets, every tensor once and in order, lazily produced, and engines that load
a push bucket by bucket exactly as they load a whole state dict, and refuse a push that is not whole."""

import copy
import re

import pytest
import torch

from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.rollout import build_engine
from dapo.rollout.weight_sync import SyncMeter, bucketed, decoder_layer, named_weights, packed, tensor_bytes


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _tensors(*numels: int) -> list[tuple[str, torch.Tensor]]:
    return [(f"t{i}", torch.full((n,), float(i))) for i, n in enumerate(numels)]


def test_buckets_are_bounded_and_hold_every_tensor_once_in_order():
    named = _tensors(10, 20, 5, 30, 1, 1, 64)  # float32: 40, 80, 20, 120, 4, 4, 256 bytes
    meter = SyncMeter()
    buckets = list(bucketed(named, 128, meter))
    # 40+80 fit; +20 would be 140 > 128; 20 alone then +120 = 140 > 128; 120+4+4 = 128 fits; 256 alone (> 128).
    assert [[name for name, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3", "t4", "t5"], ["t6"]]
    assert [name for b in buckets for name, _ in b] == [name for name, _ in named]
    assert all(sum(tensor_bytes(t) for _, t in b) <= 128 for b in buckets if len(b) > 1)
    assert meter.buckets == 4 and meter.tensors == 7 and meter.sent_bytes == 4 * (10 + 20 + 5 + 30 + 1 + 1 + 64)
    assert meter.largest_tensor_bytes == 256
    # What was held at once stayed below a bucket plus the tensor that did not fit in it.
    assert 256 <= meter.peak_bytes < 128 + meter.largest_tensor_bytes


def test_tensors_are_produced_only_when_their_bucket_fills():
    produced = []

    def lazily():
        for name, tensor in _tensors(8, 8, 8, 8):  # 32 bytes each, two to a 64-byte bucket
            produced.append(name)
            yield name, tensor

    stream = bucketed(lazily(), 64)
    first = next(stream)
    assert [name for name, _ in first] == ["t0", "t1"]
    assert produced == ["t0", "t1"]  # a full bucket goes before the next tensor is made
    assert [name for name, _ in next(stream)] == ["t2", "t3"]


def test_a_decoder_layer_never_straddles_two_buckets(tok):
    """What vLLM needs when its workers are other processes: each reload call must complete the layers it
    touches (a layer's q/k/v or gate/up loaded in two calls would be processed half-loaded)."""
    named = list(named_weights(build_tiny_model(tok, "1m", seed=0)))
    layer_bytes = sum(tensor_bytes(t) for n, t in named if decoder_layer(n) == "model.layers.0")
    meter = SyncMeter()
    buckets = list(bucketed(named, layer_bytes // 3, meter, unit_of=decoder_layer))
    where = {}
    for index, bucket in enumerate(buckets):
        for name, _ in bucket:
            where.setdefault(decoder_layer(name), set()).add(index)
    assert all(len(indices) == 1 for indices in where.values())
    assert [name for b in buckets for name, _ in b] == [name for name, _ in named]
    assert meter.peak_bytes < layer_bytes // 3 + layer_bytes + meter.largest_tensor_bytes
    assert decoder_layer("model.layers.12.self_attn.q_proj.weight") == "model.layers.12"
    assert decoder_layer("model.norm.weight") == "model.norm.weight"


def test_packed_buckets_hold_the_tensors_bit_for_bit_in_one_byte_array_each():
    """Mixed dtypes and shapes (a scalar, bf16, int64): the views read back equal the tensors sent; each bucket is
    one array of at most the bucket size, a tensor as large as a bucket travels alone in its own bytes, and what was
    held at once is one bucket's array plus one tensor. It pickles as the array (what Ray stores)."""
    import pickle

    g = torch.Generator().manual_seed(0)
    named = [
        ("a", torch.randn(3, 5, generator=g)),
        ("b", torch.randn(7, generator=g).to(torch.bfloat16)),
        ("scalar", torch.tensor(2.5)),
        ("ids", torch.arange(9)),
        ("big", torch.randn(40, 10, generator=g)),  # 1,600 bytes: more than a bucket
        ("c", torch.randn(2, 2, generator=g).t()),  # not contiguous
    ]
    meter = SyncMeter()
    buckets = list(packed(iter(named), 256, meter))
    got = [(name, t.clone()) for b in pickle.loads(pickle.dumps(buckets)) for name, t in b]
    assert [n for n, _ in got] == [n for n, _ in named]
    for (name, want), (_, have) in zip(named, got, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape and torch.equal(have, want), name
    assert [[n for n, _ in b] for b in buckets] == [["a", "b", "scalar"], ["ids"], ["big"], ["c"]]
    assert all(b.data.nbytes <= 256 for b in buckets if len(b) > 1) and buckets[2].data.nbytes == 1600
    assert meter.peak_bytes <= 256 + meter.largest_tensor_bytes and meter.largest_tensor_bytes == 1600


def test_a_bucket_size_below_one_byte_is_refused():
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(bucketed(_tensors(1), 0))
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(packed(_tensors(1), 0))


def _trained(model, scale: float):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(scale).add_(0.01)
    return other


def test_the_builtin_engine_loads_a_push_in_small_buckets_as_it_loads_a_state_dict(tok):
    model = build_tiny_model(tok, "1m", seed=0)
    trained = _trained(model, 1.5)
    whole = build_engine("builtin", copy.deepcopy(model), tok)
    streamed = build_engine("builtin", copy.deepcopy(model), tok)
    whole.update_weights(trained.state_dict())
    meter = SyncMeter()
    streamed.update_weights(bucketed(named_weights(trained), 64 << 10, meter))  # 64 KB buckets: many
    assert meter.buckets > 5
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), streamed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert all(
        torch.equal(a, b)
        for a, b in zip(streamed.model.state_dict().values(), trained.state_dict().values(), strict=True)
    )


def test_the_builtin_engine_casts_a_push_to_its_own_dtype(tok):
    model = build_tiny_model(tok, "1m", seed=0)
    trained = _trained(model, 1.5)
    engine = build_engine("builtin", copy.deepcopy(model).to(torch.bfloat16), tok)
    engine.update_weights(bucketed(named_weights(trained), 1 << 20))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(engine.model.state_dict()[name], tensor.to(torch.bfloat16)), name


def test_a_push_that_is_not_whole_is_refused(tok):
    model = build_tiny_model(tok, "1m", seed=0)
    engine = build_engine("builtin", copy.deepcopy(model), tok)
    state = model.state_dict()
    missing = dict(list(state.items())[1:])
    with pytest.raises(ValueError, match="not whole: missing"):
        engine.update_weights(missing)
    with pytest.raises(ValueError, match=re.escape("unexpected ['extra.weight']")):
        engine.update_weights({**state, "extra.weight": torch.zeros(1)})
    first = next(iter(state.items()))
    with pytest.raises(ValueError, match="sent twice"):
        engine.update_weights([list(state.items()), [first]])
    name, tensor = first
    with pytest.raises(ValueError, match=re.escape(f"weight '{name}'")):
        engine.update_weights({**state, name: tensor.flatten()[:-1]})  # a wrong shape is not broadcast into it
