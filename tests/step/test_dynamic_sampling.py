"""The dynamic sampler without a model: a fake draw function stands for generation + reward."""

from __future__ import annotations

import math

import pytest
import torch

from dapo.data import ChatMessage, PromptRecord
from dapo.step.dynamic_sampling import DynamicSampler, DynamicSamplingError, SamplingSettings
from dapo.step.groups import ScoredGroup


def group(name: str, acc: list[bool]) -> ScoredGroup:
    g = len(acc)
    return ScoredGroup(
        record=PromptRecord(name, (ChatMessage("user", name),), "1", "arith", "", {}),
        prompt_ids=(1, 2),
        response_ids=((3, 4),) * g,
        finish_reasons=("eos",) * g,
        scores=tuple(1.0 if a else -1.0 for a in acc),
        rewards=tuple(1.0 if a else -1.0 for a in acc),
        acc=tuple(acc),
        preds=("1",) * g,
        rollout_logprobs=torch.full((g, 2), -0.5),
    )


MIXED, RIGHT, WRONG = [True, False], [True, True], [False, False]


class FakeDraw:
    """Rounds served in order, each a list of (name, acc), served whole; records the round indices it was
    asked for."""

    def __init__(self, *rounds: list[tuple[str, list[bool]]]):
        self.rounds = list(rounds)
        self.asked: list[int] = []

    def __call__(self, round_index: int):
        self.asked.append(round_index)
        spec = self.rounds[len(self.asked) - 1]
        return [([group(n, a) for n, a in spec], {"reward/time": float(round_index)})]


class FakeWaves:
    """Rounds served wave by wave, as generators (what the trainer's draw is): each round a list of waves, each
    a list of (name, acc). Records, per round, the names in the waves never served once the sampler closed the
    round (what the trainer gives back to the data sampler)."""

    def __init__(self, *rounds: list[list[tuple[str, list[bool]]]]):
        self.rounds = list(rounds)
        self.not_served: list[list[str]] = []

    def __call__(self, round_index: int):
        waves = self.rounds[round_index - 1]
        done = 0
        try:
            for wave in waves:
                done += 1
                yield [group(n, a) for n, a in wave], {"reward/time": float(len(wave))}
        finally:
            self.not_served.append([n for wave in waves[done:] for n, _ in wave])


def names(groups) -> list[str]:
    return [g.record.uid for g in groups]


def test_rounds_are_drawn_until_the_batch_holds_enough_informative_groups():
    sampler = DynamicSampler(SamplingSettings(batch_size=3, gen_batch_size=3))
    draw = FakeDraw([("a", MIXED), ("b", RIGHT), ("c", WRONG)], [("d", RIGHT), ("e", MIXED), ("f", MIXED)])
    groups, metrics = sampler.collect(1, draw)
    assert names(groups) == ["a", "e", "f"] and draw.asked == [1, 2]
    assert metrics["train/num_gen_batches"] == 2.0 and metrics["train/num_groups"] == 3.0
    # over the 6 generated groups: 3 informative, 2 all-correct, 1 all-wrong, 1+2+0+2+1+1 = 7 of 12 responses right
    assert metrics["train/informative_group_frac"] == 0.5
    assert metrics["train/all_correct_group_frac"] == pytest.approx(2 / 6)
    assert metrics["train/all_wrong_group_frac"] == pytest.approx(1 / 6)
    assert metrics["train/generated_acc/mean"] == pytest.approx(7 / 12)
    assert metrics["reward/time"] == 1.5  # a round's reward metrics, averaged over the rounds
    assert all(g.rollout_logprobs is not None for g in groups)  # sampled this step: still π_old


def test_the_round_cap_stops_with_an_error_that_says_what_to_change():
    sampler = DynamicSampler(SamplingSettings(batch_size=2, gen_batch_size=1, max_gen_batches=2))
    draw = FakeDraw([("a", RIGHT)], [("b", WRONG)], [("c", MIXED)])
    with pytest.raises(DynamicSamplingError, match=r"step 7: after 2 generation rounds of 1 prompts only 0 of 2"):
        sampler.collect(7, draw)
    assert draw.asked == [1, 2]  # the third round was never drawn


def test_surplus_groups_are_carried_over_without_their_rollout_logprobs_and_used_first():
    sampler = DynamicSampler(SamplingSettings(batch_size=2, gen_batch_size=4))
    groups, metrics = sampler.collect(1, FakeDraw([("a", MIXED), ("b", MIXED), ("c", MIXED), ("d", RIGHT)]))
    assert names(groups) == ["a", "b"] and names(sampler.buffer) == ["c"]
    assert sampler.buffer[0].rollout_logprobs is None  # the next step's weights did not sample it
    assert metrics["train/groups_carried_over"] == 1.0 and metrics["train/groups_discarded"] == 0.0
    draw = FakeDraw([("e", MIXED), ("f", WRONG)])
    groups, metrics = sampler.collect(2, draw)
    assert names(groups) == ["c", "e"] and metrics["train/groups_from_buffer"] == 1.0 and draw.asked == [1]
    assert sampler.total_gen_batches == 2  # counted over the steps


def test_surplus_is_dropped_when_not_kept():
    sampler = DynamicSampler(SamplingSettings(batch_size=1, gen_batch_size=3, keep_surplus=False))
    groups, metrics = sampler.collect(1, FakeDraw([("a", MIXED), ("b", MIXED), ("c", MIXED)]))
    assert names(groups) == ["a"] and sampler.buffer == [] and metrics["train/groups_discarded"] == 2.0


