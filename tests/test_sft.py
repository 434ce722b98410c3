"""The warm start's data: worked solutions mixed with bare answers, and the base directory naming the recipe."""

import pytest

from dapo.data import arith_solution, make_arith_records
from dapo.models import build_char_tokenizer
from dapo.sft import SftSettings, base_model_name, sft_examples


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


def test_bad_shortcut_rate_is_refused(tok):
    with pytest.raises(ValueError, match="shortcut_rate"):
        sft_examples(make_arith_records("train", 2, seed=0), tok, shortcut_rate=1.0)


def test_base_directory_names_the_recipe():
    assert (
        base_model_name("1m", 2, SftSettings(steps=1000, shortcut_rate=0.5))
        == "tiny-1m-arith-level2-sft1000-shortcut50"
    )
    assert base_model_name("5m", 3, SftSettings(steps=800, shortcut_rate=0.0)) == "tiny-5m-arith-level3-sft800"
