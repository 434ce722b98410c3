"""dapo.data: typed prompt records, readers/writers for verl parquet and jsonl data sets, prompt
templates, prompt-length budgets, a resumable sampler and the built-in arithmetic task."""

from dapo.data.filtering import (
    LENGTH_MODES,
    PromptLengthReport,
    filter_by_prompt_length,
    prompt_token_ids,
    tokenize_prompt,
)
from dapo.data.records import (
    ChatMessage,
    DatasetFileError,
    DatasetRowError,
    LoadedDataset,
    PromptRecord,
    normalize_ground_truth,
    read_dataset,
    write_verl_parquet,
)
from dapo.data.sampler import PromptSampler
from dapo.data.tasks import (
    ARITH_CHARSET,
    ARITH_DATA_SOURCE,
    BUILTIN_TASKS,
    LEVELS,
    arith_solution,
    as_chat_question,
    make_arith_records,
    make_task_records,
)
from dapo.data.templates import DAPO_PREFIX, DAPO_SUFFIX, apply_dapo_template, has_dapo_template, render_prompt

__all__ = [
    "ARITH_CHARSET",
    "ARITH_DATA_SOURCE",
    "BUILTIN_TASKS",
    "DAPO_PREFIX",
    "DAPO_SUFFIX",
    "LENGTH_MODES",
    "LEVELS",
    "ChatMessage",
    "DatasetFileError",
    "DatasetRowError",
    "LoadedDataset",
    "PromptLengthReport",
    "PromptRecord",
    "PromptSampler",
    "apply_dapo_template",
    "arith_solution",
    "as_chat_question",
    "filter_by_prompt_length",
    "has_dapo_template",
    "make_arith_records",
    "make_task_records",
    "normalize_ground_truth",
    "prompt_token_ids",
    "read_dataset",
    "render_prompt",
    "tokenize_prompt",
    "write_verl_parquet",
]
