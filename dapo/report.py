"""Training-curve figures from a run's ``metrics.jsonl``: one PNG a person can read at a glance.

`plot_training_curves` draws a grid of panels over training step (held-out accuracy, training accuracy
and reward, entropy, response length and truncation, clip fractions, dynamic-sampling rounds,
losses, ...). `compare_runs` overlays several runs, for ablations. Panels whose metrics are absent are
left out; dense series are drawn raw (faint) with an exponential moving average on top; sparse series
(evaluations) as points joined by lines, with the first and last values written next to them.

matplotlib is imported inside the functions, with the non-interactive Agg backend, so importing this
module costs nothing and works without a display.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapo.metrics import merge_by_step, read_jsonl_metrics

__all__ = [
    "DPI",
    "NCOLS",
    "PANELS",
    "PANEL_SIZE_IN",
    "Panel",
    "Series",
    "compare_runs",
    "figure_size_px",
    "grid_shape",
    "plot_training_curves",
]

DPI = 110
NCOLS = 3
PANEL_SIZE_IN = (5.2, 3.5)  # width, height of one panel, inches
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class Series:
    """Metrics drawn as lines in one panel.

    Attributes:
        pattern: metric name or fnmatch pattern (``val-core/*/acc/mean@*`` matches every source and k).
        label: legend text; None = the matched metric name (without a ``val-core/`` or ``val-aux/`` prefix).
        right: draw on the panel's right-hand axis (a different unit).
    """

    pattern: str
    label: str | None = None
    right: bool = False


@dataclass(frozen=True)
class Panel:
    """One subplot: a title, axis labels and the series it shows (skipped when none is present)."""

    title: str
    ylabel: str
    series: tuple[Series, ...]
    right_ylabel: str | None = None
    log_y: bool = False
    integer_y: bool = False  # counts: whole-number ticks on the left axis


PANELS: tuple[Panel, ...] = (
    # avg@k is logged under val-core, maj@k under val-aux (verl's split; dapo.step.evaluation)
    Panel("Held-out accuracy", "accuracy", (Series("val-core/*/acc/mean@*"), Series("val-aux/*/acc/maj@*"))),
    Panel(
        "Training accuracy and reward",
        "mean over responses",
        (
            Series("critic/acc/mean", "train accuracy"),
            Series("train/acc/mean", "train accuracy"),
            Series("critic/score/mean", "score (reward + shaping)"),
        ),
    ),
    Panel("Policy entropy", "nats / token", (Series("actor/entropy", "entropy"),)),
    Panel(
        "Response length",
        "tokens",
        (
            Series("response_length/mean", "mean length"),
            Series("response_length/clip_ratio", "truncated fraction", right=True),
        ),
        right_ylabel="truncated fraction",
    ),
    Panel(
        "Clip fractions",
        "fraction of tokens",
        (Series("actor/pg_clipfrac", "pg_clipfrac"), Series("actor/pg_clipfrac_lower", "pg_clipfrac_lower")),
    ),
    Panel(
        "Dynamic sampling",
        "generation rounds / step",
        (
            Series("train/num_gen_batches", "generation rounds"),
            Series("train/informative_group_frac", "informative groups", right=True),
            Series("train/*all_correct*frac", None, right=True),
            Series("train/*all_wrong*frac", None, right=True),
        ),
        right_ylabel="fraction of groups",
        integer_y=True,
    ),
    Panel("Policy-gradient loss", "loss", (Series("actor/pg_loss", "pg_loss"),)),
    Panel("Gradient norm (before clipping)", "L2 norm", (Series("actor/grad_norm", "grad_norm"),), log_y=True),
    Panel("KL", "nats / token", (Series("actor/ppo_kl", "ppo_kl (π_old)"), Series("actor/kl_loss", "kl_loss (π_ref)"))),
    Panel(
        "Critic",
        "explained variance",
        (Series("critic/vf_explained_var", "explained variance"), Series("critic/vf_loss", "vf_loss", right=True)),
        right_ylabel="value loss",
    ),
)


# ---------------------------------------------------------------------------------------- data


def _load(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return merge_by_step(read_jsonl_metrics(path)) if path.exists() else []


def _points(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key``, dropping rows without it and non-finite values."""
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(row["step"])
            ys.append(float(v))
    return xs, ys


def _matching_keys(rows: Sequence[Mapping[str, Any]], pattern: str) -> list[str]:
    keys = {k for row in rows for k in row if k != "step"}
    return sorted(k for k in keys if fnmatch.fnmatchcase(k, pattern))


def smoothed(ys: Sequence[float]) -> list[float]:
    """Debiased exponential moving average (TensorBoard's), weight chosen from the series length.

    w = clip(1 − 10/n, 0, 0.9): no smoothing for ≤ 10 points, 0.5 at 20, 0.9 from 100 on.
    """
    n = len(ys)
    w = min(0.9, max(0.0, 1.0 - 10.0 / n)) if n else 0.0
    out, acc = [], 0.0
    for i, y in enumerate(ys, start=1):
        acc = w * acc + (1 - w) * y
        out.append(acc / (1 - w**i) if w > 0 else y)
    return out


def _is_sparse(xs: Sequence[int], rows: Sequence[Mapping[str, Any]]) -> bool:
    # Logged on fewer than half of the run's steps (evaluations): points, not a smoothed line.
    return len(xs) < 0.5 * len(rows)


def _label(key: str) -> str:
    return key.removeprefix("val-core/").removeprefix("val-aux/").replace("/acc/", " acc ")


# ------------------------------------------------------------------------------------- drawing


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (unless one is already chosen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _style_axis(ax, title: str, ylabel: str, log_y: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=11, fontweight="bold", loc="left")
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)  # a twin axis draws its own
    if log_y:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _draw(ax, xs, ys, color: str, label: str, sparse: bool, annotate: bool = True, linestyle="-") -> None:
    if sparse:
        ax.plot(xs, ys, linestyle=linestyle, marker="o", markersize=4.5, linewidth=1.6, color=color, label=label)
        if annotate and xs:  # the latest evaluation is the number a reader looks for
            ax.annotate(
                f"{ys[-1]:.3g}",
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
                color=color,
                fontweight="bold",
            )
        return
    if all(y == int(y) for y in ys):  # counts (generation rounds): dots, a zig-zag line would hide the trend
        ax.plot(xs, ys, linestyle="none", marker=".", markersize=3, alpha=0.35, color=color)
    else:
        raw_marker = "." if len(xs) <= 60 else None
        ax.plot(xs, ys, linestyle=linestyle, marker=raw_marker, markersize=3, linewidth=0.8, alpha=0.28, color=color)
    few = len(xs) <= 30  # little or no smoothing: show where the measurements are
    ax.plot(
        xs,
        smoothed(ys),
        linestyle=linestyle,
        linewidth=1.9,
        color=color,
        label=label,
        marker="o" if few else None,
        markersize=3.5,
    )


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid: up to `NCOLS` columns, 2 x 2 for four panels."""
    ncols = 2 if n_panels == 4 else min(NCOLS, max(1, n_panels))
    return max(1, math.ceil(n_panels / ncols)), ncols


def figure_size_px(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``n_panels`` panels."""
    nrows, ncols = grid_shape(n_panels)
    return round(ncols * PANEL_SIZE_IN[0] * DPI), round((nrows * PANEL_SIZE_IN[1] + 0.6) * DPI)


def _new_figure(plt, n_panels: int):
    nrows, ncols = grid_shape(n_panels)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * PANEL_SIZE_IN[0], nrows * PANEL_SIZE_IN[1] + 0.6),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat


def _empty_figure(plt, out_png: Path, message: str) -> Path:
    fig, (ax,) = _new_figure(plt, 1)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, wrap=True)
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def _summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line: step range and first → last of held-out and training accuracy."""
    parts = [f"steps {rows[0]['step']}–{rows[-1]['step']}"]
    for pattern, name in (("val-core/*/acc/mean@*", "held-out"), ("critic/acc/mean", "train acc")):
        for key in _matching_keys(rows, pattern)[:2]:
            _, ys = _points(rows, key)
            if ys:
                what = f"{name} ({_label(key)})" if name == "held-out" else name
                parts.append(f"{what} {ys[0]:.3f} → {ys[-1]:.3f}")
    return "   ·   ".join(parts)


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path, *, title: str | None = None) -> Path:
    """Render the panels of `PANELS` whose metrics are present into one PNG; returns its path.

    The figure has `NCOLS` columns of panels of `PANEL_SIZE_IN` inches at `DPI`; a run without any
    known metric still gets a PNG that says so (a report at the end of a killed run must not fail).
    """
    plt = pyplot()
    rows = _load(metrics_jsonl)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)

    present: list[tuple[Panel, list[tuple[Series, str]]]] = []
    for panel in PANELS:
        found = [(s, k) for s in panel.series for k in _matching_keys(rows, s.pattern)]
        # Two aliases of one quantity (critic/acc/mean, train/acc/mean): keep the first present.
        labels_seen, unique = set(), []
        for s, k in found:
            lab = s.label or _label(k)
            if lab not in labels_seen:
                labels_seen.add(lab)
                unique.append((s, k))
        if unique:
            present.append((panel, unique))
    if not present:
        return _empty_figure(plt, out_png, f"no plottable metrics yet in\n{metrics_jsonl}")

    fig, axes = _new_figure(plt, len(present))
    for ax, (panel, found) in zip(axes, present, strict=False):
        _style_axis(ax, panel.title, panel.ylabel, panel.log_y)
        if panel.integer_y:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        right = ax.twinx() if any(s.right for s, _ in found) else None
        if right is not None:
            right.set_ylabel(panel.right_ylabel or "", fontsize=9)
            right.spines["top"].set_visible(False)
            right.spines["right"].set_visible(True)
            right.tick_params(labelsize=8)
        for i, (s, key) in enumerate(found):
            xs, ys = _points(rows, key)
            target = right if s.right else ax
            _draw(
                target,
                xs,
                ys,
                _COLORS[i % len(_COLORS)],
                s.label or _label(key),
                _is_sparse(xs, rows),
                linestyle="--" if s.right else "-",
            )
        handles, labels = ax.get_legend_handles_labels()
        if right is not None:
            h2, l2 = right.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)

    heading = title or Path(metrics_jsonl).parent.name or str(metrics_jsonl)
    fig.suptitle(f"{heading}\n{_summary(rows)}", fontsize=12, fontweight="bold")
    fig.text(
        0.004,
        0.996,
        "faint: raw per step\nsolid: moving average\ndots: evaluations",
        ha="left",
        va="top",
        fontsize=7,
        color="0.4",
    )
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def compare_runs(
    jsonl_paths: Mapping[str, str | Path],
    out_png: str | Path,
    keys: Sequence[str],
    *,
    title: str | None = None,
) -> Path:
    """Overlay several runs (name -> metrics.jsonl), one panel per metric; returns the PNG path.

    ``keys`` are metric names or fnmatch patterns (a pattern becomes one panel per matching metric).
    Each run keeps its colour in every panel. Metrics no run has are left out.
    """
    plt = pyplot()
    runs = {name: _load(path) for name, path in jsonl_paths.items()}
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    expanded: list[str] = []
    for pattern in keys:
        for rows in runs.values():
            expanded += [k for k in _matching_keys(rows, pattern) if k not in expanded]
    if not expanded:
        return _empty_figure(plt, out_png, f"none of {list(keys)} in the runs {list(runs)}")

    fig, axes = _new_figure(plt, len(expanded))
    for ax, key in zip(axes, expanded, strict=False):
        _style_axis(ax, key, "")
        for i, (name, rows) in enumerate(runs.items()):
            xs, ys = _points(rows, key)
            if xs:
                _draw(ax, xs, ys, _COLORS[i % len(_COLORS)], name, _is_sparse(xs, rows), annotate=False)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle(title or "Run comparison", fontsize=12, fontweight="bold")
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png
