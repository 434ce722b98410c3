"""dapo.metrics: reductions, JSONL/TensorBoard/W&B sinks, resume truncation, console view."""

import io
import json
import math
import sys
import types

import pytest
import torch

from dapo.metrics import (
    MetricsLogger,
    ProgressView,
    merge_by_step,
    read_jsonl_metrics,
    stats_dict,
    truncate_jsonl_after_step,
)


def test_stats_dict_values_and_mask():
    v = torch.tensor([[0.5, -1.0], [2.0, 9.0]])
    assert stats_dict("critic/score", v) == {
        "critic/score/mean": 2.625,
        "critic/score/max": 9.0,
        "critic/score/min": -1.0,
    }
    got = stats_dict("response_length", v, mask=torch.tensor([[1, 1], [1, 0]]))
    assert got == {"response_length/mean": 0.5, "response_length/max": 2.0, "response_length/min": -1.0}
    assert all(isinstance(x, float) for x in got.values())
    empty = stats_dict("x", v, mask=torch.zeros(2, 2))
    assert all(math.isnan(x) for x in empty.values())


def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path, config={"seed": 1}) as log:
        log.log(1, {"actor/pg_loss": 0.5, "critic/score/mean": torch.tensor(0.25), "train/num_gen_batches": 2})
        # flushed per line: readable while the logger is still open
        assert read_jsonl_metrics(tmp_path / "metrics.jsonl") == [
            {"step": 1, "actor/pg_loss": 0.5, "critic/score/mean": 0.25, "train/num_gen_batches": 2.0}
        ]
        log.log(2, {"actor/grad_norm": float("inf"), "actor/pg_loss": float("nan")})
        with pytest.raises(TypeError, match="actor/entropy"):
            log.log(3, {"actor/entropy": "high"})
        with pytest.raises(TypeError, match="shape"):
            log.log(3, {"actor/entropy": torch.ones(2)})
    rows = read_jsonl_metrics(tmp_path / "metrics.jsonl")
    assert rows[1]["actor/grad_norm"] == math.inf and math.isnan(rows[1]["actor/pg_loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    pg = acc.Scalars("actor/pg_loss")
    assert [e.step for e in pg] == [1, 2] and pg[0].value == 0.5 and math.isnan(pg[1].value)
    assert [e.step for e in acc.Scalars("critic/score/mean")] == [1]


def test_read_tolerates_truncated_last_line_and_says_so(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a": 3.')
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable line\(s\) \(line 3\)"):
        rows = read_jsonl_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]


def test_truncate_after_step_and_resume_logger(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for s in range(1, 6):
            log.log(s, {"a": float(s)})
        log.log(5, {"val-core/x/acc/mean@4": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "a": 6')  # the killed run's half line
    # The run resumes from the checkpoint of step 3: steps 4.. are redone and must appear once.
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=3) as log:
        assert [r["step"] for r in read_jsonl_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
        for s in range(4, 7):
            log.log(s, {"a": float(s) + 0.5})
    rows = read_jsonl_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["a"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5), (5, 5.5), (6, 6.5)]
    truncate_jsonl_after_step(tmp_path / "missing.jsonl", 3)  # no file: no-op
    assert not (tmp_path / "missing.jsonl").exists()


def test_tensorboard_hides_redone_steps_after_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, jsonl=False) as log:
        for s in range(1, 6):
            log.log(s, {"a": float(s)})
    with MetricsLogger(tmp_path, jsonl=False, resume_step=3) as log:
        for s in range(4, 6):
            log.log(s, {"a": float(s) + 0.5})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5), (5, 5.5)]


def test_fresh_logger_on_existing_log_warns(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.warns(UserWarning, match="not a resume"):
        MetricsLogger(tmp_path, tensorboard=False).close()


def test_merge_by_step():
    rows = [{"step": 2, "a": 1.0}, {"step": 1, "a": 0.0}, {"step": 2, "v": 0.5, "a": 1.5}]
    assert merge_by_step(rows) == [{"step": 1, "a": 0.0}, {"step": 2, "a": 1.5, "v": 0.5}]


def test_wandb_is_lazy_and_resumes_same_run(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw))
        return FakeRun()

    fake = types.SimpleNamespace(init=init, util=types.SimpleNamespace(generate_id=lambda: "abc123"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path, tensorboard=False, wandb_project="p", config={"lr": 1e-6}) as log:
        log.log(1, {"a": 1.0})
    fake.util.generate_id = lambda: "different"
    MetricsLogger(tmp_path, tensorboard=False, wandb_project="p", resume_step=1).close()
    inits = [c[1] for c in calls if c[0] == "init"]
    assert [i["id"] for i in inits] == ["abc123", "abc123"]
    assert inits[0]["config"] == {"lr": 1e-6} and inits[0]["project"] == "p"
    assert ("log", 1, {"a": 1.0}) in calls and calls.count(("finish",)) == 2

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="dapo-rl\\[wandb\\]"):
        MetricsLogger(tmp_path / "other", tensorboard=False, wandb_project="p")


def test_progress_bar_counts_training_steps_with_key_numbers():
    out = io.StringIO()
    view = ProgressView(total_steps=10, initial_step=2, file=out, mode="bar")
    view.update(3, {"critic/acc/mean": 0.5, "actor/entropy": 0.61234, "train/num_gen_batches": 3})
    view.update(4, {"critic/acc/mean": 0.55, "val-core/arith/acc/mean@4": 0.375, "actor/pg_clipfrac": 0.01})
    view.update(5, {"critic/acc/mean": 0.6})  # the last held-out accuracy stays visible
    view.write("evaluation done")
    view.close()
    text = out.getvalue()
    assert "5/10" in text and "step" in text
    final = text.rsplit("\r", 1)[-1]  # the last redraw; values not updated at step 5 stay visible
    assert "acc=0.6 ent=0.612 clip=0.01 gen=3 val=0.375" in final
    assert "evaluation done" in text
    assert view.step == 5


def test_progress_lines_mode_for_logs_and_multiple_val_sources():
    out = io.StringIO()
    view = ProgressView(total_steps=3, file=out, mode="lines", line_interval_s=0.0)
    view.update(1, {"critic/score/mean": 0.25, "val-core/a/acc/mean@1": 0.1, "val-core/b/acc/mean@1": 0.2})
    view.update(3, {"critic/score/mean": 0.5})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 1/3 [") and "score=0.25 val:a=0.1 val:b=0.2" in lines[0]
    assert lines[1].startswith("step 3/3 [") and "<00:00]" in lines[1]


def test_progress_lines_mode_throttles_but_prints_last_step():
    out = io.StringIO()
    view = ProgressView(total_steps=50, file=out, mode="lines", line_interval_s=3600)
    for s in range(1, 51):
        view.update(s, {"critic/score/mean": s / 50})
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/50", "50/50"]


def test_progress_disabled_prints_only_writes():
    out = io.StringIO()
    view = ProgressView(total_steps=5, disable=True, file=out, mode="lines", line_interval_s=0)
    view.update(1, {"critic/score/mean": 1.0})
    view.write("hello")
    assert out.getvalue() == "hello\n"


def test_jsonl_lines_are_plain_objects(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(7, {"timing_s/gen": 1.25})
        with pytest.raises(ValueError, match="reserved"):
            log.log(7, {"step": 1})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 7, "timing_s/gen": 1.25}
