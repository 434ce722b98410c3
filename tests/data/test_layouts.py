"""Benchmark files in their own layouts (OlympiadBench in the Qwen2.5-Math format, Minerva Math, College Math,
GaoKao, HMMT, AIME variants) read as they are, with `data.prompt_key` / `data.answer_key` for any other, and
score right: answers in parts need every part, a unit is dropped only when it is exactly the given one."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dapo.config import ConfigError, load_config
from dapo.data import DatasetLayoutError, DatasetRowError, read_dataset
from dapo.rewards import RewardSample, build_reward_function
from dapo.rewards.parts import answer_spec, split_answers, strip_unit

OLYMPIAD_ROWS = [
    {
        "id": 2231, "subfield": "Algebra", "context": None,
        "question": "Compute $\\frac{3}{6}$.", "solution": ["It is one half."],
        "final_answer": ["$\\frac{1}{2}$"], "is_multiple_answer": False, "unit": None, "answer_type": "Numerical",
        "error": None,
    },
    {
        "id": 2232, "subfield": "Algebra", "context": "Let $f(x)=x^2-5x+6$.",
        "question": "Find all real zeros of $f$.", "solution": ["Factor."],
        "final_answer": ["$2$, $3$"], "is_multiple_answer": True, "unit": None, "answer_type": "Numerical",
        "error": None,
    },
    {
        "id": 2233, "subfield": "Geometry", "context": "",
        "question": "How long is the side of a square of area $16\\,\\mathrm{m}^2$?", "solution": ["Four."],
        "final_answer": ["4"], "is_multiple_answer": False, "unit": "$\\mathrm{m}$", "answer_type": "Numerical",
        "error": None,
    },
    {
        "id": 2234, "subfield": "Combinatorics", "context": None,
        "question": "Give the two smallest primes.", "solution": ["..."],
        "final_answer": ["2", "3"], "is_multiple_answer": True, "unit": None, "answer_type": "Numerical",
        "error": None,
    },
]  # fmt: skip


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _score(records, responses: dict[str, list[str]]) -> dict[str, list[bool]]:
    """acc of each response, per uid, with the built-in reward routing (no overlong shaping)."""
    by_uid = {r.uid: r for r in records}
    samples = [
        RewardSample("p", text, 10, False, by_uid[uid].ground_truth, by_uid[uid].data_source, by_uid[uid].extra)
        for uid, texts in responses.items()
        for text in texts
    ]
    with build_reward_function(
        overlong_enable=False, max_response_length=64, overlong_buffer_length=8, overlong_penalty_factor=1.0
    ) as reward_fn:
        acc = reward_fn(samples).acc.tolist()
    out, k = {}, 0
    for uid, texts in responses.items():
        out[uid] = acc[k : k + len(texts)]
        k += len(texts)
    return out


# --- OlympiadBench (Qwen2.5-Math format) ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_olympiadbench_reads_as_it_is(tmp_path, fmt):
    write = _jsonl if fmt == "jsonl" else _parquet
    path = write(tmp_path / "olympiadbench" / f"test.{fmt}", OLYMPIAD_ROWS)  # Qwen2.5-Math's data/<name>/test.jsonl
    loaded = read_dataset(path)
    assert loaded.layout == "olympiadbench (question/final_answer)" and len(loaded) == 4
    one, zeros, side, primes = loaded.records
    assert [r.uid for r in loaded] == ["2231", "2232", "2233", "2234"]
    assert {r.data_source for r in loaded} == {"olympiadbench"}
    assert one.ground_truth == "\\frac{1}{2}" and answer_spec(one.ground_truth, one.extra) is None  # one answer
    # The context goes before the question; an empty one adds nothing.
    assert zeros.prompt_text == "Let $f(x)=x^2-5x+6$.\n\nFind all real zeros of $f$."
    assert side.prompt_text == OLYMPIAD_ROWS[2]["question"]
    assert zeros.ground_truth == "2, 3" and zeros.extra["answer_parts"] == ["2", "3"]
    assert primes.extra["answer_parts"] == ["2", "3"]  # a list of several: its elements
    assert side.extra["answer_unit"] == "\\mathrm{m}" and "answer_parts" not in side.extra
    assert one.extra["answer_type"] == "Numerical" and one.extra["subfield"] == "Algebra"


def test_olympiadbench_layout_names_the_source_without_a_telling_file_name(tmp_path):
    loaded = read_dataset(_jsonl(tmp_path / "bench.jsonl", OLYMPIAD_ROWS[:1]))
    assert loaded[0].data_source == "olympiadbench" and loaded.layout.startswith("olympiadbench")


def test_olympiadbench_answers_score_right_and_never_accept_a_wrong_one(tmp_path):
    records = read_dataset(_jsonl(tmp_path / "olympiadbench.jsonl", OLYMPIAD_ROWS)).records
    verdicts = _score(
        records,
        {
            "2231": ["so $\\boxed{\\frac{1}{2}}$.", "\\boxed{0.5}", "\\boxed{\\frac{1}{3}}", "no answer"],
            # several answers: all of them, in order; one part alone, a wrong part or another count is wrong
            "2232": ["\\boxed{2, 3}", "\\boxed{2,3}", "\\boxed{$2$, $3$}", "\\boxed{2}", "\\boxed{2, 4}",
                     "\\boxed{2, 3, 4}", "\\boxed{3, 2}", "\\boxed{23}"],
            # the unit: dropped only when it is exactly the given one; a wrong number with the right unit is wrong
            "2233": ["\\boxed{4}", "\\boxed{4\\text{ m}}", "\\boxed{4 \\mathrm{m}}", "\\boxed{4\\,m}",
                     "\\boxed{5\\text{ m}}", "\\boxed{5 m}", "\\boxed{4 km}", "\\boxed{4\\text{ cm}}",
                     "\\boxed{4 \\text{ meters}}", "\\boxed{4 m^2}"],
            "2234": ["\\boxed{2, 3}", "\\boxed{2}", "\\boxed{2, 5}"],
        },
    )  # fmt: skip
    assert verdicts["2231"] == [True, True, False, False]
    assert verdicts["2232"] == [True, True, True, False, False, False, False, False]
    assert verdicts["2233"] == [True, True, True, True, False, False, False, False, False, False]
    assert verdicts["2234"] == [True, False, False]


def test_answers_in_parts_and_units_also_hold_for_the_dapo_scorer(tmp_path):
    rows = [
        {"question": "Two numbers?", "final_answer": ["7", "9"], "is_multiple_answer": True, "unit": None},
        {"question": "How far?", "final_answer": ["12"], "is_multiple_answer": False, "unit": "km"},
        {"question": "Solve.", "final_answer": ["$x=3$, $y=4$"], "is_multiple_answer": True, "unit": None},
    ]
    records = read_dataset(_jsonl(tmp_path / "x.jsonl", rows), data_source="aime").records  # the "Answer:" scorer
    verdicts = _score(
        records,
        {
            "0": ["Answer: 7, 9", "Answer: 7", "Answer: 9, 7", "Answer: 7, 8"],
            "1": ["Answer: 12", "Answer: 12 km", "Answer: 13 km", "Answer: 12 m", "Answer: 12 miles"],
            # a named part must name what its ground-truth part names (each is read by its value)
            "2": ["Answer: x=3, y=4", "Answer: 3, 4", "Answer: y=3, x=4", "Answer: y=4, x=3"],
        },
    )
    assert verdicts == {
        "0": [True, False, False, False], "1": [True, True, False, False, False], "2": [True, True, False, False],
    }  # fmt: skip


def test_parts_split_at_top_level_commas_and_units_only_when_exact():
    assert split_answers("$(1,8,19)$, (2,7,13), [0, 1), \\{1, 2\\}, 1,000") == [
        "(1,8,19)", "(2,7,13)", "[0, 1)", "\\{1, 2\\}", "1,000",
    ]  # fmt: skip
    assert strip_unit("4\\text{ m}", "m") == "4" and strip_unit("4 km", "m") == "4 km"
    assert strip_unit("3 \\, \\mathrm{m/s}", "$\\mathrm{m/s}$") == "3" and strip_unit("3 m s", "ms") == "3 m s"
    assert strip_unit("m", "m") == "m"  # nothing left: not a unit after a value
    # after an operator or a command it is not the unit of a value (`\mu m` is not m); `2\pi m` is
    assert strip_unit("5 \\times m", "m") == "5 \\times m" and strip_unit("5 \\mu m", "m") == "5 \\mu m"
    assert strip_unit("2\\pi\\text{ m}", "m") == "2\\pi" and strip_unit("30^{\\circ}", "$^{\\circ}$") == "30"


# --- Minerva Math, College Math, GaoKao, HMMT, AIME variants -------------------------------------------
def test_minerva_math_answer_is_the_boxed_end_of_its_solution(tmp_path):
    rows = [
        {"problem": "What is 6 times 7?", "solution": "We multiply: $6 \\cdot 7 = \\boxed{42}$.", "type": "Arith",
         "idx": 0},
        {"problem": "Half of 3?", "solution": "It is \\boxed{1} or rather $\\boxed{1.5}$.", "type": "Arith", "idx": 1},
    ]  # fmt: skip
    loaded = read_dataset(_parquet(tmp_path / "minerva_math" / "test.parquet", rows))
    assert loaded.layout == "boxed_solution (problem/solution)"
    assert [(r.uid, r.ground_truth, r.data_source) for r in loaded] == [
        ("0", "42", "minerva_math"), ("1", "1.5", "minerva_math"),
    ]  # fmt: skip
    assert loaded[0].extra["solution"] == rows[0]["solution"]
    assert _score(loaded.records, {"0": ["\\boxed{42}", "\\boxed{43}"], "1": ["\\boxed{3/2}"]}) == {
        "0": [True, False], "1": [True],
    }  # fmt: skip
    with pytest.raises(DatasetRowError, match=r"row 0: field 'solution': no \\boxed"):
        read_dataset(_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "solution": "no box"}]))
    answered = read_dataset(_jsonl(tmp_path / "minerva.jsonl", [{"problem": "p", "answer": "42", "solution": "s"}]))
    assert answered.layout == "problem/answer" and answered[0].ground_truth == "42"


def test_college_math_and_gaokao_read_question_and_answer(tmp_path):
    college_row = {
        "data_source": "college_math.Beginning_and_Intermediate_Algebra", "question_number": "exercise.8.3.20",
        "question": "Simplify: $-3 \\sqrt{18}-\\sqrt{8}+2 \\sqrt{8}+2 \\sqrt{8}$", "answer": "$-3 \\sqrt{2}$",
        "license": "CC BY 3.0", "data_topic": "college_math.algebra",
    }  # fmt: skip
    college = read_dataset(_jsonl(tmp_path / "college_math" / "test.jsonl", [college_row]))
    assert college.layout == "question/answer" and college[0].ground_truth == "-3 \\sqrt{2}"
    assert college[0].data_source == "college_math.Beginning_and_Intermediate_Algebra"  # the row's own; routed MATH
    gaokao_rows = [
        {"question": "1+1?", "answer": "$2$"},
        {"question": "Two values?", "answer": ["$\\frac{1}{2}$", "$\\sqrt{2}$"]},  # a list: both parts
    ]
    gaokao = read_dataset(_jsonl(tmp_path / "gaokao2023en" / "test.jsonl", gaokao_rows))
    assert (gaokao[0].data_source, gaokao[0].ground_truth) == ("gaokao", "2")
    assert gaokao[1].extra["answer_parts"] == ["\\frac{1}{2}", "\\sqrt{2}"]
    # The symbolic checks (math-verify, in the worker pool): an answer in parts is right when all of them hold.
    verdicts = _score(
        [dataclasses.replace(college[0], uid="college"), *gaokao.records],
        {
            "college": ["$\\boxed{-3\\sqrt{2}}$", "\\boxed{-\\sqrt{18}}", "\\boxed{3\\sqrt{2}}"],
            "0": ["\\boxed{2}", "\\boxed{3}"],
            "1": ["\\boxed{\\sin(\\pi/6), \\sqrt{2}}", "\\boxed{\\sin(\\pi/6), \\sqrt{3}}",
                  "\\boxed{\\sin(\\pi/3), \\sqrt{2}}"],
        },
    )  # fmt: skip
    assert verdicts == {"college": [True, True, False], "0": [True, False], "1": [True, False, False]}


@pytest.mark.parametrize(
    ("name", "row", "layout", "uid"),
    [
        ("hmmt_feb_2025.jsonl", {"problem_idx": 7, "problem": "Compute $x$.", "answer": "\\frac{9}{4}"},
         "problem/answer", "7"),
        ("aime_2024.jsonl", {"ID": "2024-I-1", "Problem": "Compute $x$.", "Solution": "...", "Answer": 204},
         "Problem/Answer", "2024-I-1"),
        ("aime_1983_2024.jsonl", {"ID": "1983-1", "Year": 1983, "Problem Number": 1, "Question": "Compute $x$.",
                                  "Answer": 60.0}, "Question/Answer", "1983-1"),
    ],
)  # fmt: skip
def test_hmmt_and_aime_variants(tmp_path, name, row, layout, uid):
    loaded = read_dataset(_jsonl(tmp_path / name, [row]))
    record = loaded[0]
    assert loaded.layout == layout and record.uid == uid and record.prompt_text == "Compute $x$."
    gt = record.ground_truth
    assert gt == {"problem/answer": "\\frac{9}{4}", "Problem/Answer": "204", "Question/Answer": "60"}[layout]
    wrong = "\\boxed{1}" if gt != "1" else "\\boxed{2}"
    assert _score([record], {uid: [f"so \\boxed{{{gt}}}", wrong]}) == {uid: [True, False]}


# --- data.prompt_key / data.answer_key -------------------------------------------------------------------
def test_an_unknown_layout_is_a_one_line_error_naming_its_columns_and_the_keys(tmp_path):
    path = _jsonl(tmp_path / "aime_custom.jsonl", [{"q_text": "1+1?", "gold": "2", "meta": 1}])
    with pytest.raises(DatasetLayoutError) as info:
        read_dataset(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "q_text, gold, meta" in message and "data.prompt_key" in message and "data.answer_key" in message
    loaded = read_dataset(path, prompt_key="q_text", answer_key="gold")
    assert loaded.layout == "keys (q_text/gold)" and loaded[0].prompt_text == "1+1?"
    assert loaded[0].ground_truth == "2" and loaded[0].extra == {"meta": 1}


def test_keys_override_a_recognised_layout_and_a_missing_column_names_file_row_and_field(tmp_path):
    rows = [{"question": "q1", "answer": "1", "alt": ["5", "6"]}, {"question": "q2", "answer": "2"}]
    path = _jsonl(tmp_path / "aime.jsonl", rows)
    with pytest.raises(DatasetRowError) as info:
        read_dataset(path, answer_key="alt")
    assert (info.value.row, info.value.field_name) == (1, "alt") and "aime.jsonl: row 1: field 'alt'" in str(info.value)
    loaded = read_dataset(path, answer_key="alt", skip_bad_rows=True)
    assert loaded.layout == "keys (question/alt)" and loaded[0].ground_truth == "5, 6"
    assert loaded[0].extra["answer_parts"] == ["5", "6"] and loaded.num_bad_rows_skipped == 1
    assert _score(loaded.records, {"0": ["Answer: 5, 6", "Answer: 5"]}) == {"0": [True, False]}
    with pytest.raises(DatasetRowError, match="field 'prob'"):
        read_dataset(path, prompt_key="prob")


def test_the_keys_are_config_fields_with_validation():
    config = load_config("cpu_dapo", None, ["data.prompt_key=problem_text", "data.answer_key=gold"])
    assert (config.data.prompt_key, config.data.answer_key) == ("problem_text", "gold")
    for bad in (["data.prompt_key="], ["data.answer_key=' gold'"], ["data.prompt_key=x", "data.answer_key=x"]):
        with pytest.raises(ConfigError, match=r"data\.(prompt|answer)_key"):
            load_config("cpu_dapo", None, bad)


# --- dapo eval on an OlympiadBench file, no field mapping -------------------------------------------------
def test_dapo_eval_evaluates_an_olympiadbench_file_as_it_is(tmp_path, capsys):
    from dapo.cli import main
    from dapo.models import build_char_tokenizer, build_tiny_model, save_pretrained_pair

    tokenizer = build_char_tokenizer()
    model_dir = save_pretrained_pair(build_tiny_model(tokenizer, "1m", seed=0), tokenizer, tmp_path / "model")
    data = _jsonl(tmp_path / "data" / "olympiadbench" / "test.jsonl", OLYMPIAD_ROWS)
    out = tmp_path / "results"
    settings = [
        # train_files too: otherwise the run draws the built-in task's 20,000 training prompts (~10 s here)
        f"model.path={model_dir}", f"data.train_files=[{data}]", f"data.val_files=[{data}]", "rollout.val_n=1",
        "rollout.max_response_length=8", "algo.overlong.buffer_length=4", "data.max_prompt_length=48",
        f"trainer.output_dir={tmp_path / 'runs'}", "trainer.num_threads=1",
    ]  # fmt: skip
    assert main(["eval", *settings, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "olympiadbench: avg@1 (4 problems x 1)" in printed
    assert "| layout olympiadbench (question/final_answer)" in printed
    assert "file layout |" in (out / "eval.md").read_text()
    (row,) = json.loads((out / "eval.json").read_text())["rows"]
    assert (row["source"], row["problems"], row["layout"]) == (
        "olympiadbench", 4, "olympiadbench (question/final_answer)",
    )  # fmt: skip
