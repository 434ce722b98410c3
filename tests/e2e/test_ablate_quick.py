"""`dapo ablate --quick`: the whole CPU ladder runs, the report has one row per rung and its figures, and a
second call finds every run finished and runs nothing."""

from __future__ import annotations

import pytest
from e2e_settings import E2E_LEVEL

from dapo.ablation import LADDERS, VARIANTS
from dapo.cli import main

pytestmark = pytest.mark.slow


def test_ablate_quick_writes_a_report_with_a_row_per_rung_and_skips_finished_runs(base_model_dir, tmp_path, capsys):
    out = tmp_path / "ablation"
    settings = [f"model.path={base_model_dir}", f"data.task_level={E2E_LEVEL}", "trainer.num_threads=2"]
    assert main(["ablate", "--quick", "--seeds", "1", "--out", str(out), *settings]) == 0
    text = (out / "report.md").read_text()
    for preset in LADDERS["cpu"] + VARIANTS["cpu"]:
        assert f"| `{preset}` |" in text  # the tables and the steps-to-baseline table
        assert (out / "runs" / f"{preset}-seed0" / "finished.json").exists()
    for png in ("accuracy.png", "entropy.png", "response_length.png", "clip_fractions.png", "group_outcomes.png"):
        assert (out / png).exists() and f"]({png})" in text
    assert "| `cpu_ablation_legacy_token_mean` | `token-mean-legacy` |" in text
    assert "8 runs to do" in capsys.readouterr().out
    assert main(["ablate", "--quick", "--seeds", "1", "--out", str(out), *settings]) == 0
    assert "0 runs to do" in capsys.readouterr().out
