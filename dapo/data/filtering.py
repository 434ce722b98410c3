"""Prompt-length budget: drop prompts over a token budget, or keep them for left truncation, and say how
many. verl left-truncates over-long prompts (`data.truncation=left`); dropping them is the other common
choice. Either way the count is reported, never silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dapo.data.records import PromptRecord
from dapo.data.templates import render_prompt

LENGTH_MODES = ("drop", "left_truncate")


@dataclass(frozen=True)
class PromptLengthReport:
    """Counts of a prompt-length pass.

    Attributes:
        num_records: records in.
        num_kept: records out.
        num_dropped: over-budget records removed (mode "drop").
        num_truncated: over-budget records kept that `tokenize_prompt` will left-truncate.
        max_prompt_tokens: the budget.
        longest_prompt_tokens: longest rendered prompt seen, in tokens.
        mean_prompt_tokens: mean rendered prompt length, in tokens.
    """

    num_records: int
    num_kept: int
    num_dropped: int
    num_truncated: int
    max_prompt_tokens: int
    longest_prompt_tokens: int
    mean_prompt_tokens: float


def prompt_token_ids(record: PromptRecord, tokenizer: Any) -> list[int]:
    """Token ids of the rendered prompt (`render_prompt`); the chat template supplies any special tokens."""
    return list(tokenizer.encode(render_prompt(record, tokenizer), add_special_tokens=False))


def tokenize_prompt(
    record: PromptRecord, tokenizer: Any, max_prompt_tokens: int, truncation: str = "left"
) -> list[int]:
    """Prompt ids within the budget: the LAST `max_prompt_tokens` ids when truncation="left" (the end of
    the prompt, where the question and the generation prompt are, is what the model must see);
    truncation="error" raises instead."""
    ids = prompt_token_ids(record, tokenizer)
    if len(ids) <= max_prompt_tokens:
        return ids
    if truncation == "left":
        return ids[-max_prompt_tokens:]
    if truncation == "error":
        raise ValueError(f"prompt {record.uid!r} has {len(ids)} tokens > max_prompt_tokens={max_prompt_tokens}")
    raise ValueError(f"truncation must be 'left' or 'error', got {truncation!r}")


def filter_by_prompt_length(
    records: Sequence[PromptRecord], tokenizer: Any, max_prompt_tokens: int, mode: str = "drop"
) -> tuple[list[PromptRecord], PromptLengthReport]:
    """Apply a prompt token budget to records.

    Args:
        records: the prompts.
        tokenizer: a Hugging Face tokenizer (prompts are rendered with `render_prompt`).
        max_prompt_tokens: the budget.
        mode: "drop" removes over-budget records; "left_truncate" keeps them all (tokenize them with
            `tokenize_prompt`, which keeps the last `max_prompt_tokens` tokens) and counts them.
    Returns:
        (records kept, report).
    """
    if mode not in LENGTH_MODES:
        raise ValueError(f"mode must be one of {LENGTH_MODES}, got {mode!r}")
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be ≥ 1, got {max_prompt_tokens}")
    lengths = [len(prompt_token_ids(r, tokenizer)) for r in records]
    over = [n > max_prompt_tokens for n in lengths]
    kept = [r for r, o in zip(records, over, strict=True) if not (o and mode == "drop")]
    num_over = sum(over)
    report = PromptLengthReport(
        num_records=len(records),
        num_kept=len(kept),
        num_dropped=num_over if mode == "drop" else 0,
        num_truncated=num_over if mode == "left_truncate" else 0,
        max_prompt_tokens=max_prompt_tokens,
        longest_prompt_tokens=max(lengths, default=0),
        mean_prompt_tokens=sum(lengths) / len(lengths) if lengths else 0.0,
    )
    return kept, report
