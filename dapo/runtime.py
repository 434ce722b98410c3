"""Turning a config into live objects: the policy model, the prompt sets and the sampler.

Side effects (files, tokenisation) live here so that the trainer's step stays about the algorithm.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dapo.config import Config, ConfigError
from dapo.data import BUILTIN_TASKS, PromptRecord, PromptSampler, make_task_records, read_dataset, render_prompt
from dapo.models import load_model_and_tokenizer, resolve_model_path

Say = Callable[[str], None]
BUILTIN_VAL_SIZE = 200  # held-out problems of the built-in task when data.val_size is not set


@dataclass
class RunData:
    """Prompt sets of a run, tokenised once. Records are keyed by `uid`, unique across train and val."""

    train_records: list[PromptRecord]
    val_records: list[PromptRecord]
    prompt_ids: dict[str, list[int]]
    prompt_text: dict[str, str]
    sampler: PromptSampler
    val_layouts: dict[str, str] = dataclasses.field(default_factory=dict)
    """data source -> the layout(s) of the validation files it comes from (`LoadedDataset.layout`), for the
    evaluation table; empty for the built-in task"""


def load_policy(config: Config, say: Say = print):
    """The model to train and its tokenizer, through the real `from_pretrained` path.

    `builtin:tiny-<size>` is built and warm-started on the built-in task the first time (see `dapo.sft`)
    and reused afterwards.
    """
    path, gguf_file = resolve_model_path(config.model.path), config.model.gguf_file
    if path.startswith("builtin:"):
        from dapo.sft import ensure_builtin_base

        path = str(ensure_builtin_base(config, say=say))
    dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_model_and_tokenizer(path, dtype=dtype, gguf_file=gguf_file)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = config.model.lora
    if lora.rank > 0:
        from dapo.models.lora import apply_lora

        model = apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"[model] LoRA rank {lora.rank} on {', '.join(lora.target_modules)}: {trained:,} trained parameters")
    return model.to(config.trainer.device).eval(), tokenizer


def _unique_uids(records: Sequence[PromptRecord], prefix: str) -> list[PromptRecord]:
    seen: dict[str, int] = {}
    out = []
    for record in records:
        count = seen.get(record.uid, 0)
        seen[record.uid] = count + 1
        uid = f"{prefix}{record.uid}" if count == 0 else f"{prefix}{record.uid}#{count}"
        out.append(dataclasses.replace(record, uid=uid))
    return out


def _read_files(
    paths: Sequence[str],
    config: Config,
    say: Say,
    per_file: int | None = None,
    layouts: dict[str, str] | None = None,
) -> list[PromptRecord]:
    """The records of every file in order; with `per_file`, a seeded subset of that many from each file. With
    `layouts`, each data source read is mapped to the layout(s) of its files (joined by " + ")."""
    records: list[PromptRecord] = []
    for path in paths:
        loaded = read_dataset(
            path,
            apply_template=config.data.prompt_template,
            dedup=config.data.dedup,
            skip_bad_rows=config.data.skip_bad_rows,
            default_data_source=config.data.default_data_source,
            prompt_key=config.data.prompt_key,
            answer_key=config.data.answer_key,
        )
        say(
            f"[data] {path}: {len(loaded.records)} prompts, layout {loaded.layout or '-'} "
            f"({loaded.num_duplicates_dropped} duplicates dropped, {loaded.num_bad_rows_skipped} bad rows skipped)"
        )
        if layouts is not None and loaded.layout:
            for source in dict.fromkeys(r.data_source for r in loaded.records):
                names = layouts[source].split(" + ") if source in layouts else []
                if loaded.layout not in names:
                    layouts[source] = " + ".join([*names, loaded.layout])
        if per_file is None:
            records.extend(loaded.records)
        else:
            records.extend(_val_subset(loaded.records, per_file, config.data.seed, say, "data.val_size_per_file"))
    return records


def _tokenise(records, tokenizer, config: Config, run: RunData, say: Say, label: str) -> list[PromptRecord]:
    kept, dropped, truncated = [], 0, 0
    budget = config.data.max_prompt_length
    for record in records:
        text = render_prompt(record, tokenizer)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > budget:
            if config.data.truncation == "error":
                raise ConfigError(
                    f"data.max_prompt_length = {budget}: prompt {record.uid!r} has {len(ids)} tokens "
                    "(set data.truncation=left or drop)"
                )
            if config.data.truncation == "drop":
                dropped += 1
                continue
            ids, truncated = ids[-budget:], truncated + 1
        run.prompt_ids[record.uid] = ids
        run.prompt_text[record.uid] = text
        kept.append(record)
    if dropped or truncated:
        say(
            f"[data] {label}: {dropped} prompts over {budget} tokens dropped, {truncated} left-truncated "
            "(data.max_prompt_length; the default, 64, is the built-in task's)"
        )
    if not kept:
        raise ConfigError(f"{label}: no prompt fits data.max_prompt_length = {budget}")
    return kept


def _val_subset(
    records: list[PromptRecord], size: int | None, seed: int, say: Say, setting: str = "data.val_size"
) -> list[PromptRecord]:
    """`size` of the validation prompts, drawn with `seed` and kept in file order; all of them for None."""
    if size is None or size >= len(records):
        return records
    chosen = sorted(random.Random(f"val-subset:{seed}").sample(range(len(records)), size))
    say(f"[data] validation: a seeded subset of {size} of {len(records)} prompts ({setting})")
    return [records[i] for i in chosen]


def load_run_data(config: Config, tokenizer, say: Say = print) -> RunData:
    d = config.data
    if d.train_files:
        train, val = _read_files(d.train_files, config, say), []
    elif d.task in BUILTIN_TASKS:
        train = make_task_records(d.task, "train", 20_000, seed=d.seed, level=d.task_level)
        val = make_task_records(d.task, "test", d.val_size or BUILTIN_VAL_SIZE, seed=d.seed, level=d.task_level)
    else:
        raise ConfigError(
            f"data.train_files is empty and data.task is not a built-in task ({', '.join(BUILTIN_TASKS)})"
        )
    val_layouts: dict[str, str] = {}
    if d.val_files:  # given files are what is evaluated, with the built-in task's training prompts too
        val = _read_files(d.val_files, config, say, per_file=d.val_size_per_file, layouts=val_layouts)
        val = _val_subset(val, d.val_size, d.seed, say)
    run = RunData([], [], {}, {}, sampler=None, val_layouts=val_layouts)  # type: ignore[arg-type]
    run.train_records = _tokenise(_unique_uids(train, "train:"), tokenizer, config, run, say, "train")
    run.val_records = _tokenise(_unique_uids(val, "val:"), tokenizer, config, run, say, "val") if val else []
    run.sampler = PromptSampler(run.train_records, seed=d.seed, batch_size=d.gen_batch_size)
    return run
