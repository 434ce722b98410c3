"""π_old / π_ref and the advantages as stages, without a model: fake workers, hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from dapo.metrics import Timer
from dapo.step.advantages import AdvantageSettings, LogProbSettings, behaviour_logprobs, with_advantages
from dapo.step.groups import ScoredGroup, build_train_batch


def _group(responses, rewards, truncated=(), logprobs=True) -> ScoredGroup:
    finish = tuple("length" if i in truncated else "eos" for i in range(len(responses)))
    width = max(len(r) for r in responses)
    lp = torch.tensor([[-0.1 * (t + 1) for t in range(width)]] * len(responses)) if logprobs else None
    return ScoredGroup(
        record=None, prompt_ids=(1, 2), response_ids=tuple(tuple(r) for r in responses), finish_reasons=finish,
        scores=tuple(rewards), rewards=tuple(rewards), acc=tuple(r > 0 for r in rewards), preds=(None,) * len(rewards),
        rollout_logprobs=lp,
    )  # fmt: skip


class FakePolicy:
    """Log-probs −1 (policy) and −2 (reference) on every generated token; counts its passes."""

    def __init__(self, has_reference=False):
        self.has_reference = has_reference
        self.passes: list[bool] = []

    def compute_logprobs(self, batch, *, reference=False):
        self.passes.append(reference)
        return -(2.0 if reference else 1.0) * batch.generated_mask


def _batch(groups, mask_truncated=True):
    return build_train_batch(groups, 0, mask_truncated, with_rollout_logprobs=True)


def test_exactly_on_policy_needs_no_old_logprobs():
    policy = FakePolicy()
    batch, old, metrics = behaviour_logprobs(
        policy, _batch([_group([[5, 6]], [1.0])]), LogProbSettings(True, False, True), Timer()
    )
    assert old is None and batch.old_logprobs is None and policy.passes == [] and metrics == {}


def test_the_engine_logprobs_stand_for_pi_old_only_when_every_group_has_them():
    settings = LogProbSettings(on_policy=False, in_reward_kl=False, reuse_rollout_logprobs=True)
    fresh = [_group([[5, 6, 7], [8]], [1.0, -1.0], truncated=(0,))]
    policy = FakePolicy()
    batch, old, metrics = behaviour_logprobs(policy, _batch(fresh), settings, Timer())
    # the engine's numbers, on every generated token (the truncated response's too), zero elsewhere
    torch.testing.assert_close(old, torch.tensor([[-0.1, -0.2, -0.3], [-0.1, 0.0, 0.0]]))
    assert batch.old_logprobs is old and policy.passes == [] and metrics == {"train/old_logprobs_from_rollout": 1.0}

    carried = [*fresh, _group([[9, 9]], [0.0], logprobs=False)]  # a group kept from the step before
    batch, old, metrics = behaviour_logprobs(policy, _batch(carried), settings, Timer())
    assert policy.passes == [False] and metrics == {"train/old_logprobs_from_rollout": 0.0}
    torch.testing.assert_close(old, -batch.generated_mask)


def test_the_reference_pass_runs_whenever_there_is_a_reference():
    policy = FakePolicy(has_reference=True)
    batch, _, _ = behaviour_logprobs(policy, _batch([_group([[5, 6]], [1.0])]), LogProbSettings(True, False, False),
                                     Timer())  # fmt: skip
    assert policy.passes == [True] and torch.equal(batch.ref_logprobs, torch.tensor([[-2.0, -2.0]]))


def test_group_advantages_cover_every_generated_token_even_where_the_loss_does_not():
    """GRPO (Eq. 9): rewards (1, −1, −1) → mean −1/3, Bessel std √((16 + 4 + 4)/9 / 2) = 2/√3:
    Â = (4/3)/(2/√3) = 2/√3 and (−2/3)/(2/√3) = −1/√3."""
    batch = _batch([_group([[5, 6, 7], [8], [9, 9]], [1.0, -1.0, -1.0], truncated=(0,))])
    assert batch.response_mask[0].sum() == 0  # overlong filtering masks the truncated response's loss only
    out, coef, metrics = with_advantages(
        batch, torch.tensor([[1.0, -1.0, -1.0]]), None, 0.0, None, AdvantageSettings("grpo", eps=0.0), Timer()
    )
    a, b = 2 / math.sqrt(3), -1 / math.sqrt(3)
    torch.testing.assert_close(out.advantages, torch.tensor([[a, a, a], [b, 0, 0], [b, b, 0]]))
    assert coef == 0.0 and metrics["critic/rewards/mean"] == pytest.approx(-1 / 3)


def test_in_reward_kl_is_subtracted_per_token_and_the_group_sees_its_sum():
    """k1 KL(π_old ‖ π_ref) = −1 − (−2) = 1 a token, β = 0.25: response 0 (2 tokens) 1 − 0.5 = 0.5, response 1
    (1 token) 0 − 0.25 = −0.25; RLOO: 0.5 − (−0.25) = 0.75 and −0.75. An adaptive β moves by the observed KL."""
    batch = _batch([_group([[5, 6], [7]], [1.0, 0.0])]).replace(ref_logprobs=torch.tensor([[-2.0, -2.0], [-2.0, 0]]))
    old = torch.tensor([[-1.0, -1.0], [-1.0, 0.0]])
    settings = AdvantageSettings("rloo", in_reward_kl=True, kl_type="k1", adaptive_kl=True, kl_target=0.5,
                                 kl_horizon=10)  # fmt: skip
    out, coef, metrics = with_advantages(batch, torch.tensor([[1.0, 0.0]]), old, 0.25, None, settings, Timer())
    torch.testing.assert_close(out.advantages, torch.tensor([[0.75, 0.75], [-0.75, 0.0]]))
    assert metrics["actor/reward_kl_penalty"] == 1.0 and metrics["actor/reward_kl_penalty_coeff"] == 0.25
    assert coef == 0.25 * (1 + 0.2 * 2 / 10)  # e = clip(1/0.5 − 1, ±0.2) = 0.2, n = 2 responses


def test_gae_reads_the_critic_on_every_generated_token():
    """γ = λ = 1 and V = 0: Â_t = R_t = the outcome reward at every generated token (the truncated response's
    too); returns = advantages + values; explained variance 1 − Var(R − V)/Var(R) = 0."""

    class ZeroCritic:
        def compute_values(self, batch):
            return torch.zeros_like(batch.generated_mask)

    batch = _batch([_group([[5, 6, 7], [8]], [2.0, -1.0], truncated=(0,))])
    out, _, metrics = with_advantages(batch, torch.tensor([[2.0, -1.0]]), None, 0.0, ZeroCritic(),
                                      AdvantageSettings("gae", whiten=False), Timer())  # fmt: skip
    assert torch.equal(out.advantages, torch.tensor([[2.0, 2.0, 2.0], [-1.0, 0.0, 0.0]]))
    assert torch.equal(out.returns, out.advantages) and torch.equal(out.old_values, torch.zeros(2, 3))
    assert metrics["critic/vf_explained_var"] == 0.0
