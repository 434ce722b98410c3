"""The readers / writer that map data sets onto the typed prompt records of `dapo.data.types`.

Files are parquet, jsonl or json (format="auto" picks by extension). What the columns mean, the file's
layout, is recognised from the columns of its first row (`detect_layout`; docs/data.md has the table), unless
`prompt_key` / `answer_key` (`data.prompt_key` / `data.answer_key`) name the columns:

* verl: `data_source`, `prompt` = [{role, content}], `ability`, `reward_model` = {ground_truth, style},
  `extra_info` (a struct; `index` becomes the uid).
* OlympiadBench as Qwen2.5-Math evaluates it: `question`, `final_answer` (a list), `is_multiple_answer`, `unit`,
  `context`. A list of one element is one answer; several elements, or one element with `is_multiple_answer`
  (split at its top-level commas), are an answer in parts, all of which must be right; `unit` is the unit the
  answer is given in; a non-empty `context` is put before the question (`dapo.rewards.parts` scores them).
* a problem and a solution whose last `\\boxed{}` is the answer (Minerva Math, MATH): `problem`, `solution`.
* a problem and its answer: the prompt is the first of `prompt` / `problem` / `question` / `Problem` /
  `Question`, the answer `answer` or `Answer` (GSM8K's text after `#### `; MATH-500, AMC 2023, AIME 2025,
  College Math, GaoKao, HMMT, AIME variants). A float answer with an integral value becomes an integer string
  ("27.0" -> "27"); an answer written `$...$` loses the dollars; a list answer is read like `final_answer`.

An unrecognised layout raises `DatasetLayoutError` (one line naming the columns and the two settings). Bad rows
raise `DatasetRowError` naming the file, the 0-based row number and the field; with skip_bad_rows=True they
are counted and listed instead. Nothing is dropped silently: duplicates and bad rows are counted in the
returned `LoadedDataset`, which also names the layout it recognised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapo.data.templates import apply_dapo_template
from dapo.data.types import ChatMessage, LoadedDataset, PromptRecord
from dapo.errors import DapoError

# dapo.rewards.parts / .text (how answers in parts and boxed solutions are read) are imported where they are
# used: importing the dapo.rewards package imports torch, which `import dapo.data` does not need.

VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
REWARD_STYLE_KEY = "reward_style"  # where reward_model.style is kept in PromptRecord.extra
DEFAULT_REWARD_STYLE = "rule"
_PROMPT_FIELDS = ("prompt", "problem", "question", "Problem", "Question")
_ANSWER_FIELDS = ("answer", "Answer")
_ID_FIELDS = ("unique_id", "id", "idx", "ID", "problem_idx", "problem_id")
# Fields kept out of PromptRecord.extra (they become its other attributes).
_RECORD_FIELDS = ("data_source", "ability")


class DatasetRowError(DapoError, ValueError):
    """A malformed row: the message names the file, the 0-based row number and the field."""

    def __init__(self, path: str | Path, row: int, field_name: str, problem: str) -> None:
        self.path, self.row, self.field_name = str(path), row, field_name
        super().__init__(f"{path}: row {row}: field {field_name!r}: {problem}")


class DatasetFileError(DapoError, FileNotFoundError):
    """A data file that cannot be read at all (missing, or of an unknown format)."""


class DatasetLayoutError(DapoError, ValueError):
    """A data file whose columns match no known layout: the message names its columns and the settings
    (`data.prompt_key`, `data.answer_key`) that say which hold the problem and its answer."""


# --- layouts -------------------------------------------------------------------------------------------
VERL = "verl"
OLYMPIADBENCH = "olympiadbench"
BOXED_SOLUTION = "boxed_solution"  # the answer is the last \boxed{} of a solution
GSM8K_LAYOUT = "gsm8k"
CONFIGURED = "keys"  # data.prompt_key / data.answer_key


@dataclass(frozen=True)
class Layout:
    """What the columns of a data file mean.

    Attributes:
        kind: "verl", "olympiadbench", "boxed_solution" (the answer is the solution's last box), "gsm8k",
            "keys" (set by data.prompt_key / data.answer_key) or "" (a problem column and an answer column).
        prompt_field: the column of the problem (the chat messages for verl).
        answer_field: the column of the answer ("reward_model.ground_truth" for verl).
        source: the data source the layout itself implies (OlympiadBench's), used when neither the row nor the
            file name gives one; None otherwise.
    """

    kind: str
    prompt_field: str
    answer_field: str
    source: str | None = None

    @property
    def name(self) -> str:
        """How the evaluation table and the log name it: "olympiadbench (question/final_answer)", "problem/answer"."""
        fields = f"{self.prompt_field}/{self.answer_field}"
        return f"{self.kind} ({fields})" if self.kind else fields


def _first_field(row: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
    """The first candidate column with a value in `row`, else the first that is present (even as null)."""
    present = [f for f in candidates if f in row]
    return next((f for f in present if row[f] is not None), present[0] if present else None)


def detect_layout(
    path: str | Path, row: Mapping[str, Any], prompt_key: str | None = None, answer_key: str | None = None
) -> Layout:
    """The layout of a file from its first row (table in docs/data.md). `prompt_key` / `answer_key` name the
    columns instead; one of them alone leaves the other to be recognised. DatasetLayoutError when no layout fits."""
    if prompt_key is None and answer_key is None:
        if "reward_model" in row:
            return Layout(VERL, "prompt", "reward_model.ground_truth")
        prompt_field = _first_field(row, _PROMPT_FIELDS)
        if prompt_field is not None:
            if "final_answer" in row:
                olympiad = "is_multiple_answer" in row
                kind, source = (OLYMPIADBENCH, OLYMPIADBENCH) if olympiad else ("", None)
                return Layout(kind, prompt_field, "final_answer", source)
            answer_field = _first_field(row, _ANSWER_FIELDS)
            if answer_field is not None:
                gsm8k = isinstance(row[answer_field], str) and "####" in row[answer_field]
                return Layout(GSM8K_LAYOUT if gsm8k else "", prompt_field, answer_field)
            if "solution" in row:
                return Layout(BOXED_SOLUTION, prompt_field, "solution", "math")
    else:
        prompt_field = prompt_key or _first_field(row, _PROMPT_FIELDS)
        answer_field = answer_key or _first_field(row, (*_ANSWER_FIELDS, "final_answer"))
        if prompt_field is not None and answer_field is not None:
            return Layout(CONFIGURED, prompt_field, answer_field)
    columns = list(row)
    shown = ", ".join(columns[:30]) + (f", ... ({len(columns)} columns)" if len(columns) > 30 else "")
    if prompt_key is None and answer_key is None:
        what = "unknown data layout"
    else:
        given, missing = ("prompt", "answer") if prompt_key else ("answer", "prompt")
        what = f"no {missing} column recognised beside the {given} column data.{given}_key names"
    raise DatasetLayoutError(
        f"{path}: {what}: its first row has the columns {shown or '(none)'}; set data.prompt_key and "
        "data.answer_key to the columns that hold the problem and its answer, e.g. data.prompt_key=question "
        "data.answer_key=answer (docs/data.md lists the layouts recognised without them)"
    )


# --- field conversion ----------------------------------------------------------------------------------
def normalize_ground_truth(value: Any) -> str:
    """A ground truth as a string: integral floats lose ".0" (AMC 2023 stores 27.0), ints and strings
    pass through stripped. TypeError / ValueError for anything else."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a ground truth")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty string")
        return value.strip()
    raise TypeError(f"expected a string or number, got {type(value).__name__}")


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty prompt")
        return (ChatMessage("user", value),)
    if not isinstance(value, Sequence) or isinstance(value, bytes) or len(value) == 0:
        raise TypeError(f"expected a string or a non-empty list of {{role, content}} messages, got {value!r:.80}")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"message {k} must have string 'role' and 'content', got {m!r:.80}")
        out.append(ChatMessage(m["role"], m["content"]))
    return tuple(out)


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _answer_and_parts(value: Any, multiple: bool) -> tuple[str, list[str]]:
    """(ground truth, its parts when there are several) of an answer: a string or number is one answer; a list
    of one element is that answer, split at its top-level commas when `multiple` (OlympiadBench's
    `is_multiple_answer`); a list of several elements has those parts. TypeError / ValueError when malformed."""
    from dapo.rewards.parts import split_answers, unwrap_dollars

    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            raise ValueError("empty list")
        elements = [unwrap_dollars(normalize_ground_truth(v)) for v in value]
        if len(elements) == 1 and multiple:
            elements = split_answers(elements[0])
            if not all(elements):
                raise ValueError(f"an empty part in {value[0]!r:.80}")
    else:
        elements = [unwrap_dollars(normalize_ground_truth(value))]
    if not all(elements):
        raise ValueError("empty answer")
    return ", ".join(elements), elements if len(elements) > 1 else []


