"""Turning a config into prompt sets: validation subsets of files and the built-in task's held-out size."""

from __future__ import annotations

import pytest

from dapo.config import ConfigError, load_config
from dapo.models import build_char_tokenizer
from dapo.runtime import BUILTIN_VAL_SIZE, load_run_data


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _val_uids(tok, overrides: list[str]) -> list[str]:
    config = load_config("cpu_dapo", None, ["data.max_prompt_length=4096", *overrides])
    return [r.uid for r in load_run_data(config, tok, say=lambda _: None).val_records]


def test_val_size_draws_a_seeded_subset_of_the_val_files_in_file_order(tok, data_file):
    gsm = data_file("gsm8k-test.jsonl")
    files = [f"data.train_files=[{gsm}]", f"data.val_files=[{gsm}]"]
    every = _val_uids(tok, files)
    assert len(every) == 1319  # no limit set: the whole file, as before
    subset = _val_uids(tok, [*files, "data.val_size=8"])
    assert len(subset) == 8 and set(subset) <= set(every)
    assert subset == sorted(subset, key=every.index)  # file order kept
    assert _val_uids(tok, [*files, "data.val_size=8"]) == subset  # seeded
    assert _val_uids(tok, [*files, "data.val_size=8", "data.seed=2"]) != subset
    assert len(_val_uids(tok, [*files, "data.val_size=5000"])) == 1319  # more than the file: all of it


@pytest.fixture
def few_builtin_problems(monkeypatch):
    import dapo.runtime as runtime

    real = runtime.make_task_records  # 20,000 training problems are not needed to count the held-out ones
    monkeypatch.setattr(
        runtime, "make_task_records", lambda task, split, num, **kw: real(task, split, min(num, 500), **kw)
    )


def test_the_built_in_task_keeps_its_held_out_size(tok, few_builtin_problems):
    assert len(_val_uids(tok, [])) == BUILTIN_VAL_SIZE == 200
    assert len(_val_uids(tok, ["data.val_size=24"])) == 24


def test_val_files_are_evaluated_without_train_files(tok, data_file, few_builtin_problems):
    """`dapo eval model.path=... data.val_files=[...]`: the files, not the built-in task's held-out set."""
    uids = _val_uids(tok, [f"data.val_files=[{data_file('amc-2023.jsonl')}]"])
    assert len(uids) == 40 and all(not u.startswith("val:arith") for u in uids)


def test_val_size_per_file_takes_as_many_from_each_benchmark(tok, data_file, few_builtin_problems):
    files = f"data.val_files=[{data_file('aime-2025.jsonl')},{data_file('gsm8k-test.jsonl')}]"

    def val_records(overrides):
        config = load_config("cpu_dapo", None, ["data.max_prompt_length=4096", files, *overrides])
        return load_run_data(config, tok, say=lambda _: None).val_records

    chosen = val_records(["data.val_size_per_file=12"])
    assert [r.data_source for r in chosen] == ["aime"] * 12 + ["gsm8k"] * 12
    assert [r.uid for r in val_records(["data.val_size_per_file=12"])] == [r.uid for r in chosen]  # seeded
    everything = val_records(["data.val_size_per_file=100"])  # AIME 2025 has 30 problems: all of them
    assert [r.data_source for r in everything].count("aime") == 30
    assert len(val_records(["data.val_size_per_file=100", "data.val_size=50"])) == 50  # then the total
    with pytest.raises(ConfigError, match=r"data\.val_size_per_file"):
        load_config("cpu_dapo", None, ["data.val_size_per_file=0"])


def test_val_size_must_be_positive():
    with pytest.raises(ConfigError, match=r"data\.val_size"):
        load_config("cpu_dapo", None, ["data.val_size=0"])
