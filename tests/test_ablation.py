"""`dapo ablate`'s report from synthetic finished runs: the table, the interval, steps to the baseline, the
words where a rung moves nothing, the figures; and the plan's checks. (The ladder itself runs in
tests/e2e/test_ablate_quick.py.)"""

from __future__ import annotations

import json
import math

import pytest

from dapo.ablation import LADDERS, VARIANTS, mean_interval, paired_interval, plan, write_report
from dapo.config import ConfigError

KEY = "val-core/arith/acc/mean@4"


def _fake_run(the_plan, preset: str, seed: int, accuracy: list[float], entropy: float = 0.1) -> None:
    """Evaluations at steps 0, 10, 20, ... with the given accuracies, and a training row per step."""
    run_dir = the_plan.run_dir(preset, seed)
    run_dir.mkdir(parents=True)
    rows = []
    for i, acc in enumerate(accuracy):
        rows.append({"step": 10 * i, KEY: acc})
        rows += [{"step": 10 * i + j, "actor/entropy": entropy, "train/num_gen_batches": 1.0} for j in range(1, 10)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run_dir / "finished.json").write_text("{}")


def test_mean_interval_is_the_t_interval_by_hand():
    # mean 0.5, sample sd 0.1, n = 3: half-width t(0.975, 2) · 0.1 / √3 = 4.303 · 0.057735 = 0.24843
    mean, half = mean_interval([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_interval([0.3])[1])


def test_paired_interval_is_the_t_interval_of_the_differences_on_common_seeds():
    # differences 0.1, 0.3 on seeds 0 and 1 (seed 2 has no partner): mean 0.2, sd 0.141421, n = 2
    mean, half, n = paired_interval({0: 0.5, 1: 0.4, 2: 0.9}, {0: 0.6, 1: 0.7})
    assert n == 2 and mean == pytest.approx(0.2) and half == pytest.approx(12.706 * 0.1414214 / math.sqrt(2))
    assert paired_interval({0: 0.5}, {1: 0.5})[2] == 0


def test_the_report_has_a_row_per_rung_the_steps_to_the_baseline_and_honest_words(tmp_path):
    the_plan = plan(None, ["cpu_ablation_naive_grpo", "cpu_ablation_clip_higher"], 2, tmp_path, quick=True)
    _fake_run(the_plan, "cpu_ablation_naive_grpo", 0, [0.30, 0.40, 0.50])
    _fake_run(the_plan, "cpu_ablation_naive_grpo", 1, [0.30, 0.42, 0.52])
    _fake_run(the_plan, "cpu_ablation_clip_higher", 0, [0.30, 0.55, 0.60], entropy=0.3)
    _fake_run(the_plan, "cpu_ablation_clip_higher", 1, [0.30, 0.50, 0.62], entropy=0.3)
    text = write_report(the_plan).read_text()
    # final accuracies: 0.50, 0.52 (mean 51.0, ± 12.706 · 0.01414 / √2 = 12.7) and 0.60, 0.62 (61.0 ± 12.7);
    # late means (all three evaluations here): 0.4, 0.41333 (40.7 ± 12.706 · 0.009428 / √2 = 8.5) and
    # 0.48333, 0.47333 (47.8 ± 6.4); paired differences 0.08333, 0.06: +7.2 ± 12.706 · 0.016499 / √2 = 14.8
    assert "| `cpu_ablation_naive_grpo` | naive_grpo | 51.0 ± 12.7 | 40.7 ± 8.5 |  | 30 |" in text
    assert "| `cpu_ablation_clip_higher` | clip_higher | 61.0 ± 12.7 | 47.8 ± 6.4 | +7.2 ± 14.8 | 38 |" in text
    # the baseline's late 40.7 %: naive GRPO reaches it at steps 20 and 10; clip-higher at steps 10 and 10
    assert "| `cpu_ablation_naive_grpo` | 15 | 2/2 | 1.00 |" in text
    assert "| `cpu_ablation_clip_higher` | 10 | 2/2 | 0.67 |" in text
    assert (
        "clip_higher: +7.2 points (± 14.8, paired over 2 seeds): within the seeds' noise, not resolved at this scale."
        in text
    )
    # what the techniques acted on: only entropy and the generation rounds were logged
    assert "| `cpu_ablation_clip_higher` | — | — | — | 0.3 | 0.3 | — | — | — | 1 | — |" in text
    assert "all of them together (clip_higher vs the first rung): +7.2 points" not in text  # two rungs: no extra line
    for png in ("accuracy.png", "entropy.png", "generation_rounds.png"):
        assert (tmp_path / png).stat().st_size > 10_000 and f"]({png})" in text
    assert not (tmp_path / "clip_fractions.png").exists()  # no run logged them: no empty figure


def test_unfinished_runs_are_left_out_and_an_empty_ladder_says_so(tmp_path):
    the_plan = plan("cpu", None, 1, tmp_path, quick=True)
    assert the_plan.rungs == LADDERS["cpu"] and the_plan.presets == LADDERS["cpu"] + VARIANTS["cpu"]
    assert "No finished rung yet" in write_report(the_plan).read_text()


def test_bad_plans_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown ladder 'x'"):
        plan("x", None, 3, tmp_path, False)
    with pytest.raises(ConfigError, match="--seeds"):
        plan("cpu", None, 0, tmp_path, False)
    with pytest.raises(ConfigError, match="unknown preset"):
        plan(None, ["no_such_preset"], 1, tmp_path, False)
    with pytest.raises(ConfigError, match=r"actor\.lr"):
        plan("cpu", None, 1, tmp_path, False, ["actor.lr=-1"])


def test_a_ladder_of_three_or_more_rungs_also_compares_its_last_rung_with_its_first(tmp_path):
    rungs = ["cpu_ablation_naive_grpo", "cpu_ablation_overlong_filtering", "cpu_ablation_clip_higher"]
    the_plan = plan(None, rungs, 2, tmp_path, quick=True)
    _fake_run(the_plan, rungs[0], 0, [0.30, 0.40, 0.50])
    _fake_run(the_plan, rungs[0], 1, [0.30, 0.42, 0.52])
    for seed in (0, 1):
        _fake_run(the_plan, rungs[1], seed, [0.30, 0.45, 0.55])
    _fake_run(the_plan, rungs[2], 0, [0.30, 0.60, 0.70])
    _fake_run(the_plan, rungs[2], 1, [0.30, 0.62, 0.68])
    text = write_report(the_plan).read_text()
    # late means 0.4, 0.41333 against 0.53333, 0.53333: differences 0.13333, 0.12, so +12.7 ± 12.706 · 0.009428 / √2
    assert (
        "- all of them together (clip_higher vs the first rung): +12.7 points (± 8.5, paired over 2 seeds): "
        "the paper's direction." in text
    )