_SOURCE_NEEDLES = (
    ("gsm8k", "gsm8k"), ("math-500", "math500"), ("math500", "math500"), ("aime", "aime"), ("amc", "amc"),
    ("olympiad", "olympiadbench"), ("minerva", "minerva_math"), ("college_math", "college_math"),
    ("college-math", "college_math"), ("gaokao", "gaokao"), ("hmmt", "hmmt"), ("dapo", "math_dapo"),
)  # fmt: skip
# A file with one of these names (Qwen2.5-Math's `data/olympiadbench/test.jsonl`) is named by its folder.
_GENERIC_STEMS = ("test", "train", "val", "valid", "validation", "dev", "data")


def _infer_source(path: Path, row: Mapping[str, Any]) -> str | None:
    names = [path.name.lower()]
    if path.stem.lower() in _GENERIC_STEMS:
        names.append(path.parent.name.lower())
    for name in names:
        for needle, source in _SOURCE_NEEDLES:
            if needle in name:
                return source
    if isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    return None


def _record_from_row(
    path: Path,
    row_number: int,
    row: Mapping[str, Any],
    layout: Layout,
    data_source: str | None,
    default_data_source: str | None,
) -> PromptRecord:
    from dapo.rewards.parts import ANSWER_PARTS_KEY, ANSWER_UNIT_KEY, unwrap_dollars
    from dapo.rewards.text import last_boxed

    def bad(field_name: str, problem: str) -> DatasetRowError:
        return DatasetRowError(path, row_number, field_name, problem)

    if not isinstance(row, Mapping):
        raise bad("<row>", f"expected an object, got {type(row).__name__}")
    prompt_field = layout.prompt_field
    if row.get(prompt_field) is None:
        raise bad(prompt_field, "missing")
    prompt = row[prompt_field]
    context = row.get("context") if layout.kind != VERL else None
    if isinstance(context, str) and context.strip() and isinstance(prompt, str) and prompt.strip():
        prompt = f"{context.strip()}\n\n{prompt}"
    try:
        messages = _messages(prompt)
    except (TypeError, ValueError) as exc:
        raise bad(prompt_field, str(exc)) from None

    extra: dict[str, Any] = {}
    gt_field = layout.answer_field
    parts: list[str] = []
    try:
        if layout.kind == VERL:
            rm = row.get("reward_model")
            if not isinstance(rm, Mapping) or rm.get("ground_truth") is None:
                raise bad(gt_field, "missing")
            ground_truth = normalize_ground_truth(rm["ground_truth"])
            if rm.get("style") is not None:
                extra[REWARD_STYLE_KEY] = rm["style"]
            info = row.get("extra_info") or {}
            if not isinstance(info, Mapping):
                raise bad("extra_info", f"expected a struct, got {type(info).__name__}")
            extra.update(info)
        else:
            raw_gt = row.get(gt_field)
            if raw_gt is None:
                raise bad(gt_field, "missing")
            if gt_field == "solution":  # the answer is the solution's last box (Minerva Math, MATH)
                if not isinstance(raw_gt, str):
                    raise TypeError(f"expected a string, got {type(raw_gt).__name__}")
                raw_gt = last_boxed(raw_gt)
                if raw_gt is None or not raw_gt.strip():
                    raise ValueError("no \\boxed{} answer in it")
            elif isinstance(raw_gt, str) and "####" in raw_gt:
                extra["solution"] = raw_gt
                raw_gt = raw_gt.split("####")[-1].replace(",", "")
            ground_truth, parts = _answer_and_parts(raw_gt, _is_true(row.get("is_multiple_answer")))
            kept = (
                (prompt_field, *_RECORD_FIELDS) if gt_field == "solution" else (prompt_field, gt_field, *_RECORD_FIELDS)
            )
            extra.update({k: v for k, v in row.items() if k not in kept})
            unit = row.get("unit")
            if isinstance(unit, str) and unwrap_dollars(unit):
                extra[ANSWER_UNIT_KEY] = unwrap_dollars(unit)
            if parts:
                extra[ANSWER_PARTS_KEY] = parts
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DatasetRowError):
            raise
        raise bad(gt_field, str(exc)) from None

    source = data_source or row.get("data_source") or _infer_source(path, row) or layout.source or default_data_source
    if not isinstance(source, str) or not source:
        raise bad(
            "data_source",
            "missing and not inferable from the file name; set data.default_data_source "
            "(e.g. data.default_data_source=aime for a competition set scored on its final answer)",
        )
    uid_value = extra.get("index")
    if uid_value is None:
        uid_value = next((row[f] for f in _ID_FIELDS if row.get(f) is not None), row_number)
    ability = row.get("ability") or ""
    if not isinstance(ability, str):
        raise bad("ability", f"expected a string, got {type(ability).__name__}")
    return PromptRecord(str(uid_value), messages, ground_truth, source, ability, extra)


