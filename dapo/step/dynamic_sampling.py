"""Dynamic sampling (DAPO §3.2, Algorithm 1 lines 3-7), with the carry-over buffer, as one component.

A training step asks for `batch_size` informative groups. The sampler takes the groups left over from the
previous step first, then draws generation rounds (each: prompts sampled, responses generated and scored, by
`GenerationRounds.draw` in `dapo.step.rounds`) and keeps the groups whose accuracy is neither all 0 nor all 1,
until the batch is full or the round cap is hit. A round arrives in parts: the whole round at once, or, with
`stop_when_full`, wave by wave as the engine generates it, and then the round stops at the first wave that
fills the batch (the draw's iterator is closed; the round gives the prompts not generated back to the data
sampler, so that the next round starts with them). Informative groups beyond the batch are kept for the next step
(`keep_surplus`, Algorithm 1's buffer) or dropped (verl). Kept groups lose their rollout log-probs: the next
step's weights are not the ones that sampled them.

The sampler holds no model and does no I/O: it is given a `draw(round_index)` function, so it is tested with a
fake one (tests/step/test_dynamic_sampling.py). Its `state_dict` is what a resumed run needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dapo.errors import DapoError
from dapo.step.groups import ScoredGroup, informative

# draw(round_index) -> the parts of one generation round, in order: each part's scored groups and reward metrics
Draw = Callable[[int], Iterable[tuple[list[ScoredGroup], dict[str, float]]]]


class DynamicSamplingError(DapoError, RuntimeError):
    """The generation-round cap was reached before the batch had enough informative groups."""


@dataclass(frozen=True)
class SamplingSettings:
    """`algo.dynamic_sampling` and the batch sizes it works with."""

    batch_size: int
    """informative groups per training step (data.train_batch_size)"""
    gen_batch_size: int
    """prompts per generation round (data.gen_batch_size; named in the cap error)"""
    enable: bool = True
    metric: str = "acc"
    max_gen_batches: int = 10
    """cap on rounds per step; 0 = unlimited"""
    keep_surplus: bool = True
    stop_when_full: bool = False
    """stop a round at the first part (wave) that fills the batch; the rest of the round is not generated"""


class DynamicSampler:
    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self.buffer: list[ScoredGroup] = []
        self.total_gen_batches = 0
        self.total_samples_generated = 0  # responses generated since step 1: "samples to target" beside steps

    def collect(self, step: int, draw: Draw) -> tuple[list[ScoredGroup], dict[str, float]]:
        """The `batch_size` groups of training step `step` and the sampling metrics (verl's names)."""
        s = self.settings
        ready: list[ScoredGroup] = list(self.buffer) if s.enable else []
        from_buffer = len(ready)
        self.buffer = []
        generated: list[ScoredGroup] = []
        reward_metrics: list[dict[str, float]] = []
        rounds = informative_seen = 0
        while len(ready) < s.batch_size:
            if s.enable and s.max_gen_batches > 0 and rounds >= s.max_gen_batches:
                raise DynamicSamplingError(
                    f"step {step}: after {rounds} generation rounds of {s.gen_batch_size} prompts only "
                    f"{len(ready)} of {s.batch_size} groups were informative (accuracy neither all 0 nor all 1). "
                    "The task is too easy or too hard for the model. Set "
                    "algo.dynamic_sampling.max_gen_batches=0 for unlimited rounds, raise data.gen_batch_size, "
                    "or use easier/harder data."
                )
            rounds += 1
            parts = draw(rounds)
            try:
                for new_groups, part_metrics in parts:
                    generated += new_groups
                    reward_metrics.append(part_metrics)
                    signal = informative(new_groups, s.metric)
                    informative_seen += sum(signal)
                    ready += [g for g, kept in zip(new_groups, signal, strict=True) if kept or not s.enable]
                    if s.stop_when_full and len(ready) >= s.batch_size:
                        break
            finally:
                close = getattr(parts, "close", None)
                if close is not None:  # a generator: its clean-up runs now, before the next round draws
                    close()
        surplus = ready[s.batch_size :]
        if s.enable and s.keep_surplus:
            self.buffer = [dataclasses.replace(g, rollout_logprobs=None) for g in surplus]
        self.total_gen_batches += rounds
        self.total_samples_generated += sum(g.size for g in generated)
        metrics = self._metrics(generated, informative_seen, rounds, from_buffer, len(surplus) - len(self.buffer))
        metrics["train/samples_generated_total"] = float(self.total_samples_generated)
        metrics["train/num_groups"] = float(min(len(ready), s.batch_size))
        metrics["train/num_gen_parts"] = float(len(reward_metrics))
        metrics["train/prompts_not_generated"] = float(rounds * s.gen_batch_size - len(generated))
        # reward metrics: the mean over the parts scored (whole rounds, or waves with stop_when_full)
        for key in reward_metrics[0] if reward_metrics else ():
            metrics[key] = sum(m[key] for m in reward_metrics) / len(reward_metrics)
        return ready[: s.batch_size], metrics

    def _metrics(
        self, generated: Sequence[ScoredGroup], informative_seen: int, rounds: int, from_buffer: int, discarded: int
    ) -> dict[str, float]:
        """Statistics over every group generated this step (before filtering): what dynamic sampling saw."""
        seen = len(generated)
        acc_counts = [sum(g.acc) for g in generated]
        nan = float("nan")

        def share(count: int) -> float:
            return count / seen if seen else nan

        sampled = [g for g in generated if g.rollout_logprobs is not None]
        tokens = sum(len(r) for g in sampled for r in g.response_ids)
        neg_logprob = -sum(float(g.rollout_logprobs.sum()) for g in sampled)
        return {
            "train/num_gen_batches": float(rounds),
            "train/samples_generated": float(sum(g.size for g in generated)),
            # mean −log π of the sampled tokens (raw policy): at temperature 1, the behaviour policy's entropy a token
            "rollout/entropy_estimate": neg_logprob / tokens if tokens else nan,
            "train/informative_group_frac": share(informative_seen),
            "train/all_correct_group_frac": share(sum(c == g.size for c, g in zip(acc_counts, generated, strict=True))),
            "train/all_wrong_group_frac": share(sum(c == 0 for c in acc_counts)),
            "train/generated_acc/mean": sum(acc_counts) / sum(g.size for g in generated) if seen else nan,
            "train/groups_from_buffer": float(from_buffer),
            "train/groups_carried_over": float(len(self.buffer)),
            "train/groups_discarded": float(discarded),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": list(self.buffer),
            "total_gen_batches": self.total_gen_batches,
            "total_samples_generated": self.total_samples_generated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = list(state["buffer"])
        self.total_gen_batches = int(state["total_gen_batches"])
        self.total_samples_generated = int(state.get("total_samples_generated", 0))  # absent before 2026-12
