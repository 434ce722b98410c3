"""dapo.report: training-curve and run-comparison PNGs from metrics JSONL files."""

import json
import math
import random
import struct

import pytest

from dapo.report import compare_runs, figure_size_px, grid_shape, plot_training_curves, smoothed

ALL_PANEL_KEYS = (  # one or more keys for each of 9 panels (not the critic panel)
    "critic/acc/mean",
    "critic/score/mean",
    "actor/entropy",
    "response_length/mean",
    "response_length/clip_ratio",
    "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower",
    "train/num_gen_batches",
    "train/informative_group_frac",
    "actor/pg_loss",
    "actor/grad_norm",
    "actor/ppo_kl",
)


def write_run(path, keys=ALL_PANEL_KEYS, steps=40, eval_every=10, seed=0, truncated_tail=False):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for s in range(1, steps + 1):
            row = {"step": s}
            for k in keys:
                row[k] = float(rng.randint(1, 3)) if k == "train/num_gen_batches" else rng.random() + 0.01
            f.write(json.dumps(row) + "\n")
            if eval_every and s % eval_every == 0:
                f.write(json.dumps({"step": s, "val-core/arith/acc/mean@4": s / steps}) + "\n")
        if truncated_tail:
            f.write('{"step": 41, "actor/ent')
    return path


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def ink_fraction(path):
    """Share of pixels that are not (near) white: a blank canvas gives ~0."""
    import matplotlib.image

    img = matplotlib.image.imread(str(path))[..., :3]
    return float((img.min(axis=-1) < 0.9).mean())


def test_grid_shape():
    assert [grid_shape(n) for n in (1, 2, 3, 4, 5, 9, 10)] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 2),
        (2, 3),
        (3, 3),
        (4, 3),
    ]


def test_full_run_gives_all_panels(tmp_path):
    out = plot_training_curves(write_run(tmp_path / "metrics.jsonl"), tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    # held-out, train acc+reward, entropy, length, clip fractions, dynamic sampling, loss, grad norm, KL
    assert png_size(out) == figure_size_px(9)
    assert out.stat().st_size > 50_000
    assert ink_fraction(out) > 0.03


def test_missing_keys_are_skipped(tmp_path):
    path = write_run(tmp_path / "m.jsonl", keys=("actor/entropy", "critic/score/mean"), eval_every=0)
    out = plot_training_curves(path, tmp_path / "c.png", title="two panels")
    assert png_size(out) == figure_size_px(2)  # entropy, and training accuracy/reward
    assert ink_fraction(out) > 0.02


def test_truncated_jsonl_and_non_finite_values(tmp_path):
    path = write_run(tmp_path / "m.jsonl", keys=("actor/grad_norm", "actor/pg_loss"), truncated_tail=True)
    with open(path, "a") as f:  # a NaN/inf step in the middle of the file must not break the plot
        f.write('\n{"step": 50, "actor/grad_norm": Infinity, "actor/pg_loss": NaN}\n')
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        out = plot_training_curves(path, tmp_path / "c.png")
    assert png_size(out) == figure_size_px(3)  # held-out, loss, grad norm


@pytest.mark.parametrize("content", [None, "", '{"step": 1, "unknown/metric": 1.0}\n'])
def test_no_plottable_metrics_still_gives_a_png(tmp_path, content):
    path = tmp_path / "m.jsonl"
    if content is not None:
        path.write_text(content)
    out = plot_training_curves(path, tmp_path / "c.png")
    assert png_size(out) == figure_size_px(1) and ink_fraction(out) > 0.001


def test_compare_runs_overlays_and_expands_patterns(tmp_path):
    a = write_run(tmp_path / "a.jsonl", seed=1)
    b = write_run(tmp_path / "b.jsonl", keys=("critic/acc/mean",), seed=2)
    out = compare_runs(
        {"dapo": a, "grpo": b, "not-run-yet": tmp_path / "missing.jsonl"},
        tmp_path / "cmp.png",
        ["val-core/*/acc/mean@*", "critic/acc/mean", "actor/entropy", "no/such/metric"],
        title="ablation",
    )
    assert png_size(out) == figure_size_px(3)  # no/such/metric is skipped
    assert ink_fraction(out) > 0.02
    empty = compare_runs({"a": a}, tmp_path / "none.png", ["no/such/metric"])
    assert png_size(empty) == figure_size_px(1)


def test_ema_is_debiased_and_off_for_short_series():
    assert smoothed([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]  # ≤ 10 points: no smoothing
    assert all(math.isclose(v, 5.0) for v in smoothed([5.0] * 40))  # debiased: no pull towards 0 at the start
    # n = 20 -> w = 0.5: after a step 0 -> 1 at i = 11, the average covers half the remaining gap each step.
    ys = [0.0] * 10 + [1.0] * 10
    sm = smoothed(ys)
    assert sm[9] == 0.0 and 0.49 < sm[10] < 0.51 and 0.74 < sm[11] < 0.76


def test_the_held_out_panel_finds_every_metric_evaluation_logs():
    """Each pattern of the held-out panel matches a key `evaluate` writes (maj@k lives under val-aux)."""
    from dapo.report import PANELS, _matching_keys

    logged = [{"val-core/arith/acc/mean@4": 0.5, "val-aux/arith/acc/maj@4": 0.6, "val-aux/arith/acc/pass@4": 0.7}]
    (held_out,) = [p for p in PANELS if p.title == "Held-out accuracy"]
    assert [_matching_keys(logged, s.pattern) for s in held_out.series] == [
        ["val-core/arith/acc/mean@4"],
        ["val-aux/arith/acc/maj@4"],
    ]
