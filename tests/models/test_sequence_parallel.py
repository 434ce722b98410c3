"""Ulysses sequence parallelism: what it refuses, and its slices (the collectives run in tests/workers/test_ray.py)."""

import pytest

from dapo.models.sequence_parallel import SequenceParallel, SequenceParallelError


def _group(size: int, rank: int = 0) -> SequenceParallel:
    return SequenceParallel(group=None, rank=rank, size=size)


@pytest.mark.parametrize(
    "size, heads, kv_heads, repeats",
    [(2, 4, 2, 1), (4, 4, 2, 2), (8, 40, 8, 1), (4, 32, 8, 1), (8, 32, 4, 2), (4, 4, 1, 4)],
)
def test_the_key_value_heads_are_repeated_only_when_fewer_than_the_group(size, heads, kv_heads, repeats):
    group = _group(size)
    group.check_heads(heads, kv_heads)
    assert group.kv_repeats(kv_heads) == repeats
    assert (kv_heads * repeats) % size == 0


@pytest.mark.parametrize("size, heads, kv_heads", [(3, 4, 2), (4, 6, 2), (8, 40, 6), (2, 3, 3)])
def test_head_counts_the_group_cannot_split_are_refused_in_one_line(size, heads, kv_heads):
    with pytest.raises(SequenceParallelError, match=rf"ray.sequence_parallel={size} does not split") as error:
        _group(size).check_heads(heads, kv_heads)
    assert "\n" not in str(error.value)


def test_the_slices_cover_the_padded_packing_once():
    tokens = 13
    bounds = [_group(4, rank).bounds(tokens) for rank in range(4)]
    assert bounds == [(0, 4, 16), (4, 8, 16), (8, 12, 16), (12, 16, 16)]
    assert _group(4, 0).bounds(2) == (0, 1, 4)  # fewer tokens than ranks: one slot each, mostly padding
