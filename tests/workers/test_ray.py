"""Data-parallel ranks on Ray give the single-process update: weights, log-probs, values and metrics.

Tolerances: a 2-rank pass adds the same numbers in another order (two partial gradients, then their sum),
so gradients agree to float rounding (~1e-10 here). AdamW's first steps move a weight by about
lr·g/(|g| + ε); where |g| is near ε = 1e-8 the rounding is amplified by lr/ε = 1e5 (measured: weights
within 1.2e-5 at lr 1e-3). With ε = 1e-4 the amplification is 10, and the weights agree within 1e-6.
"""

import copy
import dataclasses

import pytest
import torch
from test_local import OPTIM, _batch  # the same tiny batch as the local workers' tests

from dapo.algo import EXACT_AGGREGATION_MODES
from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.workers.base import CriticSettings, CriticWorkers, PolicyLossParams, PolicySettings, PolicyWorkers
from dapo.workers.critic import CriticWorker
from dapo.workers.parallel import balanced_group_assignment, rank_rows
from dapo.workers.policy import PolicyWorker

pytestmark = [pytest.mark.slow, pytest.mark.ray]

EXACT_OPTIM = dataclasses.replace(OPTIM, eps=1e-4)
POLICY = PolicySettings(EXACT_OPTIM, micro_batch_max_tokens=40, with_reference=True, share_prompt_forward=True)
CRITIC = CriticSettings(EXACT_OPTIM, micro_batch_max_tokens=40, value_clip=0.5, share_prompt_forward=True)


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(build_char_tokenizer(), "1m", seed=0)


