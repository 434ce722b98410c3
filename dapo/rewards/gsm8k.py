"""GSM8K: the ground truth is the number after `#### `; a response is correct when its final number has
the same exact value.

Where the prediction is read, in order: the last `#### N` in the tail of the response (GSM8K's own
format), else the last `Answer:` line (DAPO format), else a `\\boxed{}` that ends the response
(`text.final_answer`). Within that segment the number is the first numeral after the last `=`
("Answer: 3 + 15 = 18" -> 18); `$`, thousands separators, units and a trailing period are ignored.
There is deliberately no "last number anywhere" fallback: a response without an answer marker scores
as no answer.

Worked example (ground truth "#### 1,000" or "1000"):
    "... so she earns $1,000.\\n#### 1,000"  -> +1
    "...\\nAnswer: $1000.00"                  -> +1
    "... she earns 1000 dollars."            -> −1 (no_answer)

Pure and bounded: only the last GSM8K_TAIL_CHARS characters are read.
"""

from __future__ import annotations

import re

from dapo.rewards.text import final_answer, parse_number, tail
from dapo.rewards.types import ScoreResult, verdict

GSM8K_TAIL_CHARS = 2000
_HASHES = re.compile(r"####\s*([^\n]*)")
_NUMERAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")


def gsm8k_ground_truth(answer: str) -> str:
    """The final answer of a GSM8K solution ("... #### 1,000" -> "1000"); a bare number passes through."""
    text = answer.split("####")[-1].strip()
    return text.replace(",", "").replace("$", "").strip()


def _number_in(segment: str) -> str | None:
    after = segment.split("=")[-1]
    m = _NUMERAL.search(after.replace("$", "").replace("\\", " "))
    return m.group(0) if m else None


def score_gsm8k(response: str | bytes, ground_truth: str) -> ScoreResult:
    """Score one GSM8K response by exact numeric value (ground truth may be a full solution text).

    >>> score_gsm8k("6 * 3 = 18\\n#### 18", "#### 18").acc
    True
    """
    window = tail(response, GSM8K_TAIL_CHARS)
    hashes = _HASHES.findall(window)
    segment = hashes[-1] if hashes else final_answer(window)
    pred = None if segment is None else _number_in(segment)
    if pred is None:
        return verdict(False, None if segment is None else segment.strip())
    gt_value = parse_number(gsm8k_ground_truth(ground_truth))
    pred_value = parse_number(pred)
    return verdict(gt_value is not None and pred_value == gt_value, pred.replace(",", ""))
