"""Writing a benchmark's results file: the results beside the machine that measured them."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def write_record(benchmark: str, results: list, out: str | Path, threads: int = 1) -> None:
    record = {
        "benchmark": benchmark,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": threads,
        },
        "results": results,
    }
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
