"""The main job (`cpu_dapo`) run to its end with some settings changed, for the benchmarks that compare
settings on it: its metrics rows, one dict per logged step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dapo.config import load_config
from dapo.trainer import Trainer

# No checkpoints, no TensorBoard, no progress bar, never a resume: a benchmark run starts from scratch.
QUIET = {"trainer.save_freq": 0, "trainer.tensorboard": False, "trainer.progress": False, "trainer.resume": "disable"}


def run_main_job(overrides: dict[str, Any]) -> tuple[Trainer, list[dict]]:
    """(the closed trainer, its metrics.jsonl rows) of `cpu_dapo` with `overrides` (and QUIET) applied."""
    settings = {**QUIET, **overrides}
    config = load_config("cpu_dapo", None, [f"{k}={v}" for k, v in settings.items()])
    # The metrics log appends: a run directory left by an earlier benchmark run would mix its rows in.
    shutil.rmtree(Path(config.trainer.output_dir) / config.trainer.run_name, ignore_errors=True)
    trainer = Trainer(config, log_to_console=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer, [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
