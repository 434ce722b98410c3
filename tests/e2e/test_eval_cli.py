"""`dapo eval --out`: a policy evaluated from the command line writes its results table (Markdown and JSON)."""

from __future__ import annotations

import json

from e2e_settings import E2E_LEVEL

from dapo.cli import main


def test_eval_writes_the_results_table(base_model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    settings = [
        f"model.path={base_model_dir}", f"data.task_level={E2E_LEVEL}", "data.val_size=8", "rollout.val_n=2",
        f"trainer.output_dir={tmp_path}", "trainer.num_threads=2",
    ]  # fmt: skip
    assert main(["eval", *settings, "--out", str(out)]) == 0
    table = (out / "eval.md").read_text()
    assert "| arith | 8 | " in table and "(k=2)" in table
    summary = json.loads((out / "eval.json").read_text())
    assert summary["k"] == 2 and summary["rows"][0]["source"] == "arith"
    assert summary["rows"][0]["avg@2"] == summary["metrics"]["val-core/arith/acc/mean@2"]
    assert "avg@2" in capsys.readouterr().out
