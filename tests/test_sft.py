"""The warm start's data: worked solutions mixed with bare answers, and the base directory naming the recipe."""

import pytest

from dapo.data import arith_solution, make_arith_records
from dapo.models import build_char_tokenizer
from dapo.sft import SftSettings, base_model_name, repeated_solution, sft_examples


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_shortcut_examples_are_bare_correct_answers_at_the_asked_rate(tok):
    records = make_arith_records("train", 2000, seed=0, level=2)
    examples = sft_examples(records, tok, shortcut_rate=0.3, seed=0)
    shortcuts = 0
    for record, (_, completion) in zip(records, examples, strict=True):
        assert completion[-1] == tok.eos_token_id
        text = tok.decode(completion[:-1])
        if text == arith_solution(record):
            continue
        assert text == f"Answer: {record.ground_truth}", text  # correct, just without the working
        shortcuts += 1
    # Binomial(2000, 0.3): sd ~20, so a 4-sd band.
    assert 520 <= shortcuts <= 680
    assert sft_examples(records, tok, shortcut_rate=0.3, seed=0) == examples  # seeded
    assert all(
        tok.decode(c[:-1]) == arith_solution(r) for r, (_, c) in zip(records, sft_examples(records, tok), strict=True)
    )


def test_repeated_solution_writes_the_steps_over_then_answers_once():
    record = make_arith_records("train", 1, seed=0, level=2)[0]
    *steps, answer = arith_solution(record).split("\n")
    assert len(steps) == 2  # three operands, two steps
    assert repeated_solution(record, passes=3).split("\n") == steps + steps + steps + [answer]
    assert answer == f"Answer: {record.ground_truth}"


def test_repeat_examples_loop_two_or_three_times_at_the_asked_rate_and_leave_the_other_draws_alone(tok):
    records = make_arith_records("train", 1000, seed=0, level=2)
    plain = sft_examples(records, tok, shortcut_rate=0.3, seed=0)
    mixed = sft_examples(records, tok, shortcut_rate=0.3, seed=0, repeat_rate=0.2)
    kinds = {"shortcut": 0, "repeat": 0, "worked": 0}
    passes_seen = set()
    for record, (_, completion), (_, before) in zip(records, mixed, plain, strict=True):
        text = tok.decode(completion[:-1])
        if text == f"Answer: {record.ground_truth}":
            kinds["shortcut"] += 1
            assert tok.decode(before[:-1]) == text  # the shortcut draws do not move when repeats are added
        elif text == arith_solution(record):
            kinds["worked"] += 1
        else:
            passes = next(p for p in (2, 3) if text == repeated_solution(record, p))
            passes_seen.add(passes)
            kinds["repeat"] += 1
    # Binomial(1000, 0.2) and (1000, 0.3): sd ~13 and ~14.5, so 4-sd bands.
    assert 150 <= kinds["repeat"] <= 250, kinds
    assert 242 <= kinds["shortcut"] <= 358, kinds
    assert passes_seen == {2, 3}


@pytest.mark.parametrize(("shortcut", "repeat"), [(1.0, 0.0), (0.6, 0.4), (0.2, -0.1)])
def test_bad_rates_are_refused(tok, shortcut, repeat):
    with pytest.raises(ValueError, match="shortcut_rate and repeat_rate"):
        sft_examples(make_arith_records("train", 2, seed=0), tok, shortcut_rate=shortcut, repeat_rate=repeat)


def test_base_directory_names_the_recipe():
    assert (
        base_model_name("1m", 2, SftSettings(steps=1000, shortcut_rate=0.5))
        == "tiny-1m-arith-level2-sft1000-shortcut50"
    )
    assert base_model_name("5m", 3, SftSettings(steps=800, shortcut_rate=0.0)) == "tiny-5m-arith-level3-sft800"
    assert (
        base_model_name("1m", 2, SftSettings(steps=1000, shortcut_rate=0.4, repeat_rate=0.2))
        == "tiny-1m-arith-level2-sft1000-shortcut40-repeat20"
    )


def test_the_config_names_the_warm_start_and_refuses_a_bad_one():
    from dapo.config import ConfigError, load_config
    from dapo.sft import builtin_base_dir

    assert builtin_base_dir(load_config("cpu_dapo", None, [])).name == "tiny-1m-arith-level2-sft1000-shortcut50"
    ablation = builtin_base_dir(load_config("cpu_ablation_naive_grpo", None, []))
    assert ablation.name == "tiny-1m-arith-level2-sft1500-shortcut50-repeat10"
    with pytest.raises(ConfigError, match=r"model\.warm_start\.repeat_rate"):
        load_config("cpu_dapo", None, ["model.warm_start.repeat_rate=0.6"])


def test_dapo_sft_refuses_bad_rates_in_one_line(capsys):
    from dapo.cli import main

    assert main(["sft", "--shortcut-rate", "0.6", "--repeat-rate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--repeat-rate" in err and "sum below 1" in err
