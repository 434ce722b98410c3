"""dapo.data: typed prompt records, readers/writers for verl parquet and jsonl data sets (benchmark files in
their own layouts, recognised from their columns), prompt templates, a resumable sampler and the built-in
arithmetic task. (The prompt-length budget is applied where prompts are tokenised: `dapo.runtime`,
`data.max_prompt_length` and `data.truncation`.)"""

from dapo.data.records import (
    DatasetFileError,
    DatasetLayoutError,
    DatasetRowError,
    Layout,
    detect_layout,
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
from dapo.data.types import ChatMessage, LoadedDataset, PromptRecord

__all__ = [
    "ARITH_CHARSET",
    "ARITH_DATA_SOURCE",
    "BUILTIN_TASKS",
    "DAPO_PREFIX",
    "DAPO_SUFFIX",
    "LEVELS",
    "ChatMessage",
    "DatasetFileError",
    "DatasetLayoutError",
    "DatasetRowError",
    "Layout",
    "LoadedDataset",
    "PromptRecord",
    "PromptSampler",
    "apply_dapo_template",
    "arith_solution",
    "as_chat_question",
    "detect_layout",
    "has_dapo_template",
    "make_arith_records",
    "make_task_records",
    "normalize_ground_truth",
    "read_dataset",
    "render_prompt",
    "write_verl_parquet",
]