# --- row sources ---------------------------------------------------------------------------------------
def _parquet_rows(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    drop = [c for c in table.column_names if c.startswith("__index_level_")]
    yield from table.drop_columns(drop).to_pylist()


class _BadJson:
    def __init__(self, problem: str) -> None:
        self.problem = problem


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                yield json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield _BadJson(f"invalid JSON line ({type(exc).__name__}: {str(exc)[:80]})")


def _json_rows(path: Path) -> Iterator[Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json data set must be a list of objects")
    yield from data


_FORMATS = {"parquet": _parquet_rows, "jsonl": _jsonl_rows, "json": _json_rows}


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("parquet", "pq"):
        return "parquet"
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix == "json":
        return "json"
    raise ValueError(f"cannot tell the format of {path} from its extension: use .parquet, .jsonl or .json")


def read_dataset(
    path: str | Path,
    *,
    format: str = "auto",
    data_source: str | None = None,
    default_data_source: str | None = None,
    apply_template: str | None = None,
    dedup: bool = True,
    skip_bad_rows: bool = False,
    limit: int | None = None,
    prompt_key: str | None = None,
    answer_key: str | None = None,
) -> LoadedDataset:
    """Read a verl parquet / jsonl / json data set into PromptRecords.

    Args:
        path: the file.
        format: "auto" (by extension), "parquet", "jsonl" or "json".
        prompt_key, answer_key: the columns of the problem and of its answer (`data.prompt_key`,
            `data.answer_key`); None = recognised from the first row's columns (`detect_layout`).
        data_source: overrides the file's `data_source` (or the one inferred from the file name).
        default_data_source: used for rows that have no `data_source` and whose file name names none
            (`data.default_data_source`).
        apply_template: None, or "dapo" to wrap raw problems in the DAPO prompt template (prompts that
            already carry it are left as they are, so it is never applied twice).
        dedup: drop rows whose prompt messages (after templating) repeat an earlier row (DAPO-Math-17K
            upstream is ~100x duplicated; aime-2024.parquet is 30 problems x 32 on purpose: pass
            dedup=False to keep its avg@32 layout).
        skip_bad_rows: count and list malformed rows instead of raising DatasetRowError.
        limit: keep at most this many records (after dedup).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"data set not found: {path} (check data.train_files / data.val_files)")
    try:
        fmt = _detect_format(path) if format == "auto" else format
    except ValueError as exc:
        raise DatasetFileError(str(exc)) from None
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {list(_FORMATS)}")
    if apply_template not in (None, "dapo"):
        raise ValueError(f"apply_template must be None or 'dapo', got {apply_template!r}")

    records: list[PromptRecord] = []
    seen: dict[tuple[ChatMessage, ...], str] = {}
    num_rows = duplicates = conflicts = 0
    bad_rows: list[str] = []
    layout: Layout | None = None
    for row_number, row in enumerate(_FORMATS[fmt](path)):
        num_rows += 1
        if layout is None and isinstance(row, Mapping):
            layout = detect_layout(path, row, prompt_key, answer_key)  # from the first row that is an object
        try:
            if isinstance(row, _BadJson):
                raise DatasetRowError(path, row_number, "<line>", row.problem)
            if layout is None:
                raise DatasetRowError(path, row_number, "<row>", f"expected an object, got {type(row).__name__}")
            record = _record_from_row(path, row_number, row, layout, data_source, default_data_source)
        except DatasetRowError as exc:
            if not skip_bad_rows:
                raise
            bad_rows.append(str(exc))
            continue
        if apply_template == "dapo":
            record = apply_dapo_template(record)
        if dedup:
            if record.messages in seen:
                duplicates += 1
                conflicts += seen[record.messages] != record.ground_truth
                continue
            seen[record.messages] = record.ground_truth
        if limit is None or len(records) < limit:
            records.append(record)
    return LoadedDataset(
        tuple(records), num_rows, duplicates, conflicts, len(bad_rows), tuple(bad_rows), layout.name if layout else ""
    )


def write_verl_parquet(records: Iterable[PromptRecord], path: str | Path) -> Path:
    """Write records in the verl RL parquet schema (readable by verl's RLHFDataset and by read_dataset).

    `extra_info` holds the record's extra fields (without `reward_style`) plus `index` = uid when the
    extras do not already carry an index; `reward_model.style` is the kept style or "rule".
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for r in records:
        extra = {k: v for k, v in r.extra.items() if k != REWARD_STYLE_KEY}
        extra.setdefault("index", r.uid)
        rows.append(
            {
                "data_source": r.data_source,
                "prompt": [{"content": m.content, "role": m.role} for m in r.messages],
                "ability": r.ability,
                "reward_model": {
                    "ground_truth": r.ground_truth,
                    "style": r.extra.get(REWARD_STYLE_KEY, DEFAULT_REWARD_STYLE),
                },
                "extra_info": extra,
            }
        )
    if not rows:
        raise ValueError("no records to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
