"""Local workers on a real (tiny) Hugging Face model: micro-batching changes nothing, updates move weights."""

import copy
import math

import pytest
import torch

from dapo import algo
from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.workers.base import CriticSettings, OptimParams, PolicyLossParams, PolicySettings
from dapo.workers.batch import TrainBatch, micro_batches, position_ids
from dapo.workers.critic import CriticWorker
from dapo.workers.optim import lr_factor
from dapo.workers.policy import PolicyWorker


@pytest.fixture(scope="module")
def model():
    tok = build_char_tokenizer()
    return build_tiny_model(tok, "1m", seed=0)


def _batch(vocab: int, seed: int = 0) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    groups, group_size, tp, t = 3, 4, 5, 7
    rows = groups * group_size
    prompt_lengths = torch.randint(2, tp + 1, (groups,), generator=gen).repeat_interleave(group_size)
    response_lengths = torch.randint(1, t + 1, (rows,), generator=gen)
    ids = torch.randint(3, vocab, (rows, tp + t), generator=gen)
    ids[:, :tp] = ids[::group_size, :tp].repeat_interleave(group_size, dim=0)  # a group's rows share its prompt
    cols = torch.arange(tp + t)
    prompt_part = (cols < tp) & (cols >= tp - prompt_lengths.unsqueeze(1))
    response_part = (cols >= tp) & (cols < tp + response_lengths.unsqueeze(1))
    attention = prompt_part | response_part
    ids = torch.where(attention, ids, 0)
    response_mask = response_part[:, tp:].float()
    rewards = torch.randint(0, 2, (groups, group_size), generator=gen).float()
    adv = algo.broadcast_to_tokens(algo.grpo_advantages(rewards).reshape(-1), response_mask)
    return TrainBatch(
        input_ids=ids, attention_mask=attention, response_mask=response_mask, prompt_width=tp,
        group_index=torch.arange(groups).repeat_interleave(group_size), advantages=adv,
    )  # fmt: skip


