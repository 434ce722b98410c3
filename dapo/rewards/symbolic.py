"""Symbolic equivalence of two LaTeX answers with math-verify. Runs ONLY inside a `KillablePool` worker.

math-verify parses LaTeX into sympy and compares numerically and symbolically; it handles fractions,
radicals, intervals, tuples, sets, matrices, complex numbers, degrees and percentages. Its timeouts use
SIGALRM, which works in a worker's main thread; the pool's hard deadline is the guarantee on top of it.
Nothing parsed from model output is ever converted to a string or printed here (sympy printing can hang):
the function returns a plain bool.
"""

from __future__ import annotations

import math


def symbolic_equal(gold: str, pred: str, timeout_s: float = 5.0) -> bool:
    """True when math-verify finds `pred` equivalent to `gold`.

    Both are answer bodies (what was inside `\\boxed{}`), re-wrapped in `\\boxed{}` so that math-verify's
    extraction takes the whole expression. The comparison is asymmetric like math-verify's (`gold`
    first): e.g. gold "x=5" accepts pred "5".
    """
    from math_verify import LatexExtractionConfig, parse, verify

    inner = max(1, math.floor(timeout_s / 2))
    config = [LatexExtractionConfig()]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=inner)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=inner)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=inner))
