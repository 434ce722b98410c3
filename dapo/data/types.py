"""The typed prompt records every data module shares: `ChatMessage`, `PromptRecord` and `LoadedDataset`.

Kept apart from the readers (`dapo.data.records`) and the templates (`dapo.data.templates`), which both use
them, so that neither imports the other for its types. Checkpoints pickle `PromptRecord` and `ChatMessage`
(in the dynamic-sampling buffer); those written before the move name them `dapo.data.records.*`, and
`dapo.checkpoint` maps the old names here when it loads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a data set.

    Attributes:
        uid: stable id: `extra_info.index` (verl), else the row's `unique_id` / `id` / `idx` / `ID` /
            `problem_idx` / `problem_id` field, else the row number in the file.
        messages: the prompt as chat messages; a raw-text prompt is one user message.
        ground_truth: the reference answer the reward function compares against.
        data_source: routes the record to a scorer (see dapo.rewards.route).
        ability: verl's `ability` column ("MATH", "math", ...), "" when absent.
        extra: everything else: verl's `extra_info` fields, other columns, `reward_style` (verl's
            `reward_model.style`) when present, and `answer_parts` / `answer_unit` for an answer in several
            parts or with a unit (`dapo.rewards.parts` reads them).
    """

    uid: str
    messages: tuple[ChatMessage, ...]
    ground_truth: str
    data_source: str
    ability: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The content of the last user message (the problem as posed)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), self.messages[-1].content)


@dataclass(frozen=True)
class LoadedDataset:
    """What `read_dataset` returns: the records plus an account of every row that is not among them.

    Attributes:
        records: the kept records, in file order (first occurrence kept on duplicates).
        num_rows: rows read from the file (before dedup, skipping and `limit`).
        num_duplicates_dropped: rows dropped because their prompt messages repeat an earlier row's.
        num_conflicting_duplicates: of those, rows whose ground truth differs from the kept row's.
        num_bad_rows_skipped: malformed rows skipped (skip_bad_rows=True).
        bad_rows: one "file: row N: field 'f': problem" line per skipped row.
        layout: the layout the file was read with, as the evaluation table names it: "olympiadbench
            (question/final_answer)", "problem/answer", "verl (prompt/reward_model.ground_truth)"; "" for a
            file with no row to read it from.
    """

    records: tuple[PromptRecord, ...]
    num_rows: int
    num_duplicates_dropped: int = 0
    num_conflicting_duplicates: int = 0
    num_bad_rows_skipped: int = 0
    bad_rows: tuple[str, ...] = ()
    layout: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]
