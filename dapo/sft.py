"""Supervised warm-start (`dapo sft`): gives the RL stage a base model with partial accuracy.

RL on verifiable rewards needs a policy that is sometimes right: a random-init model never writes a
correct answer, so every group is all-wrong and dynamic sampling finds nothing to learn from. The
CPU default therefore builds the tiny model, trains it briefly on the built-in task, and saves it as a
Hugging Face model directory that the RL run loads through `from_pretrained`.

The demonstrations are of two kinds, as in text from the web: worked solutions ("4*2=8 ... Answer: 6")
and, for `shortcut_rate` of them, the bare answer ("Answer: 6"). The base model learns both habits and
picks one at its first token. Answering directly is usually wrong for a 1M-parameter model (~18 % on
held-out level-2 problems against ~50 % when it works the problem out), so the reward favours working
out, and the RL stage has something real to discover: a behaviour that pays on every problem, held-out
ones included (response length grows as it does, as in the DAPO paper's runs). With worked solutions
only, RL on this model mostly has to learn arithmetic facts one problem at a time, which is slow: +5
held-out points in 150 steps of 32 groups from a 500-step warm start at 44.5 % (measured).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dapo.config import Config, WarmStartConfig
from dapo.data import PromptRecord, arith_solution, make_arith_records, render_prompt
from dapo.models import build_char_tokenizer, build_tiny_model, save_pretrained_pair


@dataclass(frozen=True)
class SftSettings:
    steps: int = WarmStartConfig.steps  # the CPU default's recipe, as `model.warm_start` gives it
    """optimiser steps (1000 steps, half of them on shortcuts, give the 1M model ~37 % held-out accuracy
    on level 2: ~50 % when it works the problem out, ~18 % when it answers directly)"""
    batch_size: int = 32
    """examples per step"""
    lr: float = 2e-3
    """AdamW learning rate (peak; linear decay to 10%)"""
    num_examples: int = 4000
    """distinct training problems"""
    shortcut_rate: float = WarmStartConfig.shortcut_rate
    """share of demonstrations that give the bare answer ("Answer: N") instead of the worked solution"""
    repeat_rate: float = WarmStartConfig.repeat_rate
    """share of demonstrations that write their steps 2-3 times over before the answer line (a repetition
    loop, the usual way a model's response overruns its length cap)"""
    seed: int = 0


def check_rates(shortcut_rate: float, repeat_rate: float) -> None:
    """Some demonstrations must stay plain worked solutions."""
    if min(shortcut_rate, repeat_rate) < 0.0 or shortcut_rate + repeat_rate >= 1.0:
        raise ValueError(
            f"shortcut_rate and repeat_rate must be ≥ 0 with a sum below 1, got {shortcut_rate!r} and {repeat_rate!r}"
        )


def repeated_solution(record: PromptRecord, passes: int) -> str:
    """The worked solution with its step lines written `passes` times over, then the answer line."""
    *steps, answer = arith_solution(record).split("\n")
    return "\n".join([*steps * passes, answer])


def sft_examples(
    records: Sequence[PromptRecord], tokenizer, shortcut_rate: float = 0.0, seed: int = 0, repeat_rate: float = 0.0
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) for each record of the built-in task: its worked solution; for a
    `shortcut_rate` share of them (drawn with `seed`) the bare "Answer: N" line; for a `repeat_rate` share
    the worked solution with its steps written 2-3 times over (`repeated_solution`)."""
    check_rates(shortcut_rate, repeat_rate)
    rng = random.Random(f"shortcuts:{seed}")
    repeats = random.Random(f"repeats:{seed}")  # its own stream: repeat_rate=0 leaves the old draws as they were
    examples = []
    for record in records:
        prompt = tokenizer(render_prompt(record, tokenizer), add_special_tokens=False)["input_ids"]
        draw = rng.random()
        if draw < shortcut_rate:
            text = f"Answer: {record.ground_truth}"
        elif draw < shortcut_rate + repeat_rate:
            text = repeated_solution(record, passes=repeats.randint(2, 3))
        else:
            text = arith_solution(record)
        completion = tokenizer(text, add_special_tokens=False)["input_ids"]
        examples.append((prompt, [*completion, tokenizer.eos_token_id]))
    return examples


def _collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (p, c) in enumerate(batch):
        seq = torch.tensor(p + c)
        ids[i, : len(seq)] = seq
        attention[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(c)  # loss on the completion only
    return ids, attention, labels


def supervised_finetune(model, tokenizer, examples, settings: SftSettings, progress: bool = True) -> list[float]:
    """Cross-entropy on the completion tokens; returns the loss of every step."""
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - 0.9 * s / max(1, settings.steps))
    model.train()
    losses = []
    # A live bar on a terminal; in logs (CI, nohup) a bar redraw per step would flood the file.
    bar = tqdm(range(settings.steps), desc="sft", disable=not progress or not sys.stderr.isatty(), leave=False)
    for step in bar:
        batch = rng.sample(examples, min(settings.batch_size, len(examples)))
        ids, attention, labels = _collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if bar.disable and progress and (step + 1) % 100 == 0:
            print(f"[sft] step {step + 1}/{settings.steps} loss {losses[-1]:.3f}", flush=True)
    model.eval()
    return losses


def build_base_model(
    size: str, level: int | Sequence[int], out_dir: Path, settings: SftSettings, say: Callable[[str], None] = print
) -> Path:
    """Build the tiny model and tokenizer, warm-start them on the arith task, save atomically to out_dir."""
    torch.manual_seed(settings.seed)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, size, seed=settings.seed)
    records = make_arith_records("train", settings.num_examples, seed=settings.seed + 1, level=level)
    say(
        f"[sft] warm-starting a tiny-{size} model on {len(records)} arithmetic problems "
        f"(level {level}), {settings.steps} steps"
    )
    examples = sft_examples(records, tokenizer, settings.shortcut_rate, settings.seed, settings.repeat_rate)
    losses = supervised_finetune(model, tokenizer, examples, settings)
    say(f"[sft] loss {losses[0]:.3f} -> {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained_pair(model, tokenizer, tmp)
    os.replace(tmp, out_dir)  # a crash mid-save never leaves a half-written base model behind
    return out_dir


def base_model_name(size: str, level: int | Sequence[int], settings: SftSettings) -> str:
    """Directory name of a warm-started base: names the recipe, so a changed recipe never reuses an old base."""
    levels = level if isinstance(level, int) else "-".join(map(str, level))
    name = f"tiny-{size}-arith-level{levels}-sft{settings.steps}"
    name += f"-shortcut{round(100 * settings.shortcut_rate)}" if settings.shortcut_rate else ""
    return name + (f"-repeat{round(100 * settings.repeat_rate)}" if settings.repeat_rate else "")


def warm_start_settings(config: Config) -> SftSettings:
    """The warm-start recipe of a `builtin:` model: `model.warm_start` over SftSettings' other defaults."""
    w = config.model.warm_start
    return SftSettings(steps=w.steps, shortcut_rate=w.shortcut_rate, repeat_rate=w.repeat_rate)


def _builtin_size(config: Config) -> str:
    return config.model.path.removeprefix("builtin:").removeprefix("tiny-")


def builtin_base_dir(config: Config) -> Path:
    name = base_model_name(_builtin_size(config), config.data.task_level, warm_start_settings(config))
    return Path(config.trainer.output_dir) / "base" / name


def ensure_builtin_base(config: Config, say: Callable[[str], None] = print) -> Path:
    """The warm-started base of `builtin:tiny-<size>`: built the first time, reused afterwards."""
    out_dir = builtin_base_dir(config)
    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    settings = warm_start_settings(config)
    return build_base_model(_builtin_size(config), config.data.task_level, out_dir, settings, say=say)
