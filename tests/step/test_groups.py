"""Dynamic sampling decides per whole group, on binary accuracy, as users of other frameworks got burnt by.

The groups are built on the trainer's own path: a generation round (`RolloutBatch`), the real reward step
(the DAPO "Answer:" scorer plus the soft overlong punishment, Eq. 13), `groups_from_rollout`, `informative`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dapo import algo
from dapo.data import ChatMessage, PromptRecord
from dapo.rewards import build_reward_function
from dapo.rollout import RolloutBatch
from dapo.step.groups import build_train_batch, groups_from_rollout, informative, reward_samples

L_MAX, L_CACHE = 24, 8  # the punishment starts past 16 tokens


def _decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def _round(texts_per_prompt: list[list[str]], ground_truth: str = "3"):
    """The scored groups of one generation round whose responses are these texts (one token a character)."""
    n = len(texts_per_prompt[0])
    texts = [t for group in texts_per_prompt for t in group]
    width = max(len(t) for t in texts)
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor([ord(c) for c in text])
    lengths = torch.tensor([len(t) for t in texts])
    mask = torch.arange(width)[None, :] < lengths[:, None]
    prompt = [ord(c) for c in "Compute 1+2"]
    rollout = RolloutBatch(
        prompt_ids=torch.tensor([prompt] * len(texts)),
        prompt_mask=torch.ones((len(texts), len(prompt)), dtype=torch.bool),
        response_ids=ids,
        response_mask=mask,
        logprobs=torch.zeros((len(texts), width)),
        sampling_logprobs=None,
        response_lengths=lengths,
        finish_reasons=("eos",) * len(texts),
        group_index=torch.arange(len(texts_per_prompt)).repeat_interleave(n),
        n=n,
    )
    records = [
        PromptRecord(f"p{i}", (ChatMessage("user", "Compute 1+2"),), ground_truth, "arith", "", {})
        for i in range(len(texts_per_prompt))
    ]
    reward_fn = build_reward_function(
        overlong_enable=True, max_response_length=L_MAX, overlong_buffer_length=L_CACHE, overlong_penalty_factor=1.0
    )
    try:
        scored = reward_fn(reward_samples(records, ["Compute 1+2"] * len(records), rollout, _decode))
    finally:
        reward_fn.close()
    return groups_from_rollout(records, [prompt] * len(records), rollout, scored)


def test_an_all_wrong_group_of_different_lengths_is_dropped_although_its_shaped_rewards_differ():
    wrong = ["1" * k + "\nAnswer: 4" for k in (7, 9, 11, 13)]  # 17, 19, 21, 23 tokens
    (group,) = _round([wrong])
    assert group.acc == (False,) * 4 and group.scores == (-1.0,) * 4
    # Eq. 13: (L_max − L_cache − |y|)/L_cache = (16 − |y|)/8 past 16 tokens: −1/8, −3/8, −5/8, −7/8.
    assert group.rewards == (-1.125, -1.375, -1.625, -1.875)  # a filter on the shaped reward would keep them
    assert informative([group], "acc") == [False]  # the default metric: dropped
    assert informative([group], "reward") == [True]  # why the default is acc, not the shaped reward


def test_all_correct_groups_are_dropped_and_mixed_ones_kept():
    groups = _round([["Answer: 3"] * 4, ["Answer: 3", "Answer: 3", "Answer: 3", "Answer: 7"], ["Answer: 9"] * 4])
    assert informative(groups, "acc") == [False, True, False]


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_a_kept_group_is_kept_whole_and_every_response_gets_an_advantage(estimator):
    (group,) = _round([["Answer: 3", "Answer: 4", "Answer: 5", "Answer: 6"]])
    assert group.acc == (True, False, False, False) and informative([group], "acc") == [True]
    batch = build_train_batch([group], pad_id=0, mask_truncated=False, with_rollout_logprobs=False)
    assert batch.response_mask.shape[0] == 4 and batch.group_index.tolist() == [0, 0, 0, 0]
    advantages = algo.GROUP_ADVANTAGES[estimator](torch.tensor([group.rewards]), 1e-6)[0]
    if estimator == "rloo":
        # Â_i = R_i − mean of the other three: 1 − (−1) = 2 for the right answer, −1 − (1 − 1 − 1)/3 = −2/3 else.
        torch.testing.assert_close(advantages, torch.tensor([2.0, -2 / 3, -2 / 3, -2 / 3]))
    assert (advantages != 0).all() and advantages.sum().abs() < 1e-6


def test_the_batch_knows_its_generated_tokens_apart_from_its_loss_tokens():
    """Overlong filtering zeroes a truncated response's loss mask; `generated_mask` still covers it (log-probs,
    values, GAE and the length statistics read it); the engine's log-probs come along only when asked for."""
    (group,) = _round([["Answer: 3", "1" * 30 + "\nAnswer: 3"]])
    group = dataclasses.replace(group, finish_reasons=("eos", "length"))
    plain = build_train_batch([group], pad_id=0, mask_truncated=False, with_rollout_logprobs=False)
    filtered = build_train_batch([group], pad_id=0, mask_truncated=True, with_rollout_logprobs=True)
    lengths = [len(r) for r in group.response_ids]
    assert filtered.generated_mask.sum(dim=1).tolist() == lengths == plain.response_mask.sum(dim=1).tolist()
    assert filtered.response_mask.sum(dim=1).tolist() == [lengths[0], 0]
    assert plain.rollout_logprobs is None and filtered.rollout_rows.tolist() == [True, True]
    assert torch.equal(filtered.rollout_logprobs, group.rollout_logprobs * filtered.generated_mask)
