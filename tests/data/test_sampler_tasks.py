"""The resumable sampler and the arith task."""

from __future__ import annotations

import json

import pytest

from dapo.data import (
    ARITH_CHARSET,
    LEVELS,
    PromptSampler,
    arith_solution,
    make_arith_records,
    make_task_records,
)
from dapo.rewards import score_dapo


def test_sampler_resume_reproduces_future_batches():
    records = make_arith_records("train", 10, seed=1, level=3)
    a = PromptSampler(records, seed=7, batch_size=4)
    for _ in range(3):  # 12 draws: crosses the first epoch boundary
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [[r.uid for r in a.next_batch()] for _ in range(6)]
    b = PromptSampler(records, seed=0, batch_size=1)
    b.load_state_dict(state)
    assert [[r.uid for r in b.next_batch()] for _ in range(6)] == expected


def test_sampler_epochs_cover_everything_and_reshuffle():
    records = make_arith_records("train", 12, seed=2, level=4)
    s = PromptSampler(records, seed=3, batch_size=6)
    epoch0 = [r.uid for r in s.next_batch() + s.next_batch()]
    epoch1 = [r.uid for r in s.next_batch() + s.next_batch()]
    assert sorted(epoch0) == sorted(epoch1) == sorted(r.uid for r in records)
    assert epoch0 != epoch1
    assert [r.uid for r in PromptSampler(records, seed=3, batch_size=12).next_batch()] == epoch0


def test_prompts_given_back_come_first_skip_nothing_and_survive_a_resume():
    records = make_arith_records("train", 12, seed=2, level=4)
    plain = PromptSampler(records, seed=3, batch_size=6)
    expected = [r.uid for r in plain.next_batch() + plain.next_batch()]
    s = PromptSampler(records, seed=3, batch_size=6)
    first = s.next_batch()
    s.give_back(first[2:])  # a round stopped after its first 2 prompts
    state = json.loads(json.dumps(s.state_dict()))
    resumed = PromptSampler(records, seed=0, batch_size=1)
    resumed.load_state_dict(state)
    for sampler in (s, resumed):
        drawn = [r.uid for r in sampler.next_batch() + sampler.next_batch()]
        assert drawn[:4] == expected[2:6]  # the prompts given back, in their order
        assert [r.uid for r in first[:2]] + drawn[:10] == expected  # then the epoch goes on: none skipped


def test_sampler_rejects_state_of_another_data_set():
    s = PromptSampler(make_arith_records("train", 5, seed=0, level=2), seed=0, batch_size=2)
    other = PromptSampler(make_arith_records("train", 5, seed=1, level=2), seed=0, batch_size=2)
    with pytest.raises(ValueError, match="different data set"):
        other.load_state_dict(s.state_dict())


def test_arith_solution_and_answer():
    record = make_arith_records("train", 1, seed=0, level=2)[0]
    solution = arith_solution(record)
    assert solution.splitlines()[-1] == f"Answer: {record.ground_truth}"
    assert score_dapo(solution, record.ground_truth).acc
    assert eval(record.extra["expression"]) == int(record.ground_truth)  # trusted, generated text only


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_arith_splits_are_disjoint_deterministic_and_short(level):
    train = make_arith_records("train", 300, seed=0, level=level)
    test = make_arith_records("test", 40, seed=5, level=level)
    assert {r.messages[0].content for r in train}.isdisjoint({r.messages[0].content for r in test})
    assert make_arith_records("train", 300, seed=0, level=level) == train
    for r in train + test:
        assert len(r.messages[0].content) < 40
        assert set(r.messages[0].content + arith_solution(r)) <= set(ARITH_CHARSET)
        assert all(len(line) <= 24 for line in arith_solution(r).splitlines())
        assert int(r.ground_truth) == eval(r.extra["expression"])  # trusted, generated text only


def test_arith_level_mix_and_errors():
    mixed = make_arith_records("train", 200, seed=0, level=(1, 5))
    assert {r.extra["level"] for r in mixed} == {1, 5}
    with pytest.raises(ValueError, match="split"):
        make_arith_records("val", 1, seed=0)
    with pytest.raises(ValueError, match="level"):
        make_arith_records("train", 1, seed=0, level=9)


def test_arith_chat_asks_the_same_problems_after_a_worked_example():
    plain = make_task_records("arith", "test", 20, seed=0, level=[1, 2])
    chat = make_task_records("arith_chat", "test", 20, seed=0, level=[1, 2])
    assert plain == make_arith_records("test", 20, seed=0, level=(1, 2))  # a list of levels is a mix
    for p, c in zip(plain, chat, strict=True):
        assert (c.uid, c.ground_truth, c.data_source, c.extra) == (p.uid, p.ground_truth, "arith", p.extra)
        example, answer, question = c.messages
        assert (example.role, answer.role, question.role) == ("user", "assistant", "user")
        assert score_dapo(answer.content, "5").acc  # the example shows the scored format
        spoken = p.extra["expression"].replace("+", " + ").replace("-", " - ").replace("*", " * ")
        assert question.content == f"What is {spoken}?"
    with pytest.raises(ValueError, match="unknown built-in task 'words'; known: arith, arith_chat"):
        make_task_records("words", "test", 1, seed=0, level=1)
