"""The built-in verifiable task of the CPU default: multi-step integer arithmetic ("arith").

A problem is an expression such as "3+4*2-5"; the prompt is "Compute 3+4*2-5" (short, for a char-level
tokenizer); the answer is its value with the usual precedence (* before + and -, left to right). Each
problem has a worked solution, used for the supervised warm-start, whose last line is `Answer: N` — the
DAPO format, so the DAPO "Answer:" scorer checks it (data_source "arith").

    >>> arith_solution_text("3+4*2-5")
    '4*2=8\\n3+8=11\\n11-5=6\\nAnswer: 6'

Levels (number of operands, operand range, operators):
    1: 2 operands in 0..9, + -          2: 3 operands in 0..9, + - *
    3: 3 operands in 0..20, + - *       4: 4 operands in 0..20, + - *
    5: 5 operands in 0..50, + - *

Splits are disjoint by construction: a problem belongs to "test" iff a hash of its text falls in a fixed
1-in-8 bucket, so no held-out problem text can appear in "train", whatever the seeds. The generator is
deterministic given (split, num, seed, level).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from dapo.data.types import ChatMessage, PromptRecord

ARITH_DATA_SOURCE = "arith"
BUILTIN_TASKS = ("arith", "arith_chat")
PROMPT_PREFIX = "Compute "
# `arith_chat`'s worked example turn, before the question: it shows a chat model the "Answer: N" line the
# DAPO scorer reads. Measured on SmolLM2-135M-Instruct (levels 1 and 2, temperature 1): without it the
# model almost never writes that line (strict accuracy 0-0.4 %, however the instruction is worded), with
# it 29 % / 6 % strict and 53 % / 11 % by the last number (docs/smollm2.md).
CHAT_EXAMPLE = (ChatMessage("user", "What is 2 + 3?"), ChatMessage("assistant", "2 + 3 = 5\nAnswer: 5"))
SPLITS = ("train", "test")
_TEST_BUCKETS = 8  # 1 in 8 problems is held out


@dataclass(frozen=True)
class ArithLevel:
    num_operands: int
    max_operand: int
    operators: str


LEVELS = {
    1: ArithLevel(2, 9, "+-"),
    2: ArithLevel(3, 9, "+-*"),
    3: ArithLevel(3, 20, "+-*"),
    4: ArithLevel(4, 20, "+-*"),
    5: ArithLevel(5, 50, "+-*"),
}

# Every character that can appear in a prompt or a solution (digits, operators, "=", "-" of negative
# numbers, newline, and the letters of "Compute" and "Answer: ").
ARITH_CHARSET = "".join(sorted(set("0123456789+-*=\n " + PROMPT_PREFIX + "Answer:")))


def _split_of(expression: str) -> str:
    digest = hashlib.sha256(expression.encode()).digest()
    return "test" if digest[0] % _TEST_BUCKETS == 0 else "train"


def _solve_steps(expression: str) -> tuple[list[str], int]:
    """Lines "a*b=c" for each product (left to right), then "a±b=c" for each sum; and the value."""
    tokens = [t for t in _tokenize(expression)]
    values, ops, lines = [tokens[0]], [], []
    for op, value in zip(tokens[1::2], tokens[2::2], strict=True):
        if op == "*":
            product = values[-1] * value
            lines.append(f"{values[-1]}*{value}={product}")
            values[-1] = product
        else:
            ops.append(op)
            values.append(value)
    total = values[0]
    for op, value in zip(ops, values[1:], strict=True):
        new = total + value if op == "+" else total - value
        lines.append(f"{total}{op}{value}={new}")
        total = new
    return lines, total


def _tokenize(expression: str) -> list:
    out, number = [], ""
    for ch in expression:
        if ch.isdigit():
            number += ch
        else:
            out += [int(number), ch]
            number = ""
    return [*out, int(number)]


def arith_answer(expression: str) -> int:
    """Value of an arith expression (* before + -, left to right)."""
    return _solve_steps(expression)[1]


def arith_solution_text(expression: str) -> str:
    """Worked solution of an expression, one short step per line, ending with "Answer: N"."""
    lines, value = _solve_steps(expression)
    if not lines:  # a single number: nothing to compute
        return f"Answer: {value}"
    return "\n".join([*lines, f"Answer: {value}"])


def arith_solution(record: PromptRecord) -> str:
    """The worked solution of an arith record (its expression is in extra["expression"])."""
    return arith_solution_text(record.extra["expression"])


def spoken_expression(expression: str) -> str:
    """The expression with spaces around its operators: "3+4*2" -> "3 + 4 * 2" (how a chat model reads it)."""
    return "".join(f" {ch} " if ch in "+-*" else ch for ch in expression)


def as_chat_question(record: PromptRecord) -> PromptRecord:
    """An arith record as the `arith_chat` task asks it: the worked example turn, then "What is 3 + 4 * 2?".

    The problem, its ground truth, uid and data source are unchanged, so the DAPO "Answer:" scorer checks it.
    """
    question = ChatMessage("user", f"What is {spoken_expression(record.extra['expression'])}?")
    return dataclasses.replace(record, messages=(*CHAT_EXAMPLE, question))


def make_task_records(task: str, split: str, num: int, seed: int, level: int | Sequence[int]) -> list[PromptRecord]:
    """`num` records of a built-in task (BUILTIN_TASKS) for `split`; `level` as in `make_arith_records`."""
    if task not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in task {task!r}; known: {', '.join(BUILTIN_TASKS)}")
    records = make_arith_records(split, num, seed, level)
    return [as_chat_question(r) for r in records] if task == "arith_chat" else records


def _random_expression(rng: random.Random, level: ArithLevel) -> str:
    parts = [str(rng.randint(0, level.max_operand))]
    for _ in range(level.num_operands - 1):
        parts += [rng.choice(level.operators), str(rng.randint(0, level.max_operand))]
    return "".join(parts)


def make_arith_records(split: str, num: int, seed: int, level: int | Sequence[int] = 2) -> list[PromptRecord]:
    """`num` arith problems of `split` ("train" or "test").

    Args:
        split: "train" or "test" (disjoint problem sets, see module docstring).
        num: number of records.
        seed: generator seed (the same arguments always give the same records).
        level: a level of LEVELS, or a sequence of levels drawn uniformly per problem.
    Returns:
        Records with data_source "arith", ground truth the value as a string, extra = {"expression",
        "level", "split"}. Problems are distinct while the level's problem space allows it; in a space
        smaller than `num` (level 1 has 200 problems) they repeat.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    levels = (level,) if isinstance(level, int) else tuple(level)
    unknown = [lv for lv in levels if lv not in LEVELS]
    if not levels or unknown:
        raise ValueError(f"unknown arith level(s) {unknown or levels}; known: {sorted(LEVELS)}")
    return list(_generated(split, num, seed, levels))


@functools.lru_cache(maxsize=8)
def _generated(split: str, num: int, seed: int, levels: tuple[int, ...]) -> tuple[PromptRecord, ...]:
    """The records of `make_arith_records`, kept per arguments: a level whose problem space is smaller than
    `num` makes 50·num draws (about 5 s for the CPU default's 20,000 prompts), and every run in a process
    (the tests, `dapo ablate`) asks for the same ones. Records are frozen, so sharing them is safe."""
    rng = random.Random(f"arith:{split}:{seed}:{levels}")
    records, seen, attempts = [], set(), 0
    while len(records) < num:
        attempts += 1
        lv = rng.choice(levels)
        expr = _random_expression(rng, LEVELS[lv])
        if _split_of(expr) != split:
            continue
        if expr in seen and attempts < 50 * num:
            continue
        seen.add(expr)
        records.append(
            PromptRecord(
                uid=f"arith-{split}-{seed}-{len(records)}",
                messages=(ChatMessage("user", PROMPT_PREFIX + expr),),
                ground_truth=str(arith_answer(expr)),
                data_source=ARITH_DATA_SOURCE,
                ability="arithmetic",
                extra={"expression": expr, "level": lv, "split": split},
            )
        )
    return tuple(records)
