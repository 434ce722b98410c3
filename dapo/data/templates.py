"""Prompt templates and rendering.

The DAPO template (exact text of the DAPO authors' aime-2024.parquet and README; DAPO reference §4.2):
prefix, blank line, problem, blank line, suffix. `render_prompt` turns chat messages into the text the
model sees: the tokenizer's chat template with add_generation_prompt=True when it has one (what verl's
RLHFDataset does), a plain fallback otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dapo.data.types import PromptRecord

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_SUFFIX = 'Remember to put your answer on its own line after "Answer:".'


def dapo_prompt(problem: str) -> str:
    """The DAPO user message for a raw problem."""
    return f"{DAPO_PREFIX}\n\n{problem}\n\n{DAPO_SUFFIX}"


def has_dapo_template(text: str) -> bool:
    """Whether a prompt already carries the DAPO template (so it is not wrapped twice)."""
    return text.startswith(DAPO_PREFIX) and text.rstrip().endswith(DAPO_SUFFIX)


def apply_dapo_template(record: PromptRecord) -> PromptRecord:
    """Wrap the last user message in the DAPO template, unless it is already wrapped."""
    messages = list(record.messages)
    last_user = max((k for k, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None or has_dapo_template(messages[last_user].content):
        return record
    messages[last_user] = dataclasses.replace(messages[last_user], content=dapo_prompt(messages[last_user].content))
    return dataclasses.replace(record, messages=tuple(messages))


def render_prompt(record: PromptRecord, tokenizer: Any | None = None) -> str:
    """The prompt text a model is given.

    With a tokenizer that has a chat template: `apply_chat_template(messages, add_generation_prompt=True,
    tokenize=False)`. Otherwise (no tokenizer, or no template): a single user message is its content
    as is; several messages become "Role: content" paragraphs ending with "Assistant:".
    """
    messages = [{"role": m.role, "content": m.content} for m in record.messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*parts, "Assistant:"])
