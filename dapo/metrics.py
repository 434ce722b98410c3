"""Metric reduction helpers, metric sinks (JSONL, TensorBoard, W&B) and the live console view.

The algorithm core returns unreduced tensors; this module is where they become Python floats
(`stats_dict` is the one place that calls ``.item()``). Metric names follow verl's
(``actor/pg_clipfrac``, ``critic/score/mean``, ``response_length/mean``, ``timing_s/gen``,
``train/num_gen_batches``, ``val-core/<source>/acc/mean@k``, ...); `docs/metrics.md` defines them.

JSONL format: one object per line, ``{"step": N, "<name>": value, ...}``, flushed after each line so
that a killed run loses at most the line being written. Non-finite values are written as Python's
``NaN`` / ``Infinity`` tokens (read back exactly by `read_jsonl_metrics`, ``json`` and pandas).
Several lines may carry the same step (for example training metrics, then evaluation metrics);
`merge_by_step` folds them into one row per step.

Resuming: ``MetricsLogger(run_dir, resume_step=N)`` first drops every JSONL line after step N (they
come from the part of the killed run that the resumed run will redo) and tells TensorBoard to hide
its events after step N, so neither log shows a step twice.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_KEYS",
    "SHORT_LABELS",
    "MetricsLogger",
    "ProgressView",
    "Timer",
    "measure_activation_memory",
    "measure_matmul_peak",
    "merge_by_step",
    "read_jsonl_metrics",
    "stats_dict",
    "truncate_jsonl_after_step",
]

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id.txt"


# ------------------------------------------------------------------------------------- reductions


def stats_dict(prefix: str, values: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """``{prefix}/mean``, ``{prefix}/max``, ``{prefix}/min`` of ``values`` (optionally masked) as floats.

    Example: ``stats_dict("critic/score", scores)`` -> ``{"critic/score/mean": 0.41, ...}``.
    An empty selection gives NaN for all three.
    """
    v = values.detach().float()
    if mask is not None:
        v = v[mask.to(torch.bool)]
    v = v.reshape(-1)
    if v.numel() == 0:
        nan = float("nan")
        return {f"{prefix}/mean": nan, f"{prefix}/max": nan, f"{prefix}/min": nan}
    # One stacked transfer instead of three .item() calls (each would synchronise a GPU).
    mean, vmax, vmin = torch.stack([v.mean(), v.max(), v.min()]).tolist()
    return {f"{prefix}/mean": mean, f"{prefix}/max": vmax, f"{prefix}/min": vmin}


class Timer:
    """Seconds spent in named phases, added up over repeated entries (`timing_s/<name>`, verl's names)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def measure_matmul_peak(
    num_threads: int,
    size: int | None = None,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> float:
    """Achievable matmul FLOP/s in `dtype` on `device` now (the MFU denominator), median of a few runs: 1024² on a
    CPU (with `num_threads`), 8192² on a GPU, where smaller products do not fill the device."""
    size = size or (1024 if device == "cpu" else 8192)
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    gen = torch.Generator().manual_seed(0)  # a private generator: the run's RNG stream stays untouched
    a, b = (torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b)  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2.0 * size**3 / statistics.median(times)


def measure_activation_memory(parameters, run) -> tuple[float, float]:
    """(bytes the forward `run()` keeps for its backward, peak bytes over that forward and the backward of its
    scalar result), from the profiler's CPU allocation events, every allocation counted once. The gradients of
    `parameters` are dropped as they arrive, so only activations (and the head's tensors) count. The plan's
    activation and head terms are pinned against this (tests/workers/test_activation_memory.py)."""
    from torch.profiler import ProfilerActivity, profile

    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in parameters]

    def live_curve(events) -> list[int]:
        live, curve = 0, []
        for e in sorted((e for e in events if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
            live += e.self_cpu_memory_usage
            curve.append(live)
        return curve

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as forward:
            out = run()
        forward_curve = live_curve(forward.events())
        kept = forward_curve[-1] if forward_curve else 0
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as backward:
            out.backward()
            del out
    finally:
        for hook in hooks:
            hook.remove()
    return float(kept), float(max([*forward_curve, *(kept + v for v in live_curve(backward.events()))]))


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r} is a tensor of shape {tuple(value.shape)}, expected one value")
        return float(value.item())
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {key!r} is not a number: {value!r}") from e


# ------------------------------------------------------------------------------------------ JSONL


def _parse_lines(path: Path) -> tuple[list[tuple[dict, str]], list[int]]:
    """Parsed rows with their raw line, and the 1-based numbers of lines that could not be parsed."""
    rows: list[tuple[dict, str]] = []
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad.append(lineno)
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                bad.append(lineno)
                continue
            rows.append((row, line if line.endswith("\n") else line + "\n"))
    return rows, bad


def read_jsonl_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics JSONL file, in file order.

    Lines that are not a JSON object with an integer ``step`` (typically the half-written last line
    of a killed run) are skipped, and a warning says how many and which.
    """
    rows, bad = _parse_lines(Path(path))
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (line {shown})", stacklevel=2)
    return [row for row, _ in rows]


def merge_by_step(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, ascending; later lines of the same step override earlier values."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update(row)
    return [merged[s] for s in sorted(merged)]


def truncate_jsonl_after_step(path: str | Path, step: int) -> None:
    """Drop every line with ``step`` > the given step, and unreadable lines; atomic rewrite.

    Used on resume from checkpoint ``step``: the lines after it were logged by the killed run for steps
    the resumed run will redo. Kept lines are copied byte for byte. A missing file is left missing.
    """
    path = Path(path)
    if not path.exists():
        return
    rows, _ = _parse_lines(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line for row, line in rows if row["step"] <= step)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ sinks


class MetricsLogger:
    """Writes each step's metrics to ``run_dir/metrics.jsonl``, TensorBoard and (optionally) W&B.

    Args:
        run_dir: the run's directory (created if missing).
        jsonl: write ``run_dir/metrics.jsonl``.
        tensorboard: write ``run_dir/tensorboard/`` with ``torch.utils.tensorboard``.
        wandb_project: log to this Weights & Biases project (``wandb`` is imported only then; install
            the ``wandb`` extra). The run id is stored in ``run_dir/wandb_run_id.txt`` so that a resumed
            run continues the same W&B run.
        wandb_run_name: display name of the W&B run.
        config: the resolved run config; sent to W&B and stored as TensorBoard text.
        resume_step: resuming from the checkpoint of this step: drop logged steps after it first.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        jsonl: bool = True,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: Mapping | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / JSONL_NAME if jsonl else None
        self._jsonl: TextIO | None = None
        self._tb = None
        self._wandb = None
        if self.jsonl_path is not None:
            if resume_step is not None:
                truncate_jsonl_after_step(self.jsonl_path, resume_step)
            elif self.jsonl_path.exists() and self.jsonl_path.stat().st_size > 0:
                warnings.warn(
                    f"{self.jsonl_path} already has metrics and this is not a resume: appending",
                    stacklevel=2,
                )
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events the killed run wrote after the checkpoint.
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge, flush_secs=10)
            if config is not None and resume_step is None:
                self._tb.add_text("config", "```\n" + json.dumps(dict(config), indent=1, default=str) + "\n```")
        if wandb_project is not None:
            self._wandb = self._init_wandb(wandb_project, wandb_run_name, config)

    def _init_wandb(self, project: str, name: str | None, config: Mapping | None):
        try:
            import wandb
        except ImportError as e:
            raise ImportError("W&B logging needs the wandb package: pip install 'dapo-rl[wandb]'") from e
        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
        return wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),
            config=dict(config) if config is not None else None,
        )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (numbers or one-element tensors) for training step ``step``."""
        if not metrics:
            return
        values = {k: _to_float(k, v) for k, v in metrics.items()}
        if "step" in values:
            raise ValueError("'step' is reserved for the step number; do not log it as a metric")
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ console view

DEFAULT_KEYS: tuple[str, ...] = (
    "critic/acc/mean",
    "train/acc/mean",
    "critic/score/mean",
    "actor/entropy",
    "response_length/mean",
    "response_length/clip_ratio",
    "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower",
    "train/num_gen_batches",
)
SHORT_LABELS: dict[str, str] = {
    "critic/acc/mean": "acc",
    "train/acc/mean": "acc",
    "critic/score/mean": "score",
    "actor/entropy": "ent",
    "response_length/mean": "len",
    "response_length/clip_ratio": "trunc",
    "actor/pg_clipfrac": "clip",
    "actor/pg_clipfrac_lower": "dual",
    "actor/pg_loss": "loss",
    "actor/grad_norm": "gnorm",
    "train/num_gen_batches": "gen",
    "train/informative_group_frac": "info",
}
_VAL_PATTERN = "val-core/*/acc/mean@*"


def _fmt(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressView:
    """Live console view over TRAINING steps (not generation rounds), with ETA and key numbers.

    Args:
        total_steps: training steps of the whole run.
        initial_step: steps already done (a resumed run), so the bar and ETA start there.
        keys: metric names shown after the bar when present, with short labels from `SHORT_LABELS`.
            The latest held-out accuracy (``val-core/<source>/acc/mean@k``) is always shown and
            stays visible between evaluations.
        disable: show nothing except `write` lines.
        file: stream to draw on (default stderr).
        mode: "bar" (a tqdm bar redrawn in place), "lines" (a plain line per update at most every
            ``line_interval_s``, for logs piped to a file), or "auto" (bar on a terminal, else lines).
        line_interval_s: minimum seconds between two lines in "lines" mode (the last step is
            always printed).
    """

    def __init__(
        self,
        total_steps: int,
        initial_step: int = 0,
        keys: Sequence[str] = DEFAULT_KEYS,
        disable: bool = False,
        *,
        file: TextIO | None = None,
        mode: Literal["auto", "bar", "lines"] = "auto",
        line_interval_s: float = 30.0,
    ):
        self.total_steps = total_steps
        self.initial_step = initial_step
        self.keys = tuple(keys)
        self.disable = disable
        self.file = file if file is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.file, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode = mode
        self.line_interval_s = line_interval_s
        self.step = initial_step
        self._val: dict[str, float] = {}
        self._last: dict[str, float] = {}  # shown until updated: a partial update keeps the rest visible
        self._start = time.monotonic()
        self._last_line = -math.inf
        self._bar = None
        if mode == "bar" and not disable:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=initial_step,
                unit="step",
                desc="train",
                file=self.file,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def postfix(self, metrics: Mapping[str, Any]) -> str:
        """The key numbers as ``label=value`` pairs, e.g. ``acc=0.41 ent=0.62 gen=3 val=0.37``."""
        for key, value in metrics.items():
            if fnmatch.fnmatchcase(key, _VAL_PATTERN):
                self._val[key] = _to_float(key, value)
            elif key in self.keys:
                self._last[key] = _to_float(key, value)
        parts, seen = [], set()
        for key in self.keys:
            label = SHORT_LABELS.get(key, key.rsplit("/", 1)[-1])
            if key in self._last and label not in seen:
                seen.add(label)
                parts.append(f"{label}={_fmt(self._last[key])}")
        sources = {k.split("/")[1] for k in self._val}
        for key, value in sorted(self._val.items()):
            label = "val" if len(sources) == 1 else f"val:{key.split('/')[1]}"
            parts.append(f"{label}={_fmt(value)}")
        return " ".join(parts)

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Show that training step ``step`` (1-based count of finished steps) is done."""
        text = self.postfix(metrics)
        advance = max(0, step - self.step)
        self.step = max(self.step, step)
        if self.disable:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(advance)
            return
        now = time.monotonic()
        if now - self._last_line >= self.line_interval_s or self.step >= self.total_steps:
            self._last_line = now
            elapsed = now - self._start
            done = self.step - self.initial_step
            eta = elapsed / done * (self.total_steps - self.step) if done > 0 else float("nan")
            eta_s = _fmt_seconds(eta) if math.isfinite(eta) else "?"
            self.write(f"step {self.step}/{self.total_steps} [{_fmt_seconds(elapsed)}<{eta_s}] {text}")

    def write(self, text: str) -> None:
        """Print a line above the bar (the bar is redrawn below it)."""
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
