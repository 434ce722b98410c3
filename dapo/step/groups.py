"""Scored response groups: what dynamic sampling keeps, buffers and turns into a training batch.

A `ScoredGroup` holds the G responses of one prompt as plain token lists and numbers, so that groups
from different generation rounds (different padded widths) can be pooled, carried over to the next step
and checkpointed, then padded once into a `TrainBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dapo import algo
from dapo.data import PromptRecord
from dapo.rewards import RewardBatch, RewardSample
from dapo.rollout import RolloutBatch
from dapo.workers.batch import TrainBatch, batch_from_prompts


@dataclass(frozen=True)
class ScoredGroup:
    """One prompt and its G scored responses (the unit that dynamic sampling keeps or drops)."""

    record: PromptRecord
    prompt_ids: tuple[int, ...]
    response_ids: tuple[tuple[int, ...], ...]
    """G responses, each with its EOS/stop token when it had one"""
    finish_reasons: tuple[str, ...]
    scores: tuple[float, ...]
    """rule score per response (+1/−1 for DAPO)"""
    rewards: tuple[float, ...]
    """score + overlong penalty: what the advantages use"""
    acc: tuple[bool, ...]
    preds: tuple[str | None, ...]
    rollout_logprobs: Tensor | None = field(default=None, compare=False)
    """(G, T) float32, zero-padded: log π(token) of each response under the raw policy as the engine reported
    it while sampling (None: not kept; groups carried over to a later step drop them, the weights have changed)"""

    @property
    def size(self) -> int:
        return len(self.response_ids)

    def metric(self, name: str) -> tuple[float, ...]:
        """The per-response metric dynamic sampling filters on: acc | score | reward."""
        if name == "acc":
            return tuple(float(a) for a in self.acc)
        return self.scores if name == "score" else self.rewards

    @property
    def truncated(self) -> tuple[bool, ...]:
        return tuple(reason == "length" for reason in self.finish_reasons)


def reward_samples(
    records: Sequence[PromptRecord], prompt_texts: Sequence[str], rollout: RolloutBatch, decode
) -> list[RewardSample]:
    """One RewardSample per response of a generation round; `decode(token_ids) -> str` skips special tokens."""
    n, lengths = rollout.n, rollout.response_lengths.tolist()
    samples = []
    for row in range(rollout.response_ids.shape[0]):
        record = records[row // n]
        samples.append(
            RewardSample(
                prompt=prompt_texts[row // n],
                response=decode(rollout.response_ids[row, : lengths[row]].tolist()),
                response_length=lengths[row],
                truncated=rollout.finish_reasons[row] == "length",
                ground_truth=record.ground_truth,
                data_source=record.data_source,
                extra=record.extra,
            )
        )
    return samples


def groups_from_rollout(
    records: Sequence[PromptRecord], prompts: Sequence[Sequence[int]], rollout: RolloutBatch, rewards: RewardBatch
) -> list[ScoredGroup]:
    """Cut a generation round (P prompts × n responses, contiguous per prompt) into P scored groups."""
    n = rollout.n
    lengths = rollout.response_lengths.tolist()
    groups = []
    for p, record in enumerate(records):
        rows = range(p * n, p * n + n)
        groups.append(
            ScoredGroup(
                record=record,
                prompt_ids=tuple(int(t) for t in prompts[p]),
                response_ids=tuple(tuple(rollout.response_ids[r, : lengths[r]].tolist()) for r in rows),
                finish_reasons=tuple(rollout.finish_reasons[r] for r in rows),
                scores=tuple(float(rewards.scores[r]) for r in rows),
                rewards=tuple(float(rewards.rewards[r]) for r in rows),
                acc=tuple(bool(rewards.acc[r]) for r in rows),
                preds=tuple(rewards.preds[r] for r in rows),
                rollout_logprobs=rollout.logprobs[rows.start : rows.stop, : max(lengths[r] for r in rows)].clone(),
            )
        )
    return groups


def informative(groups: Sequence[ScoredGroup], metric: str) -> list[bool]:
    """Dynamic sampling's decision (DAPO Eq. 11), made per whole group on `metric` (acc | score | reward):
    keep a group unless every response has the same value. A kept group is kept with all its responses."""
    return algo.informative_groups(torch.tensor([g.metric(metric) for g in groups])).tolist()


def build_train_batch(
    groups: Sequence[ScoredGroup], pad_id: int, mask_truncated: bool, with_rollout_logprobs: bool
) -> TrainBatch:
    """Pad the groups' prompts on the left and responses on the right into one TrainBatch (no advantages yet).

    With `mask_truncated` (overlong filtering, DAPO §3.4) truncated responses get an all-zero loss mask
    (`response_mask`); `generated_mask` still covers them. With `with_rollout_logprobs` the engine's log-probs
    come along (`rollout_logprobs`, zero off the generated tokens, and `rollout_rows`: the rows of groups that
    kept theirs), for the mismatch metrics, the rollout correction and π_old when they may stand for it.
    """
    prompts = [torch.tensor(g.prompt_ids, dtype=torch.long) for g in groups]
    responses = [r for g in groups for r in g.response_ids]
    lengths = torch.tensor([len(r) for r in responses])
    padded = torch.full((len(responses), max(1, int(lengths.max()))), pad_id, dtype=torch.long)
    for i, r in enumerate(responses):
        padded[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    group_index = torch.arange(len(groups)).repeat_interleave(torch.tensor([g.size for g in groups]))
    batch = batch_from_prompts(prompts, group_index, padded, lengths, pad_id)
    if mask_truncated:
        truncated = torch.tensor([t for g in groups for t in g.truncated])
        batch = batch.replace(response_mask=algo.overlong_filter_mask(batch.response_mask, truncated))
    if with_rollout_logprobs and any(g.rollout_logprobs is not None for g in groups):
        logprobs, rows = _rollout_logprobs(groups, padded.shape[1])
        batch = batch.replace(rollout_logprobs=logprobs * batch.generated_mask, rollout_rows=rows)
    return batch


def _rollout_logprobs(groups: Sequence[ScoredGroup], width: int) -> tuple[Tensor, Tensor]:
    """((B, width) the engine's log-probs, zero elsewhere and on the rows of groups without them, (B,) bool
    rows that have them)."""
    out = torch.zeros(sum(g.size for g in groups), width)
    rows = torch.zeros(out.shape[0], dtype=torch.bool)
    row = 0
    for g in groups:
        if g.rollout_logprobs is not None:
            out[row : row + g.size, : g.rollout_logprobs.shape[1]] = g.rollout_logprobs
            rows[row : row + g.size] = True
        row += g.size
    return out, rows
