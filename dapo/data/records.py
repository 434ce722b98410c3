"""The readers / writer that map data sets onto the typed prompt records of `dapo.data.types`.

Formats read (format="auto" picks by extension and by the fields of the first row):

* verl parquet (and the same schema as jsonl): `data_source`, `prompt` = [{role, content}], `ability`,
  `reward_model` = {ground_truth, style}, `extra_info` (a struct; `index` becomes the uid).
* jsonl with their own field names: GSM8K {question, answer "... #### N"}, MATH-500 {problem, answer,
  unique_id, ...}, AIME 2025 {question, answer}, AMC 2023 {id, problem, answer: float}. The prompt is the
  first of `prompt` / `problem` / `question`, the answer `answer` (GSM8K's text after `#### `); a float
  answer with an integral value becomes an integer string ("27.0" -> "27").

Bad rows raise `DatasetRowError` naming the file, the 0-based row number and the field; with
skip_bad_rows=True they are counted and listed instead. Nothing is dropped silently: duplicates and bad
rows are counted in the returned `LoadedDataset`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dapo.data.templates import apply_dapo_template
from dapo.data.types import ChatMessage, LoadedDataset, PromptRecord
from dapo.errors import DapoError

VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
REWARD_STYLE_KEY = "reward_style"  # where reward_model.style is kept in PromptRecord.extra
DEFAULT_REWARD_STYLE = "rule"
_PROMPT_FIELDS = ("prompt", "problem", "question")
_ID_FIELDS = ("unique_id", "id", "idx")


class DatasetRowError(DapoError, ValueError):
    """A malformed row: the message names the file, the 0-based row number and the field."""

    def __init__(self, path: str | Path, row: int, field_name: str, problem: str) -> None:
        self.path, self.row, self.field_name = str(path), row, field_name
        super().__init__(f"{path}: row {row}: field {field_name!r}: {problem}")


class DatasetFileError(DapoError, FileNotFoundError):
    """A data file that cannot be read at all (missing, or of an unknown format)."""


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


def _infer_source(path: Path, row: Mapping[str, Any]) -> str | None:
    name = path.name.lower()
    for needle, source in (("gsm8k", "gsm8k"), ("math-500", "math500"), ("math500", "math500"),
                           ("aime", "aime"), ("amc", "amc"), ("dapo", "math_dapo")):  # fmt: skip
        if needle in name:
            return source
    if isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    return None


def _record_from_row(
    path: Path, row_number: int, row: Mapping[str, Any], data_source: str | None, default_data_source: str | None
) -> PromptRecord:
    def bad(field_name: str, problem: str) -> DatasetRowError:
        return DatasetRowError(path, row_number, field_name, problem)

    if not isinstance(row, Mapping):
        raise bad("<row>", f"expected an object, got {type(row).__name__}")
    prompt_field = next((f for f in _PROMPT_FIELDS if row.get(f) is not None), None)
    if prompt_field is None:
        raise bad("prompt", f"missing (looked for {', '.join(_PROMPT_FIELDS)})")
    try:
        messages = _messages(row[prompt_field])
    except (TypeError, ValueError) as exc:
        raise bad(prompt_field, str(exc)) from None

    extra: dict[str, Any] = {}
    if "reward_model" in row:  # verl schema
        rm = row["reward_model"]
        gt_field = "reward_model.ground_truth"
        if not isinstance(rm, Mapping) or rm.get("ground_truth") is None:
            raise bad(gt_field, "missing")
        raw_gt = rm["ground_truth"]
        if rm.get("style") is not None:
            extra[REWARD_STYLE_KEY] = rm["style"]
        info = row.get("extra_info") or {}
        if not isinstance(info, Mapping):
            raise bad("extra_info", f"expected a struct, got {type(info).__name__}")
        extra.update(info)
    else:
        gt_field = "answer"
        if row.get("answer") is None:
            raise bad("answer", "missing")
        raw_gt = row["answer"]
        if isinstance(raw_gt, str) and "####" in raw_gt:
            extra["solution"] = raw_gt
            raw_gt = raw_gt.split("####")[-1].replace(",", "")
        extra.update({k: v for k, v in row.items() if k not in (prompt_field, "answer", "data_source", "ability")})
    try:
        ground_truth = normalize_ground_truth(raw_gt)
    except (TypeError, ValueError) as exc:
        raise bad(gt_field, str(exc)) from None

    source = data_source or row.get("data_source") or _infer_source(path, row) or default_data_source
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
) -> LoadedDataset:
    """Read a verl parquet / jsonl / json data set into PromptRecords.

    Args:
        path: the file.
        format: "auto" (by extension), "parquet", "jsonl" or "json".
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
    for row_number, row in enumerate(_FORMATS[fmt](path)):
        num_rows += 1
        try:
            if isinstance(row, _BadJson):
                raise DatasetRowError(path, row_number, "<line>", row.problem)
            record = _record_from_row(path, row_number, row, data_source, default_data_source)
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
    return LoadedDataset(tuple(records), num_rows, duplicates, conflicts, len(bad_rows), tuple(bad_rows))


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