def _train_batch(model, seed: int = 0):
    """Three groups of uneven prompt and response lengths, with π_old, π_ref, values and returns, and rollout
    log-probs on two of the groups."""
    batch = _batch(model.config.vocab_size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    shape = batch.response_mask.shape
    old = torch.randn(shape, generator=gen) * 0.1 - 2.0
    return batch.replace(
        old_logprobs=old,
        ref_logprobs=torch.randn(shape, generator=gen) * 0.1 - 2.0,
        old_values=torch.randn(shape, generator=gen) * 0.1,
        returns=torch.randn(shape, generator=gen),
        rollout_logprobs=old + torch.randn(shape, generator=gen) * 0.2,
        rollout_rows=batch.group_index != 2,
    )


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_groups_are_split_whole_and_balanced_by_tokens():
    assert balanced_group_assignment([10, 1, 9, 2], 2) == [0, 0, 1, 1]  # 10+1 against 9+2
    assert balanced_group_assignment([5, 5, 5], 1) == [0, 0, 0]
    batch = _batch(100)
    rows = torch.arange(batch.num_rows)
    parts = [rank_rows(batch, rows, r, 2) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == rows.tolist()  # every row exactly once
    for part in parts:  # whole groups: a group's rows all on one rank
        for g in set(batch.group_index[part].tolist()):
            assert set(torch.nonzero(batch.group_index == g).squeeze(-1).tolist()) <= set(part.tolist())


@pytest.fixture(scope="module", params=[("ddp", 1), ("fsdp2", 1), ("fsdp2", 2)], ids=["ddp", "fsdp2", "fsdp2-sp2"])
def two_ranks(request, ray_cluster, model):
    """2 data-parallel ranks (DDP, FSDP2), or 2 FSDP2 ranks that split every micro-batch's tokens (Ulysses)."""
    from dapo.workers.ray_group import RaySettings, RayTrainGroup

    strategy, sequence_parallel = request.param
    settings = RaySettings("", 2, 1.0, 0.0, strategy, 60.0, 60.0, sequence_parallel=sequence_parallel)
    group = RayTrainGroup(settings, copy.deepcopy(model), POLICY, CRITIC, say=lambda _: None)
    yield group
    group.close()


def _fresh(model, policy: bool = True):
    torch.set_num_threads(1)  # as each rank: one thread
    m = copy.deepcopy(model)
    return PolicyWorker(m, POLICY) if policy else CriticWorker(m, CRITIC)


def _group_holding_the_local_state(model, settings, policy=POLICY, critic=CRITIC):
    """A Ray worker group built with `settings`, its policy and critic loaded with fresh one-process workers' state:
    (group, its critic workers, the local policy, the local critic)."""
    from dapo.workers.ray_group import RayCriticWorkers, RayTrainGroup

    group = RayTrainGroup(settings, copy.deepcopy(model), policy, critic, say=lambda _: None)
    local, local_critic = _fresh(model), _fresh(model, policy=False)
    group.run("policy", "load_state_dict", local.state_dict())
    critics = RayCriticWorkers(group)
    critics.load_state_dict(local_critic.state_dict())
    return group, critics, local, local_critic


@pytest.mark.parametrize("mode", EXACT_AGGREGATION_MODES)
def test_two_ranks_update_like_one_process(two_ranks, model, mode):
    """Every aggregation mode, a KL and an entropy term, the sequence-level rollout correction, two epochs of
    shuffled mini-batches of 2 groups and 1 group (so one rank has no row of its own in the second and runs
    weight-0 passes only). The mismatch metrics' maxima are taken over the ranks."""
    batch = _train_batch(model)
    loss = PolicyLossParams(
        0.2, 0.28, 3.0, 20.0, mode, 7.0, 0.01, "k3", 0.001, rollout_is_level="sequence", rollout_is_cap=1.5
    )
    local = _fresh(model)
    two_ranks.run("policy", "load_state_dict", local.state_dict())  # the untrained weights, no AdamW moments
    expected = local.update(batch, loss, 2, 2, 123)
    got = two_ranks.run("policy", "update", batch, loss, 2, 2, 123, reply=False)[0]
    assert _max_difference(two_ranks.run("policy", "full_weights", reply=False)[0], local.full_weights()) < 1e-6
    assert got.tokens_computed == expected.tokens_computed > 0
    assert got.metrics.keys() == expected.metrics.keys()
    for name, value in expected.metrics.items():
        assert got.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_two_ranks_compute_the_log_probs_of_one_process(two_ranks, model):
    from dapo.workers.ray_group import RayPolicyWorkers

    batch = _train_batch(model, seed=3)
    local = _fresh(model)
    two_ranks.run("policy", "load_state_dict", local.state_dict())
    workers = RayPolicyWorkers(two_ranks, copy.deepcopy(model), "fp32", has_reference=True)
    assert isinstance(workers, PolicyWorkers)
    for reference in (False, True):
        got = workers.compute_logprobs(batch, reference=reference)
        torch.testing.assert_close(got, local.compute_logprobs(batch, reference=reference), atol=1e-6, rtol=0)


def test_fsdp2_ranks_with_activation_checkpointing_update_like_one_process_without(ray_cluster, model):
    """Checkpointing inside the pass FSDP2 wraps (policy and critic): the one-process update, not recomputed."""
    from dapo.workers.ray_group import RaySettings

    recomputing = (
        dataclasses.replace(POLICY, activation_checkpointing=True),
        dataclasses.replace(CRITIC, activation_checkpointing=True),
    )
    settings = RaySettings("", 2, 1.0, 0.0, "fsdp2", 60.0, 60.0)
    group, critic, local, local_critic = _group_holding_the_local_state(model, settings, *recomputing)
    try:
        batch = _train_batch(model, seed=5)
        loss = PolicyLossParams(0.2, 0.28, 3.0, 20.0, "token-mean", 7.0, 0.01, "k3", 0.001)
        expected, got = local.update(batch, loss, 2, 1, None), group.run("policy", "update", batch, loss, 2, 1, None)
        assert _max_difference(group.run("policy", "full_weights", reply=False)[0], local.full_weights()) < 1e-6
        assert got[0].metrics["actor/pg_loss"] == pytest.approx(expected.metrics["actor/pg_loss"], rel=1e-5)
        local_critic.update(batch, 2, 1)
        critic.update(batch, 2, 1)
        assert _max_difference(critic.state_dict()["model"], local_critic.state_dict()["model"]) < 1e-6
    finally:
        group.close()


def test_fsdp2_gathers_one_block_at_a_time(two_ranks, model):
    """One FSDP2 unit a decoder block and the root: a pass gathers the root once and each block once, and the
    backward gathers each block again (the root stays gathered); no gather holds more than the root or a block."""
    if two_ranks.settings.strategy != "fsdp2":
        pytest.skip("FSDP2 only")

    def _count_all_gathers(rank, batch):  # runs on a rank (defined here: shipped by value)
        """On a rank: the parameter all-gathers (and their sizes) of one policy forward, then of its backward."""
        import torch.distributed as dist

        policy, sizes, original = rank.workers["policy"], [], dist.all_gather_single

        def counting(output, *args, **kwargs):
            sizes.append(output.numel())
            return original(output, *args, **kwargs)

        dist.all_gather_single = counting
        try:
            logprobs, _ = policy.trainable(batch.select(torch.arange(batch.num_rows)))
            forward = list(sizes)
            sizes.clear()
            logprobs.sum().backward()
            policy.optimizer.zero_grad(set_to_none=True)
            return forward, list(sizes)
        finally:
            dist.all_gather_single = original

    batch = _train_batch(model)
    counts = two_ranks.wait([r.__ray_call__.remote(_count_all_gathers, batch) for r in two_ranks.ranks], "count")
    layers = model.config.num_hidden_layers
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    root = sum(p.numel() for p in model.parameters()) - layers * block
    for forward, backward in counts:
        assert len(forward) == 1 + layers and len(backward) == layers, (forward, backward)
        assert max(forward + backward) <= max(root, block) + 2 * 16  # padding to the world size
        assert sum(forward) >= root + layers * block  # every parameter gathered once for the forward


def test_rank_0_streams_the_weights_in_buckets_gathered_one_tensor_at_a_time(two_ranks, model):
    """After an update: the buckets rank 0 puts hold the full weights exactly (FSDP2: gathered from the shards),
    each bucket at most the size asked (or one tensor), what rank 0 held at once at most a bucket plus the tensor
    that did not fit; an engine in this process loads them bucket by bucket."""
    from dapo.rollout import build_engine
    from dapo.workers.ray_group import RankWeights, RayPolicyWorkers

    batch = _train_batch(model, seed=6)
    loss = PolicyLossParams(0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0)
    two_ranks.run("policy", "load_state_dict", _fresh(model).state_dict())
    two_ranks.run("policy", "update", batch, loss, 3, 1, None)
    full = two_ranks.run("policy", "full_weights", reply=False)[0]
    bucket = 128 << 10
    stream = RankWeights(two_ranks, bucket, "float32")
    buckets = list(stream)
    assert [name for b in buckets for name, _ in b] == list(full)  # every tensor once, in state-dict order
    assert _max_difference({name: t for b in buckets for name, t in b}, full) == 0
    assert all(sum(t.numel() * 4 for _, t in b) <= bucket for b in buckets if len(b) > 1)
    largest = max(t.numel() * 4 for t in full.values())
    assert stream.meter.buckets == len(buckets) > 5
    assert stream.meter.peak_bytes <= bucket + largest
    engine = build_engine("builtin", copy.deepcopy(model), build_char_tokenizer())
    RayPolicyWorkers(two_ranks, engine.model, "fp32", True, bucket_bytes=bucket).push_weights(engine)
    assert _max_difference(engine.model.state_dict(), full) == 0
    halves = {name: t for b in RankWeights(two_ranks, bucket, "bfloat16") for name, t in b}
    assert all(
        halves[name].dtype == torch.bfloat16 and torch.equal(halves[name], t.bfloat16()) for name, t in full.items()
    )


def test_two_ranks_train_the_critic_like_one_process(two_ranks, model):
    from dapo.workers.ray_group import RayCriticWorkers

    batch = _train_batch(model, seed=4)
    local = _fresh(model, policy=False)
    critic = RayCriticWorkers(two_ranks)
    assert isinstance(critic, CriticWorkers)
    critic.load_state_dict(local.state_dict())
    torch.testing.assert_close(critic.compute_values(batch), local.compute_values(batch), atol=1e-6, rtol=0)
    expected = local.update(batch, 2, 2)
    got = critic.update(batch, 2, 2)
    assert _max_difference(critic.state_dict()["model"], local.state_dict()["model"]) < 1e-6
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_state_saved_on_two_ranks_is_the_single_process_form(two_ranks, model):
    """After training on 2 ranks, the gathered state loads into one process (and back) unchanged."""
    batch = _train_batch(model, seed=5)
    loss = PolicyLossParams(0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0)
    two_ranks.run("policy", "load_state_dict", _fresh(model).state_dict())
    two_ranks.run("policy", "update", batch, loss, 3, 1, None)
    saved = two_ranks.run("policy", "state_dict", reply=False)[0]
    single = _fresh(model)
    single.load_state_dict(saved)  # the local worker's own loader: the form is the single-process one
    again = single.state_dict()
    assert _max_difference(again["model"], saved["model"]) == 0
    assert again["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    for i, state in saved["optimizer"]["state"].items():
        assert _max_difference(again["optimizer"]["state"][i], state) == 0
    two_ranks.run("policy", "load_state_dict", again)  # and back onto the ranks, bit for bit
    assert _max_difference(two_ranks.run("policy", "state_dict", reply=False)[0]["model"], saved["model"]) == 0


def test_fsdp2_mixed_precision_keeps_float32_master_weights(ray_cluster, model):
    from dapo.workers.ray_group import RaySettings, RayTrainGroup

    settings = RaySettings("", 2, 1.0, 0.0, "fsdp2", 60.0, 60.0, bf16_compute=True)
    group = RayTrainGroup(settings, copy.deepcopy(model), POLICY, None, say=lambda _: None)
    try:
        batch = _train_batch(model)
        loss = PolicyLossParams(0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0)
        local = _fresh(model)
        torch.testing.assert_close(
            group.run("policy", "compute_logprobs", batch)[0] + group.run("policy", "compute_logprobs", batch)[1],
            local.compute_logprobs(batch), atol=0.1, rtol=0,
        )  # fmt: skip
        group.run("policy", "update", batch, loss, 3, 1, None)
        local.update(batch, loss, 3, 1, None)
        state = group.run("policy", "state_dict", reply=False)[0]
        assert all(v.dtype == torch.float32 for v in state["model"].values())
        assert all(s["exp_avg"].dtype == torch.float32 for s in state["optimizer"]["state"].values())
        assert _max_difference(state["model"], local.full_weights()) < 2 * EXACT_OPTIM.lr  # one step, bf16 apart
    finally:
        group.close()


def test_a_non_finite_loss_on_one_rank_stops_every_rank_and_leaves_the_weights(two_ranks, model):
    """A non-finite loss in one rank's rows: every rank raises FloatingPointError at the same point (none is
    left waiting in a collective), no step is taken, and the ranks go on answering."""
    local = _fresh(model)
    two_ranks.run("policy", "load_state_dict", local.state_dict())
    batch = _train_batch(model)
    advantages = batch.advantages.clone()
    advantages[-1, 0] = float("nan")  # a real token (every response has one) of the last group: one rank
    loss = PolicyLossParams(0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0)
    with pytest.raises(FloatingPointError, match="non-finite policy loss"):
        two_ranks.run("policy", "update", batch.replace(advantages=advantages), loss, 3, 1, None)
    assert _max_difference(two_ranks.run("policy", "full_weights", reply=False)[0], local.full_weights()) == 0
    two_ranks.run("policy", "update", batch, loss, 3, 1, None)  # the group is still in step


def test_a_rank_that_never_reaches_the_collective_is_an_error_after_the_timeout(ray_cluster, model):
    """Only rank 0 is asked to update, so it waits in the gradient all-reduce for a rank 1 that never comes:
    a ClusterError naming ray.collective_timeout_s after that time, not gloo's 30 minutes."""
    import time

    from dapo.cluster import ClusterError
    from dapo.workers.ray_group import RaySettings, RayTrainGroup

    settings = RaySettings("", 2, 1.0, 0.0, "ddp", 3.0, 60.0)
    group = RayTrainGroup(settings, copy.deepcopy(model), POLICY, None, say=lambda _: None)
    try:
        loss = PolicyLossParams(0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0)
        start = time.monotonic()
        alone = group.ranks[0].call.remote("policy", "update", _train_batch(model), loss, 3, 1, None)
        with pytest.raises(ClusterError, match=r"ray.collective_timeout_s=3 s .*a peer hangs"):
            group.wait([alone], "policy.update")
        assert time.monotonic() - start >= 3
    finally:
        group.close()


@pytest.mark.parametrize(
    "strategy, ranks, sequence_parallel",
    [("ddp", 4, 2), ("fsdp2", 4, 4)],
    ids=["ddp-data2-x-sequence2", "fsdp2-sequence4-repeated-kv-heads"],
)
def test_sequence_parallel_ranks_split_the_tokens_and_update_like_one_process(
    ray_cluster, model, strategy, ranks, sequence_parallel
):
    """Ulysses on 4 ranks: 2 data x 2 sequence (DDP), and 1 data x 4 sequence with FSDP2, where the model's 2
    key/value heads are repeated to 4. The policy update (KL and entropy terms, two epochs of shuffled mini-batches
    of 2 groups and 1, so a data group has no row of its own once), the log-probs and the critic are the one
    process's; each rank's blocks see 1/N of the packed tokens (SP is no silent no-op)."""
    from dapo.workers.ray_group import RayPolicyWorkers, RaySettings

    def _tokens_each_block_sees(rank, batch):  # runs on a rank (defined here: shipped by value)
        """On a rank: the number of packed tokens entering each decoder block in one policy forward."""
        policy, seen = rank.workers["policy"], []
        hooks = [
            layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
            for layer in policy.model.model.layers
        ]
        try:
            with torch.no_grad():
                policy.trainable(batch.select(torch.arange(batch.num_rows)))
            policy.dp.after_forward_only(policy.trainable)
            return seen
        finally:
            for hook in hooks:
                hook.remove()

    settings = RaySettings("", ranks, 0.5, 0.0, strategy, 60.0, 60.0, sequence_parallel=sequence_parallel)
    group, critic, local, local_critic = _group_holding_the_local_state(model, settings)
    try:
        batch = _train_batch(model, seed=6)
        loss = PolicyLossParams(0.2, 0.28, 3.0, 20.0, "token-mean", 7.0, 0.01, "k3", 0.001)

        whole = batch.attention_mask.sum()  # an upper bound of one process's packed tokens
        for seen in group.wait([r.__ray_call__.remote(_tokens_each_block_sees, batch) for r in group.ranks], "t"):
            assert len(seen) == model.config.num_hidden_layers
            assert max(seen) <= -(-int(whole) // sequence_parallel)

        policy = RayPolicyWorkers(group, copy.deepcopy(model), "fp32", has_reference=True)
        for reference in (False, True):
            got = policy.compute_logprobs(batch, reference=reference)
            torch.testing.assert_close(got, local.compute_logprobs(batch, reference=reference), atol=1e-6, rtol=0)
        torch.testing.assert_close(critic.compute_values(batch), local_critic.compute_values(batch), atol=1e-6, rtol=0)

        expected = local.update(batch, loss, 2, 2, 123)
        got = group.run("policy", "update", batch, loss, 2, 2, 123, reply=False)[0]
        assert _max_difference(group.run("policy", "full_weights", reply=False)[0], local.full_weights()) < 1e-6
        for name, value in expected.metrics.items():
            assert got.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        local_critic.update(batch, 2, 1)
        critic.update(batch, 2, 1)
        assert _max_difference(critic.state_dict()["model"], local_critic.state_dict()["model"]) < 1e-6
    finally:
        group.close()


@pytest.mark.parametrize("offload", ["optimizer", "all"])
def test_offloaded_fsdp2_ranks_update_like_one_process(ray_cluster, model, offload):
    """ray.offload on CPU ranks changes no number: the AdamW moments moved out and back around each update, or
    FSDP2's CPUOffloadPolicy (parameters, gradients and the optimiser step in host memory) on every unit; policy
    over two updates (so the second starts from moved moments) and critic."""
    from dapo.workers.ray_group import RaySettings

    settings = RaySettings("", 2, 1.0, 0.0, "fsdp2", 60.0, 60.0, offload=offload)
    group, critic, local, local_critic = _group_holding_the_local_state(model, settings)
    try:
        loss = PolicyLossParams(0.2, 0.28, 3.0, 20.0, "token-mean", 7.0, 0.01, "k3", 0.001)
        for seed in (7, 8):
            batch = _train_batch(model, seed=seed)
            expected = local.update(batch, loss, 2, 1, None)
            got = group.run("policy", "update", batch, loss, 2, 1, None, reply=False)[0]
            assert got.metrics["actor/pg_loss"] == pytest.approx(expected.metrics["actor/pg_loss"], rel=1e-5)
            local_critic.update(batch, 2, 1)
            critic.update(batch, 2, 1)
        assert _max_difference(group.run("policy", "full_weights", reply=False)[0], local.full_weights()) < 1e-6
        assert _max_difference(critic.state_dict()["model"], local_critic.state_dict()["model"]) < 1e-6
    finally:
        group.close()
