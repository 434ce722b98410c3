"""Generation rounds: draw prompts, sample G responses each, score them (DAPO Algorithm 1, lines 3-5).

A `GenerationRounds` is what dynamic sampling draws from: `rounds.draw(step, timer)` is the `Draw` that
`DynamicSampler.collect` calls once per round. A round arrives as one part, or, with `stop_when_full`, wave by
wave as the engine generates it; closed before its last wave, it gives the prompts not generated back to the
data sampler, so that no prompt of an epoch is skipped. A streaming or asynchronous rollout replaces this class
and nothing else.

Seeds: round r of step s samples with `(seed·1000003 + s·1009 + r) mod 2³¹`, so a resumed run needs no
sampling RNG state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from dapo.data import PromptRecord, PromptSampler
from dapo.metrics import Timer
from dapo.rewards import RewardFunction
from dapo.rollout import RolloutBatch, RolloutEngine, SamplingParams
from dapo.step.dynamic_sampling import Draw
from dapo.step.groups import ScoredGroup, groups_from_rollout, reward_samples

RoundPart = tuple[list[ScoredGroup], dict[str, float]]


@dataclass(frozen=True)
class RoundSettings:
    group_size: int
    """G: responses per prompt (rollout.group_size)"""
    sampling: SamplingParams
    """the training sampling parameters (rollout.temperature, top_p, top_k, max_response_length)"""
    seed: int
    """the run's seed (trainer.seed)"""
    stop_when_full: bool = False
    """score a round wave by wave and stop it at the wave that fills the batch"""
    rows_per_wave: int = 0
    """responses per wave with stop_when_full (rollout.max_rows_in_flight)"""


def round_seed(run_seed: int, step: int, round_index: int) -> int:
    """A distinct, reproducible seed per (run seed, step, generation round)."""
    return (run_seed * 1_000_003 + step * 1009 + round_index) % 2**31


class GenerationRounds:
    def __init__(
        self,
        sampler: PromptSampler,
        prompt_ids: Mapping[str, Sequence[int]],
        prompt_text: Mapping[str, str],
        engine: RolloutEngine,
        reward_fn: RewardFunction,
        decode: Callable[[Sequence[int]], str],
        settings: RoundSettings,
    ):
        self.sampler, self.prompt_ids, self.prompt_text = sampler, prompt_ids, prompt_text
        self.engine, self.reward_fn, self.decode = engine, reward_fn, decode
        self.settings = settings

    def draw(self, step: int, timer: Timer) -> Draw:
        """The rounds of training step `step`, timed into `timer` (`gen`, `reward`)."""
        return lambda round_index: self._round(step, round_index, timer)

    def _round(self, step: int, round_index: int, timer: Timer) -> Iterator[RoundPart]:
        s = self.settings
        records = self.sampler.next_batch()
        prompts = [self.prompt_ids[r.uid] for r in records]
        seed = round_seed(s.seed, step, round_index)
        if not s.stop_when_full:
            with timer("gen"):
                rollout = self.engine.generate(prompts, s.group_size, s.sampling, seed)
            yield self._scored(step, records, rollout, timer)
            return
        per_wave = max(1, s.rows_per_wave // s.group_size)
        waves = self.engine.generate_waves(prompts, s.group_size, s.sampling, seed, per_wave)
        done = 0
        try:
            while done < len(records):
                with timer("gen"):
                    rollout = next(waves)
                part = records[done : done + rollout.num_prompts]
                done += len(part)
                yield self._scored(step, part, rollout, timer)
        finally:
            waves.close()
            self.sampler.give_back(records[done:])

    def _scored(self, step: int, records: Sequence[PromptRecord], rollout: RolloutBatch, timer: Timer) -> RoundPart:
        """The groups of `rollout` (the responses to `records`), scored, and the reward metrics. A non-finite
        reward stops the run before anything reaches the weights."""
        with timer("reward"):
            texts = [self.prompt_text[r.uid] for r in records]
            scored = self.reward_fn(reward_samples(records, texts, rollout, self.decode))
        bad = torch.nonzero(~torch.isfinite(scored.rewards)).flatten().tolist()
        if bad:
            record = records[bad[0] // rollout.n]
            raise FloatingPointError(
                f"step {step}: the reward of response {bad[0] % rollout.n} to prompt {record.uid} "
                f"(data source {record.data_source!r}) is {float(scored.rewards[bad[0]])}; "
                f"{len(bad)} non-finite rewards in this round. Nothing was applied to the weights."
            )
        prompts = [self.prompt_ids[r.uid] for r in records]
        return groups_from_rollout(records, prompts, rollout, scored), scored.metrics