LOSS = PolicyLossParams(0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0)
OPTIM = OptimParams(1e-3, (0.9, 0.999), 0.0, 1e9, 0, "constant", 10, 0.0)


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
def test_logprobs_match_a_plain_forward_and_ignore_padding(model, share):
    batch = _batch(model.config.vocab_size)
    worker = PolicyWorker(model, PolicySettings(OPTIM, micro_batch_max_tokens=24, share_prompt_forward=share))
    assert worker.forward.name == ("shared_prefix" if share else "hf")
    logprobs, entropy = worker.compute_logprobs(batch, with_entropy=True)
    for row in range(batch.num_rows):  # one row at a time, no padding at all
        real = batch.attention_mask[row]
        ids = batch.input_ids[row][real].unsqueeze(0)
        logits = model(input_ids=ids).logits[0]
        n_prompt = int(real[: batch.prompt_width].sum())
        n_resp = int(batch.response_mask[row].sum())
        expected = algo.token_logprobs(logits[n_prompt - 1 : n_prompt - 1 + n_resp], ids[0, n_prompt:])
        torch.testing.assert_close(logprobs[row, :n_resp], expected, atol=1e-5, rtol=1e-5)
        assert (logprobs[row, n_resp:] == 0).all() and (entropy[row, n_resp:] == 0).all()


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
def test_logprobs_and_entropy_are_those_of_the_sampling_temperature(model, share):
    """Samples come from softmax(logits / T): the ratio, KL and entropy must use that distribution (verl, TRL)."""
    batch = _batch(model.config.vocab_size)
    worker = PolicyWorker(
        model, PolicySettings(OPTIM, micro_batch_max_tokens=10_000, share_prompt_forward=share, temperature=0.6)
    )
    logprobs, entropy = worker.compute_logprobs(batch, with_entropy=True)
    row = 5
    real = batch.attention_mask[row]
    ids = batch.input_ids[row][real].unsqueeze(0)
    n_prompt, n_resp = int(real[: batch.prompt_width].sum()), int(batch.response_mask[row].sum())
    tempered = model(input_ids=ids).logits[0, n_prompt - 1 : n_prompt - 1 + n_resp] / 0.6
    torch.testing.assert_close(
        logprobs[row, :n_resp], algo.token_logprobs(tempered, ids[0, n_prompt:]), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(entropy[row, :n_resp], algo.entropy_from_logits(tempered), atol=1e-5, rtol=1e-5)


def _sgd_update(model, batch, params, micro_batch_max_tokens, share=True):
    """One update of a copy of `model` (old log-probs shifted so ratios differ from 1); returns its weights
    and stats. Plain SGD with lr 1: the parameter change IS the (summed) gradient; Adam would amplify noise
    in near-zero gradients to ±lr and hide what the tests compare."""
    m = copy.deepcopy(model)
    worker = PolicyWorker(
        m, PolicySettings(OPTIM, micro_batch_max_tokens=micro_batch_max_tokens, share_prompt_forward=share)
    )
    worker.optimizer = torch.optim.SGD(m.parameters(), lr=1.0)
    old = worker.compute_logprobs(batch)
    stats = worker.update(batch.replace(old_logprobs=old + 0.05), params, 3, 1, None).metrics
    return m.state_dict(), stats


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
@pytest.mark.parametrize("mode", algo.EXACT_AGGREGATION_MODES)
def test_micro_batch_split_gives_the_same_update(model, mode, share):
    batch = _batch(model.config.vocab_size, seed=1)
    params = PolicyLossParams(0.2, 0.28, 10.0, 20.0, mode, 7.0, 0.0, None, 0.0)
    # one micro-batch per mini-batch vs one row at a time (shared prefix: the prompt then repeats per row)
    (a, sa), (b, sb) = (_sgd_update(model, batch, params, budget, share) for budget in (10_000, 13))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert sa["actor/pg_loss"] == pytest.approx(sb["actor/pg_loss"], rel=1e-5)
    assert sa["actor/pg_clipfrac"] == pytest.approx(sb["actor/pg_clipfrac"])


def test_shared_prefix_and_hf_forward_give_the_same_update(model):
    batch = _batch(model.config.vocab_size, seed=6)
    (a, sa), (b, sb) = (_sgd_update(model, batch, LOSS, 10_000, share) for share in (True, False))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    for key in ("actor/pg_loss", "actor/entropy", "actor/ppo_kl", "actor/grad_norm"):
        assert sa[key] == pytest.approx(sb[key], rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("mode", algo.EXACT_AGGREGATION_MODES)
def test_skipping_zero_advantage_rows_gives_the_same_update(model, mode):
    batch = _batch(model.config.vocab_size, seed=4)
    adv = batch.advantages.clone()
    adv[:4] = 0.0  # group 0 all-equal rewards (zero advantage): its rows are skipped, their tokens still count
    batch = batch.replace(advantages=adv)
    (a, sa), (b, sb) = (
        _sgd_update(
            model,
            batch,
            PolicyLossParams(0.2, 0.28, 10.0, 20.0, mode, 7.0, 0.0, None, 0.0, skip_zero_advantage_rows=skip),
            10_000,
        )
        for skip in (False, True)
    )
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert sa["actor/pg_loss"] == pytest.approx(sb["actor/pg_loss"], rel=1e-5)
    assert "actor/skipped_rows_frac" not in sa and sb["actor/skipped_rows_frac"] == pytest.approx(4 / 12)


def test_a_mini_batch_without_advantage_still_takes_the_adamw_step(model):
    """Skipping every row must not skip AdamW's decay and moment updates: same weights either way."""
    batch = _batch(model.config.vocab_size, seed=5)
    optim = OptimParams(1e-3, (0.9, 0.999), 0.1, 1e9, 0, "constant", 10, 0.0)
    results = []
    for skip in (False, True):
        params = PolicyLossParams(
            0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0, skip_zero_advantage_rows=skip
        )
        m = copy.deepcopy(model)
        worker = PolicyWorker(m, PolicySettings(optim, micro_batch_max_tokens=10_000))
        worker.update(batch, params, 3, 1, None)  # informative: builds Adam moments
        worker.update(batch.replace(advantages=torch.zeros_like(batch.advantages)), params, 3, 1, None)
        results.append(m.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-7, rtol=1e-6)


def test_skipping_is_off_when_a_kl_or_entropy_term_needs_every_row():
    assert PolicyLossParams(
        0.2, 0.28, None, None, "token-mean", None, 0.0, None, 0.0
    ).row_gradient_is_zero_without_advantage()
    assert not PolicyLossParams(
        0.2, 0.28, None, None, "token-mean", None, 1e-3, "k3", 0.0
    ).row_gradient_is_zero_without_advantage()
    assert not PolicyLossParams(
        0.2, 0.28, None, None, "token-mean", None, 0.0, None, 1e-3
    ).row_gradient_is_zero_without_advantage()


def test_update_changes_every_trainable_parameter(model):
    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.named_parameters()}
    worker = PolicyWorker(m, PolicySettings(OPTIM, micro_batch_max_tokens=64))
    stats = worker.update(_batch(m.config.vocab_size, seed=2), LOSS, 3, 1, None).metrics
    unchanged = [k for k, v in m.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, unchanged
    assert stats["actor/grad_norm"] > 0 and stats["actor/lr"] == pytest.approx(1e-3)


def test_non_finite_gradient_skips_the_step(model):
    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    worker = PolicyWorker(m, PolicySettings(OPTIM, micro_batch_max_tokens=64))
    batch = _batch(m.config.vocab_size, seed=3)
    bad = batch.advantages.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite policy loss"):
        worker.update(batch.replace(advantages=bad), LOSS, 3, 1, None)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_critic_learns_a_constant_return(model):
    batch = _batch(model.config.vocab_size, seed=4)
    critic = CriticWorker(
        model,
        CriticSettings(
            OptimParams(3e-3, (0.9, 0.999), 0.0, 1.0, 0, "constant", 10, 0.0),
            value_clip=None,
            micro_batch_max_tokens=256,
        ),
    )
    returns = batch.response_mask * 0.7
    errors = []
    for _ in range(30):
        values = critic.compute_values(batch)
        errors.append(float(((values - returns) ** 2 * batch.response_mask).sum()))
        critic.update(batch.replace(old_values=values, returns=returns), 3, 1)
    assert errors[-1] < 0.1 * errors[0]


def test_critic_values_and_update_are_the_same_with_shared_prompts(model):
    batch = _batch(model.config.vocab_size, seed=7)
    returns = batch.response_mask * 0.3
    results = []
    for share in (True, False):
        critic = CriticWorker(
            model, CriticSettings(OPTIM, value_clip=0.5, micro_batch_max_tokens=10_000, share_prompt_forward=share)
        )
        assert (critic.forward.shared is not None) == share
        with torch.no_grad():  # a non-zero head, so that values and the body's gradient are not trivially 0
            critic.model.head.weight.copy_(torch.linspace(-1, 1, model.config.hidden_size)[None])
        critic.optimizer = torch.optim.SGD(critic.model.parameters(), lr=1.0)
        values = critic.compute_values(batch)
        critic.update(batch.replace(old_values=values, returns=returns), 3, 1)
        results.append((values, critic.model.state_dict()))
    (v_shared, w_shared), (v_own, w_own) = results
    assert v_own.abs().sum() > 0
    torch.testing.assert_close(v_shared, v_own, atol=1e-5, rtol=1e-5)
    before = CriticWorker(
        model, CriticSettings(OPTIM, value_clip=0.5, micro_batch_max_tokens=10_000)
    ).model.state_dict()
    for name, w in w_own.items():
        if name.startswith("head."):
            continue  # the head was overwritten above
        step_own, step_shared = w - before[name], w_shared[name] - before[name]  # = the gradient (SGD, lr 1)
        scale = float(step_own.abs().max()) + 1e-8
        assert scale > 1e-6, name  # the body does get a gradient
        torch.testing.assert_close(step_shared / scale, step_own / scale, atol=1e-4, rtol=0, msg=name)


def test_lr_schedule():
    assert [lr_factor(s, 2, "constant", 10, 0.0) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(10, 0, "cosine", 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 0, "cosine", 10, 0.0) == pytest.approx(0.5)


def test_micro_batches_respect_the_token_budget():
    lengths = [5, 9, 3, 7, 2]
    parts = micro_batches(lengths, torch.arange(5), 10)
    assert sorted(torch.cat(parts).tolist()) == [0, 1, 2, 3, 4]
    for p in parts:
        assert len(p) == 1 or max(lengths[i] for i in p.tolist()) * len(p) <= 10


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_the_local_workers_fulfil_the_protocols_the_trainer_types_against(model, tmp_path):
    from dapo.rollout import BuiltinEngine
    from dapo.workers.base import CriticWorkers, PolicyWorkers

    policy_model = copy.deepcopy(model)
    policy = PolicyWorker(policy_model, PolicySettings(OPTIM, micro_batch_max_tokens=10_000))
    assert isinstance(policy, PolicyWorkers) and not policy.has_reference
    assert isinstance(
        CriticWorker(copy.deepcopy(model), CriticSettings(OPTIM, value_clip=0.5, micro_batch_max_tokens=10_000)),
        CriticWorkers,
    )
    assert policy.num_parameters() == sum(p.numel() for p in policy_model.parameters())
    # π_old may come from the engine only when it holds this very module, in float32, at temperature 1.
    shared = BuiltinEngine(policy_model, build_char_tokenizer())
    assert policy.engine_logprobs_are_policy_logprobs(shared, 1.0)
    assert not policy.engine_logprobs_are_policy_logprobs(shared, 0.9)
    copied = BuiltinEngine(copy.deepcopy(model), build_char_tokenizer())
    assert not policy.engine_logprobs_are_policy_logprobs(copied, 1.0)
    # push_weights brings a copy up to date; state_dict carries what a resume restores
    with torch.no_grad():
        next(policy_model.parameters()).add_(1.0)
    policy.push_weights(copied)
    pushed = copied.model.state_dict()
    assert all(torch.equal(pushed[name], value) for name, value in policy_model.state_dict().items())
    assert set(policy.state_dict()) == {"model", "optimizer", "scheduler"}


@pytest.mark.parametrize("share", [True, False], ids=["shared_prefix", "hf"])
def test_bf16_mixed_computes_in_bf16_over_float32_master_weights(model, share):
    batch = _batch(model.config.vocab_size, seed=2)
    params = PolicyLossParams(0.2, 0.28, 10.0, 20.0, "token-mean", 7.0, 0.0, None, 0.0)
    fp32, mixed = (
        PolicyWorker(
            copy.deepcopy(model),
            PolicySettings(OPTIM, micro_batch_max_tokens=10_000, share_prompt_forward=share, precision=p),
        )
        for p in ("fp32", "bf16-mixed")
    )
    exact, approx = fp32.compute_logprobs(batch), mixed.compute_logprobs(batch)
    assert approx.dtype == torch.float32 and not torch.equal(exact, approx)  # bf16 matmuls: other rounding
    torch.testing.assert_close(approx, exact, atol=0.1, rtol=0)  # bf16 has 8 bits of mantissa
    before = {k: v.clone() for k, v in mixed.model.state_dict().items()}
    stats = mixed.update(batch.replace(old_logprobs=approx), params, 3, 1, None).metrics
    assert math.isfinite(stats["actor/grad_norm"]) and stats["actor/grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())  # master weights stay float32
    assert any(not torch.equal(before[k], v) for k, v in mixed.model.state_dict().items())
    state = mixed.optimizer.state_dict()["state"]
    assert all(t.dtype == torch.float32 for s in state.values() for t in s.values() if t.dim() > 0)
    # The float32 engine's log-probs are no longer the trainer's: π_old is recomputed.
    from dapo.rollout import BuiltinEngine

    assert not mixed.engine_logprobs_are_policy_logprobs(BuiltinEngine(mixed.model, build_char_tokenizer()), 1.0)


def test_bf16_mixed_critic_values_stay_float32(model):
    batch = _batch(model.config.vocab_size, seed=3)
    critics = [
        CriticWorker(
            copy.deepcopy(model), CriticSettings(OPTIM, value_clip=0.5, micro_batch_max_tokens=10_000, precision=p)
        )
        for p in ("fp32", "bf16-mixed")
    ]
    for critic in critics:
        with torch.no_grad():
            critic.model.head.weight.copy_(torch.linspace(-1, 1, model.config.hidden_size)[None])
    exact, approx = (c.compute_values(batch) for c in critics)
    assert approx.dtype == torch.float32
    torch.testing.assert_close(approx, exact, atol=0.1, rtol=0.05)
    stats = critics[1].update(batch.replace(old_values=approx, returns=torch.ones_like(approx)), 3, 1)
    assert math.isfinite(stats["critic/vf_loss"])


def _rollout_view(batch, old, log_rho, rows=None):
    """`batch` with π_old = `old` and rollout log-probs old − log ρ on `rows` (default: every row). The other
    rows and the padding hold garbage, which must change nothing."""
    rows = torch.ones(batch.num_rows, dtype=torch.bool) if rows is None else rows
    known = batch.response_mask.bool() & rows.unsqueeze(1)
    garbage = torch.full_like(old, float("nan"))
    garbage[:, -1] = float("inf")
    rollout = torch.where(known, old - log_rho, garbage)
    return batch.replace(old_logprobs=old, rollout_logprobs=rollout, rollout_rows=rows), known


def _sgd_worker(model, budget=10_000):
    m = copy.deepcopy(model)
    worker = PolicyWorker(m, PolicySettings(OPTIM, micro_batch_max_tokens=budget, share_prompt_forward=True))
    worker.optimizer = torch.optim.SGD(m.parameters(), lr=1.0)
    return m, worker


def test_the_mismatch_is_exactly_zero_when_the_loss_uses_the_rollout_logprobs(model):
    batch = _batch(model.config.vocab_size, seed=3)
    _, worker = _sgd_worker(model)
    old = worker.compute_logprobs(batch)
    view, _ = _rollout_view(batch, old, torch.zeros_like(old))
    stats = worker.update(view, LOSS, 3, 1, None).metrics
    for name in ("training/rollout_probs_diff", "rollout_corr/ratio"):
        zero = 1.0 if name == "rollout_corr/ratio" else 0.0
        assert (stats[f"{name}_mean"], stats[f"{name}_std"], stats[f"{name}_max"]) == (zero, 0.0, zero)
    assert stats["rollout_corr/kl"] == 0.0 and stats["rollout_corr/k3_kl"] == 0.0
    assert "rollout_corr/is_weight_mean" not in stats  # the correction is off


def test_the_mismatch_metrics_are_the_spread_over_the_known_tokens(model):
    """Micro-batches of one row or two; a group without rollout log-probs (carried over) is left out."""
    batch = _batch(model.config.vocab_size, seed=4)
    _, worker = _sgd_worker(model, budget=13)
    old = worker.compute_logprobs(batch)
    log_rho = (torch.rand(old.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6
    rows = batch.group_index != 1
    view, known = _rollout_view(batch, old, log_rho, rows)
    stats = worker.update(view, LOSS, 3, 1, None).metrics
    diff = (old.exp() - (old - log_rho).exp()).abs()[known].double()
    ratio = log_rho.exp()[known].double()
    for name, values in (("training/rollout_probs_diff", diff), ("rollout_corr/ratio", ratio)):
        assert stats[f"{name}_mean"] == pytest.approx(float(values.mean()), rel=1e-5)
        assert stats[f"{name}_std"] == pytest.approx(float(values.std(correction=0)), rel=1e-4)
        assert stats[f"{name}_max"] == pytest.approx(float(values.max()), rel=1e-6)
    assert stats["rollout_corr/kl"] == pytest.approx(float(-log_rho[known].double().mean()), rel=1e-5)
    k3 = (log_rho.exp() - 1 - log_rho)[known].double().mean()
    assert stats["rollout_corr/k3_kl"] == pytest.approx(float(k3), rel=1e-4)


@pytest.mark.parametrize(
    "level, mode, cap, factor, capped",
    [("token", "truncate", 2.0, 1.5, 0.0), ("token", "truncate", 1.2, 1.2, 1.0), ("token", "mask", 1.2, 0.0, 1.0)],
)
def test_truncated_importance_sampling_scales_each_tokens_gradient_by_its_weight(
    model, level, mode, cap, factor, capped
):
    """ρ = 1.5 on every token: plain SGD with lr 1 moves the weights by the gradient, so the corrected update
    is the uncorrected one times the weight min(ρ, C) (truncate) or ρ·1[ρ ≤ C] (mask)."""
    batch = _batch(model.config.vocab_size, seed=5)
    _, worker = _sgd_worker(model)
    old = worker.compute_logprobs(batch) + 0.05  # ratios off 1, so that the clip acts on some tokens
    view, _ = _rollout_view(batch, old, torch.full_like(old, math.log(1.5)))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plain_model, plain = _sgd_worker(model)
    plain.update(view, LOSS, 3, 1, None)
    corrected_model, corrected = _sgd_worker(model)
    params = PolicyLossParams(
        0.2, 0.28, 10.0, 20.0, "token-mean", None, 0.0, None, 0.0,
        rollout_is_level=level, rollout_is_mode=mode, rollout_is_cap=cap,
    )  # fmt: skip
    stats = corrected.update(view, params, 3, 1, None).metrics
    for name, before in start.items():
        expected = before + factor * (plain_model.state_dict()[name] - before)
        torch.testing.assert_close(corrected_model.state_dict()[name], expected, atol=1e-6, rtol=1e-5)
    assert stats["rollout_corr/is_weight_mean"] == pytest.approx(factor)
    assert stats["rollout_corr/is_capped_frac"] == capped


def _long_rows_batch(vocab: int) -> TrainBatch:
    """3 groups × 4 rows, every prompt 5 tokens and responses of 4-7 tokens: rows of 9-12 tokens, so that
    a 12-token budget holds one row per micro-batch."""
    gen = torch.Generator().manual_seed(7)
    rows, tp, t = 12, 5, 7
    lengths = torch.randint(4, t + 1, (rows,), generator=gen)
    ids = torch.randint(3, vocab, (rows, tp + t), generator=gen)
    ids[:, :tp] = ids[::4, :tp].repeat_interleave(4, dim=0)
    response = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    attention = torch.cat([torch.ones(rows, tp, dtype=torch.bool), response], dim=1)
    rewards = torch.randint(0, 2, (3, 4), generator=gen).float()
    adv = algo.broadcast_to_tokens(algo.grpo_advantages(rewards).reshape(-1), response.float())
    return TrainBatch(
        input_ids=torch.where(attention, ids, 0), attention_mask=attention, response_mask=response.float(),
        prompt_width=tp, group_index=torch.arange(3).repeat_interleave(4), advantages=adv,
    )  # fmt: skip


def test_the_legacy_token_mean_is_the_token_mean_in_one_micro_batch_and_the_sample_mean_in_single_rows(model):
    """verl's legacy per-micro-batch mean depends on the split, as in verl: one micro-batch per mini-batch
    gives the exact token mean, one row per micro-batch the sample-level mean."""
    batch = _long_rows_batch(model.config.vocab_size)

    def update(mode, budget):
        params = PolicyLossParams(0.2, 0.28, 10.0, 20.0, mode, None, 0.0, None, 0.0, skip_zero_advantage_rows=True)
        return _sgd_update(model, batch, params, budget, share=False)

    legacy_whole, legacy_rows = update("token-mean-legacy", 10_000), update("token-mean-legacy", 12)
    for got, expected in (
        (legacy_whole, update("token-mean", 10_000)),
        (legacy_rows, update("seq-mean-token-mean", 12)),
    ):
        for name in got[0]:
            torch.testing.assert_close(got[0][name], expected[0][name], atol=1e-6, rtol=1e-5)
        assert got[1]["actor/pg_loss"] == pytest.approx(expected[1]["actor/pg_loss"], rel=1e-5)
    assert legacy_whole[1]["actor/pg_loss"] != pytest.approx(legacy_rows[1]["actor/pg_loss"], rel=1e-3)


def test_the_clip_higher_metrics_by_hand(model):
    """DAPO Fig. 3's quantities on one on-policy-shifted mini-batch: the share of tokens the upper clip could act on
    (π_old < 1/(1+ε_high)) and the mean π_old of the tokens it did clip (Â > 0 and r > 1+ε_high), from the
    log-probs the update sees."""
    batch = _batch(model.config.vocab_size, seed=2)
    worker = PolicyWorker(copy.deepcopy(model), PolicySettings(OPTIM, micro_batch_max_tokens=10_000))
    current = worker.compute_logprobs(batch)
    gen = torch.Generator().manual_seed(3)
    old = current - torch.rand(current.shape, generator=gen) * 0.6  # ratios from 1 to e^0.6: some above 1.28
    old = torch.where(batch.response_mask.bool(), old, torch.nan)  # garbage where masked changes nothing
    mask = batch.response_mask.bool()
    ratio, old_prob = (current - old).exp(), old.exp()
    up_clipped = mask & (batch.advantages > 0) & (ratio > 1.28)
    assert 0 < int(up_clipped.sum()) < int(mask.sum())
    metrics = worker.update(batch.replace(old_logprobs=old), LOSS, 3, 1, None).metrics
    assert metrics["actor/pg_clip_high_reachable_frac"] == pytest.approx(
        float((old_prob[mask] < 1 / 1.28).float().mean())
    )
    assert metrics["actor/pg_clipped_high_old_prob"] == pytest.approx(float(old_prob[up_clipped].mean()), rel=1e-5)
    assert metrics["actor/pg_clipfrac_higher"] == pytest.approx(float(up_clipped.sum() / mask.sum()))
