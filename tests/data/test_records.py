"""Readers, writer, templates, dedup and bad-row handling."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from dapo.data import (
    DAPO_PREFIX,
    DatasetFileError,
    DatasetRowError,
    has_dapo_template,
    read_dataset,
    render_prompt,
    write_verl_parquet,
)


def test_verl_parquet_round_trip(tmp_path, data_file):
    src = data_file("aime-2024.parquet")
    first = read_dataset(src, dedup=False)
    assert len(first) == 960 and first[0].uid == str(first[0].extra["index"])
    out = write_verl_parquet(first.records, tmp_path / "out.parquet")
    second = read_dataset(out, dedup=False)
    assert second.records == first.records
    # Same columns and values as the original (minus pandas' index column).
    original = pq.read_table(src).drop_columns(["__index_level_0__"]).to_pylist()
    assert pq.read_table(out).to_pylist() == original


def test_jsonl_sets_map_to_records(data_file):
    amc = read_dataset(data_file("amc-2023.jsonl"))
    assert amc[0].ground_truth == "27" and amc[0].uid == "0" and amc[0].data_source == "amc"
    math500 = read_dataset(data_file("math-500.jsonl"))
    assert math500[0].uid == "test/precalculus/807.json" and math500[0].extra["subject"] == "Precalculus"
    gsm = read_dataset(data_file("gsm8k-test.jsonl"))
    assert gsm[0].ground_truth == "18" and gsm[0].extra["solution"].endswith("#### 18")
    aime25 = read_dataset(data_file("aime-2025.jsonl"), data_source="aime2025")
    assert len(aime25) == 30 and aime25[0].data_source == "aime2025"


def test_jsonl_written_as_verl_parquet_reads_back(tmp_path, data_file):
    records = read_dataset(data_file("math-500.jsonl"), apply_template="dapo").records
    back = read_dataset(write_verl_parquet(records, tmp_path / "m.parquet"))
    assert [(r.uid, r.messages, r.ground_truth, r.data_source) for r in back] == [
        (r.uid, r.messages, r.ground_truth, r.data_source) for r in records
    ]


def test_dedup_reports_counts(data_file):
    aime = read_dataset(data_file("aime-2024.parquet"))
    assert (len(aime), aime.num_rows, aime.num_duplicates_dropped) == (30, 960, 930)
    dapo = read_dataset(data_file("dapo-math-17k.parquet"))
    assert len(dapo) + dapo.num_duplicates_dropped == dapo.num_rows == 17917
    assert len(dapo) == len({r.messages for r in dapo})


def test_dapo_template_is_never_applied_twice(data_file):
    aime = read_dataset(data_file("aime-2024.parquet"), apply_template="dapo")
    assert all(r.messages[0].content.count(DAPO_PREFIX) == 1 for r in aime)
    raw = read_dataset(data_file("aime-2025.jsonl"), apply_template="dapo", limit=3)
    text = raw[0].messages[0].content
    assert has_dapo_template(text) and text.count(DAPO_PREFIX) == 1
    assert text.endswith('\n\nRemember to put your answer on its own line after "Answer:".')
    # Same text layout as the DAPO authors' file: prefix, blank line, problem, blank line, suffix.
    authors = read_dataset(data_file("aime-2024.parquet"))[0]
    assert (
        authors.messages[0].content == DAPO_PREFIX + "\n\n" + authors.extra["raw_problem"] + text[text.rindex("\n\n") :]
    )


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


BAD_ROWS = [
    ({"answer": "1"}, "question"),  # the file's layout (from its first row) is question/answer
    ({"question": "q"}, "answer"),
    ({"question": "", "answer": "1"}, "question"),
    ({"question": "q", "answer": None}, "answer"),
    ({"question": "q", "answer": []}, "answer"),
    ({"question": "q", "answer": [None]}, "answer"),
    ({"prompt": [{"role": "user"}], "answer": "1"}, "prompt"),
    ({"prompt": [{"role": "user", "content": "q"}], "reward_model": {}}, "reward_model.ground_truth"),
    ("{not json", "<line>"),
]


def _good_row_like(row) -> dict:
    """A valid first row of the same layout as `row` (the layout is recognised from a file's first row)."""
    if isinstance(row, dict) and "reward_model" in row:
        return {"prompt": [{"role": "user", "content": "ok"}], "reward_model": {"ground_truth": "1"}}
    if isinstance(row, dict) and "prompt" in row:
        return {"prompt": "ok", "answer": "1"}
    return {"question": "ok", "answer": "1"}


@pytest.mark.parametrize(("row", "field"), BAD_ROWS)
def test_bad_row_names_file_row_and_field(tmp_path, row, field):
    path = _write_jsonl(tmp_path / "x.jsonl", [_good_row_like(row), row])
    with pytest.raises(DatasetRowError) as info:
        read_dataset(path, data_source="gsm8k")
    assert (info.value.row, info.value.field_name) == (1, field)
    assert str(path) in str(info.value) and "row 1" in str(info.value)


def test_skip_bad_rows_counts_them(tmp_path):
    rows = [{"question": "a", "answer": "1"}, *[r for r, _ in BAD_ROWS], {"question": "a", "answer": "1"}]
    loaded = read_dataset(_write_jsonl(tmp_path / "x.jsonl", rows), data_source="gsm8k", skip_bad_rows=True)
    assert len(loaded) == 1 and loaded.num_bad_rows_skipped == len(BAD_ROWS) and loaded.num_duplicates_dropped == 1
    assert loaded.num_rows == len(rows) and all("x.jsonl: row" in line for line in loaded.bad_rows)


def test_missing_data_source_is_an_error_that_names_the_setting(tmp_path):
    with pytest.raises(DatasetRowError, match=r"contest_feb\.jsonl: row 0: field 'data_source'.*default_data_source"):
        read_dataset(_write_jsonl(tmp_path / "contest_feb.jsonl", [{"question": "q", "answer": "1"}]))


def test_default_data_source_applies_only_where_the_row_and_file_name_give_none(tmp_path):
    rows = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2", "data_source": "math_dapo"}]
    loaded = read_dataset(_write_jsonl(tmp_path / "contest_feb.jsonl", rows), default_data_source="aime")
    assert [r.data_source for r in loaded] == ["aime", "math_dapo"]
    named = read_dataset(_write_jsonl(tmp_path / "gsm8k_extra.jsonl", rows[:1]), default_data_source="aime")
    assert named[0].data_source == "gsm8k"  # the file name still says what it is


def test_a_missing_or_unreadable_file_is_a_one_line_user_error(tmp_path):
    with pytest.raises(DatasetFileError, match=r"data set not found: .*nope\.parquet.*data\.train_files"):
        read_dataset(tmp_path / "nope.parquet")
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(DatasetFileError, match=r"\.parquet, \.jsonl or \.json"):
        read_dataset(tmp_path / "rows.csv")


def test_conflicting_duplicates_are_counted(tmp_path):
    rows = [{"question": "q", "answer": "1"}, {"question": "q", "answer": "2"}, {"question": "q", "answer": "1"}]
    loaded = read_dataset(_write_jsonl(tmp_path / "c.jsonl", rows), data_source="gsm8k")
    assert (len(loaded), loaded.num_duplicates_dropped, loaded.num_conflicting_duplicates) == (1, 2, 1)


class _Tok:
    chat_template = "x"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_render_prompt_uses_chat_template_or_plain_fallback(data_file):
    record = read_dataset(data_file("aime-2025.jsonl"), limit=1)[0]
    assert render_prompt(record) == record.messages[0].content
    assert render_prompt(record, _Tok()) == f"<user>{record.messages[0].content}<assistant>"
    no_template = type("T", (), {"chat_template": None})()
    assert render_prompt(record, no_template) == record.messages[0].content


def test_the_record_types_live_in_types_and_templates_does_not_import_the_readers():
    """`dapo.data.types` holds the records; `templates` and `records` both import it, not each other (the old
    `records ↔ templates` circle). The old import path keeps working."""
    import ast
    from pathlib import Path

    from dapo.data import ChatMessage, LoadedDataset, PromptRecord, records, templates, types

    assert records.PromptRecord is PromptRecord and records.ChatMessage is ChatMessage
    assert records.LoadedDataset is LoadedDataset
    assert PromptRecord.__module__ == ChatMessage.__module__ == LoadedDataset.__module__ == "dapo.data.types"
    assert types.PromptRecord is PromptRecord

    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    assert "dapo.data.types" in imported(templates) and "dapo.data.types" in imported(records)
    assert "dapo.data.records" not in imported(templates)
    assert not any(m.startswith("dapo") for m in imported(types) if m)


def test_a_checkpoint_naming_the_records_module_still_loads(tmp_path, monkeypatch):
    """Checkpoints written before the move pickle `dapo.data.records.PromptRecord` / `.ChatMessage` (in the
    dynamic-sampling buffer); they load weights_only into today's `dapo.data.types` classes."""
    from dapo.checkpoint import CheckpointManager
    from dapo.data import ChatMessage, PromptRecord

    record = PromptRecord(
        "7", (ChatMessage("system", "s"), ChatMessage("user", "2+2?")), "4", "math500", "MATH", {"level": 3}
    )
    with monkeypatch.context() as m:  # the classes as they were named at save time (records re-exports them)
        m.setattr(PromptRecord, "__module__", "dapo.data.records")
        m.setattr(ChatMessage, "__module__", "dapo.data.records")
        CheckpointManager(tmp_path).save(1, {"dynamic_sampling": {"buffer": [record]}})
    manifest = json.loads((tmp_path / "global_step_1" / "manifest.json").read_text())
    assert manifest["files"]["dynamic_sampling"]["globals"] == [
        "dapo.data.records.ChatMessage",
        "dapo.data.records.PromptRecord",
    ]
    _, state = CheckpointManager(tmp_path).load()
    (loaded,) = state["dynamic_sampling"]["buffer"]
    assert loaded == record and type(loaded) is PromptRecord and type(loaded.messages[0]) is ChatMessage