def test_a_batch_is_filled_from_the_buffer_alone_without_a_round():
    sampler = DynamicSampler(SamplingSettings(batch_size=1, gen_batch_size=3))
    sampler.collect(1, FakeDraw([("a", MIXED), ("b", MIXED), ("c", MIXED)]))
    draw = FakeDraw()
    groups, metrics = sampler.collect(2, draw)
    assert names(groups) == ["b"] and names(sampler.buffer) == ["c"] and draw.asked == []
    assert metrics["train/num_gen_batches"] == 0.0
    assert math.isnan(metrics["train/informative_group_frac"])  # nothing was generated: no statistic


def test_without_dynamic_sampling_one_round_is_taken_as_it_is():
    sampler = DynamicSampler(SamplingSettings(batch_size=2, gen_batch_size=3, enable=False))
    groups, _ = sampler.collect(1, FakeDraw([("a", RIGHT), ("b", WRONG), ("c", MIXED)]))
    assert names(groups) == ["a", "b"] and sampler.buffer == []


def test_the_state_dict_resumes_the_sampler_exactly():
    first = DynamicSampler(SamplingSettings(batch_size=1, gen_batch_size=3))
    first.collect(1, FakeDraw([("a", MIXED), ("b", MIXED), ("c", WRONG)]))
    state = first.state_dict()
    second = DynamicSampler(SamplingSettings(batch_size=1, gen_batch_size=3))
    second.load_state_dict(state)
    assert names(second.buffer) == ["b"] and second.total_gen_batches == 1
    assert names(second.collect(2, FakeDraw())[0]) == names(first.collect(2, FakeDraw())[0]) == ["b"]


def test_with_stop_when_full_a_round_stops_at_the_wave_that_fills_the_batch():
    sampler = DynamicSampler(SamplingSettings(batch_size=5, gen_batch_size=6, stop_when_full=True))
    draw = FakeWaves(
        [[("a", MIXED), ("b", RIGHT)], [("c", MIXED), ("d", WRONG)], [("e", MIXED), ("f", MIXED)]],
        [[("g", MIXED), ("h", MIXED)], [("i", MIXED), ("j", MIXED)], [("k", MIXED), ("l", MIXED)]],
    )
    groups, metrics = sampler.collect(1, draw)
    # round 1 yields 4 informative groups in all; round 2 fills the batch with its first wave
    assert names(groups) == ["a", "c", "e", "f", "g"] and names(sampler.buffer) == ["h"]
    assert draw.not_served == [[], ["i", "j", "k", "l"]]  # closed at once, before the next round draws
    assert metrics["train/num_gen_batches"] == 2.0 and metrics["train/num_gen_parts"] == 4.0
    assert metrics["train/prompts_not_generated"] == 4.0
    assert metrics["train/informative_group_frac"] == pytest.approx(6 / 8)  # over the 8 groups generated
    assert metrics["reward/time"] == 2.0  # the mean over the 4 waves scored


def test_without_stop_when_full_every_wave_of_the_round_is_used():
    sampler = DynamicSampler(SamplingSettings(batch_size=1, gen_batch_size=4))
    draw = FakeWaves([[("a", MIXED), ("b", MIXED)], [("c", MIXED), ("d", MIXED)]])
    groups, metrics = sampler.collect(1, draw)
    assert names(groups) == ["a"] and names(sampler.buffer) == ["b", "c", "d"] and draw.not_served == [[]]
    assert metrics["train/num_gen_parts"] == 2.0 and metrics["train/prompts_not_generated"] == 0.0


def test_a_round_that_raises_is_closed_too():
    sampler = DynamicSampler(SamplingSettings(batch_size=2, gen_batch_size=4, stop_when_full=True))
    closed = []

    def draw(round_index):
        try:
            yield [group("a", MIXED)], {}
            raise FloatingPointError("a non-finite reward")
        finally:
            closed.append(round_index)

    with pytest.raises(FloatingPointError):
        sampler.collect(1, draw)
    assert closed == [1]


def test_samples_generated_are_counted_per_step_and_in_total_across_a_resume():
    """What "samples to target" needs: every response generated (kept or filtered), this step and since step 1,
    carried through the sampler's checkpoint state. And the behaviour entropy estimate: the mean −log π of the
    sampled tokens (here every token at log π = −0.5)."""
    settings = SamplingSettings(enable=True, batch_size=2, gen_batch_size=3, metric="acc", max_gen_batches=5)
    sampler = DynamicSampler(settings)
    _, first = sampler.collect(1, FakeDraw([("a", MIXED), ("b", RIGHT), ("c", WRONG)], [("d", MIXED)]))
    assert first["train/samples_generated"] == 8 == first["train/samples_generated_total"]
    assert first["rollout/entropy_estimate"] == pytest.approx(0.5)
    again = DynamicSampler(settings)
    again.load_state_dict(sampler.state_dict())
    _, second = again.collect(2, FakeDraw([("e", MIXED), ("f", MIXED), ("g", RIGHT)]))
    assert second["train/samples_generated"] == 6 and second["train/samples_generated_total"] == 14
    legacy = {k: v for k, v in sampler.state_dict().items() if k != "total_samples_generated"}
    DynamicSampler(settings).load_state_dict(legacy)  # a checkpoint from before the count still loads
