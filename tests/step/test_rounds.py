"""Generation rounds without a model: a fake engine, a fake reward step, the real prompt sampler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dapo.data import ChatMessage, PromptRecord, PromptSampler
from dapo.metrics import Timer
from dapo.rollout import RolloutBatch, SamplingParams
from dapo.rollout.base import wave_seed, waves_one_by_one
from dapo.step.dynamic_sampling import DynamicSampler, SamplingSettings
from dapo.step.rounds import GenerationRounds, RoundSettings, round_seed

RECORDS = [PromptRecord(f"p{i}", (ChatMessage("user", f"q{i}"),), str(i % 2), "arith", "", {}) for i in range(6)]
PROMPT_IDS = {r.uid: [10 + i] for i, r in enumerate(RECORDS)}  # one token a prompt: its index + 10


class FakeEngine:
    """Response j to prompt [t] is the two tokens (t, j): responses differ within a group; records each call."""

    def __init__(self):
        self.calls: list[tuple[list[int], int]] = []

    def generate(self, prompts, n, sampling, seed) -> RolloutBatch:
        self.calls.append(([p[0] for p in prompts], seed))
        rows = len(prompts) * n
        ids = torch.tensor([[p[0], j] for p in prompts for j in range(n)])
        return RolloutBatch(
            prompt_ids=torch.tensor([p for p in prompts for _ in range(n)]),
            prompt_mask=torch.ones((rows, 1), dtype=torch.bool),
            response_ids=ids,
            response_mask=torch.ones((rows, 2), dtype=torch.bool),
            logprobs=torch.full((rows, 2), -0.5),
            sampling_logprobs=None,
            response_lengths=torch.full((rows,), 2),
            finish_reasons=("eos",) * rows,
            group_index=torch.arange(len(prompts)).repeat_interleave(n),
            n=n,
        )

    def generate_waves(self, prompts, n, sampling, seed, prompts_per_wave):
        return waves_one_by_one(self, prompts, n, sampling, seed, prompts_per_wave)


def reward_by_parity(samples):
    """Right when the response's second token (its index in the group) has the ground truth's parity."""
    acc = torch.tensor([s.response[-1] == s.ground_truth for s in samples])
    rewards = acc.float() * 2 - 1
    return SimpleNamespace(
        acc=acc, scores=rewards, rewards=rewards, preds=tuple(s.response for s in samples), metrics={"m": 1.0}
    )


def _rounds(engine, reward_fn=reward_by_parity, stop_when_full=False, batch_size=2):
    sampler = PromptSampler(RECORDS, seed=0, batch_size=batch_size)
    settings = RoundSettings(group_size=2, sampling=SamplingParams(), seed=7, stop_when_full=stop_when_full,
                             rows_per_wave=2)  # fmt: skip
    texts = {r.uid: r.messages[0].content for r in RECORDS}
    decode = lambda ids: "".join(str(i % 2) for i in ids)  # noqa: E731
    return GenerationRounds(sampler, PROMPT_IDS, texts, engine, reward_fn, decode, settings), sampler


def test_a_round_draws_prompts_generates_their_groups_and_scores_them_with_the_round_seed():
    engine = FakeEngine()
    rounds, _ = _rounds(engine)
    timer = Timer()
    (part,) = list(rounds.draw(3, timer)(2))
    groups, metrics = part
    assert engine.calls[0][1] == round_seed(7, 3, 2) == (7 * 1_000_003 + 3 * 1009 + 2) % 2**31
    assert [g.prompt_ids for g in groups] == [(p,) for p in engine.calls[0][0]]
    assert all(g.size == 2 and g.acc == (g.record.ground_truth == "0", g.record.ground_truth == "1") for g in groups)
    assert metrics == {"m": 1.0} and set(timer.seconds) == {"gen", "reward"}


def test_a_round_closed_after_its_first_wave_gives_the_other_prompts_back():
    """With stop_when_full, dynamic sampling stops a round at the wave that fills its batch; the prompts of the
    waves not generated come first in the next round, so no prompt of an epoch is skipped."""
    engine = FakeEngine()
    rounds, sampler = _rounds(engine, stop_when_full=True, batch_size=4)
    sampling = DynamicSampler(SamplingSettings(batch_size=1, gen_batch_size=4, stop_when_full=True))
    groups, _ = sampling.collect(1, rounds.draw(1, Timer()))
    first_wave = engine.calls[0][0]
    assert len(engine.calls) == 1 and len(first_wave) == 1 and len(groups) == 1  # 2 rows a wave: one prompt
    assert engine.calls[0][1] == wave_seed(round_seed(7, 1, 1), 0)
    drawn = PromptSampler(RECORDS, seed=0, batch_size=4).next_batch()  # the round's prompts, in its order
    assert [PROMPT_IDS[r.uid][0] for r in drawn[:1]] == first_wave
    assert sampler.next_batch()[:3] == drawn[1:]


def test_a_non_finite_reward_stops_the_run_naming_the_prompt():
    def broken(samples):
        out = reward_by_parity(samples)
        out.rewards[3] = float("nan")
        return out

    rounds, _ = _rounds(FakeEngine(), reward_fn=broken)
    with pytest.raises(FloatingPointError, match=r"step 5: the reward of response 1 to prompt p\d .*nan"):
        list(rounds.draw(5, Timer())(1))
