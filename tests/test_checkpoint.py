"""dapo.checkpoint: round trips, retention, atomicity under SIGKILL and exceptions, corruption, fallback."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dapo.checkpoint as ckpt_mod
from dapo.checkpoint import (
    POINTER_FILE,
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    restore_rng_state,
)

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ForeignRecord:  # lives in the test module, i.e. outside dapo/numpy
    ids: torch.Tensor
    score: float


def make_state(seed: int = 0, critic: bool = False) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 11))
    model[1].weight = model[0].weight  # tied weights share storage: safetensors must cope
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    sched.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": capture_rng_state(),
        "sampler": {"epoch": 2, "position": 17, "order": [3, 1, 2]},
        "buffer": [
            {"prompt_ids": torch.arange(5), "rewards": torch.tensor([0.0, 1.0]), "uid": (4, "a")},
            {"prompt_ids": torch.arange(3), "rewards": torch.tensor([1.0, 1.0]), "uid": (5, "b")},
        ],
        "counters": {"global_step": 7, "samples_seen": 448, "skipped_nonfinite": 1},
        "config": {"algo": {"clip_eps_high": 0.28}, "seed": seed},
        "metrics_history": [{"step": 1, "actor/pg_loss": 0.5}],
    }
    if critic:
        state["critic"] = {"v_head.weight": torch.randn(1, 4, dtype=torch.bfloat16)}
        state["critic_optimizer"] = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    return state


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_of_every_piece_and_file_formats(tmp_path):
    state = make_state(critic=True)
    mgr = CheckpointManager(tmp_path)
    path = mgr.save(7, state)
    assert path == tmp_path / "global_step_7"
    assert (tmp_path / POINTER_FILE).read_text().strip() == "7"
    manifest = json.loads((path / "manifest.json").read_text())
    formats = {k: v["format"] for k, v in manifest["files"].items()}
    assert formats["model"] == formats["critic"] == "safetensors"
    assert formats["sampler"] == formats["counters"] == formats["config"] == "json"
    assert formats["optimizer"] == formats["rng"] == formats["buffer"] == "torch"
    step, loaded = mgr.load()
    assert step == 7
    assert set(loaded) == set(state)
    for key in state:
        assert_same(state[key], loaded[key])
    # The loaded pieces restore real objects: tied weights, optimizer moments and the schedule.
    model = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 11))
    model[1].weight = model[0].weight
    model.load_state_dict(loaded["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizer"])
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    sched.load_state_dict(loaded["scheduler"])
    assert sched.last_epoch == 1


def test_json_is_used_only_for_exact_round_trips(tmp_path):
    # int keys, tuples and NaN do not survive JSON; they must go through torch.save unchanged.
    state = {"sampler": {1: "a"}, "counters": {"t": (1, 2)}, "config": {"x": float("nan")}, "ok": [1, "b"]}
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, state)
    files = json.loads((tmp_path / "global_step_1" / "manifest.json").read_text())["files"]
    assert [files[k]["format"] for k in ("sampler", "counters", "config", "ok")] == [
        "torch",
        "torch",
        "torch",
        "json",
    ]
    _, loaded = mgr.load(1)
    assert loaded["sampler"] == {1: "a"} and loaded["counters"] == {"t": (1, 2)} and loaded["ok"] == [1, "b"]
    assert np.isnan(loaded["config"]["x"])


def draws():
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        np.random.randn(2).tolist(),
        torch.rand(3).tolist(),
    )


def test_rng_round_trip_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    g = torch.Generator().manual_seed(9)
    CheckpointManager(tmp_path).save(1, {"rng": capture_rng_state({"rollout": g})})
    expected = draws()
    expected_g = torch.rand(4, generator=g)
    random.seed(100)
    np.random.seed(100)
    torch.manual_seed(100)
    g2 = torch.Generator().manual_seed(100)
    _, loaded = CheckpointManager(tmp_path).load()
    restore_rng_state(loaded["rng"], {"rollout": g2})
    assert draws() == expected
    assert torch.equal(torch.rand(4, generator=g2), expected_g)
    with pytest.raises(KeyError, match="never_captured"):
        restore_rng_state(loaded["rng"], {"never_captured": torch.Generator()})


def test_keep_last_k_and_steps(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.steps() == [] and mgr.latest_step() is None
    for s in (10, 20, 30, 40):
        mgr.save(s, {"counters": {"step": s}})
    assert mgr.steps() == [30, 40]
    assert mgr.latest_step() == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_30", "global_step_40", POINTER_FILE]
    assert mgr.load(30)[1]["counters"] == {"step": 30}


def test_resaving_same_step_replaces_it(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    mgr.save(5, {"counters": {"v": 1}})
    mgr.save(5, {"counters": {"v": 2}})
    assert mgr.steps() == [5] and mgr.load()[1]["counters"] == {"v": 2}
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError):
        mgr.save(5, {"counters": {"v": 3}})
    monkeypatch.undo()
    assert mgr.load()[1]["counters"] == {"v": 2}  # the old copy is back in place
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_after_resume_from_older_step_points_to_it_and_keeps_newer(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    for s in (1, 2, 3):
        mgr.save(s, {"counters": {"s": s}})
    with pytest.warns(UserWarning, match="abandoned"):
        mgr.save(2, {"counters": {"s": 22}})
    assert mgr.latest_step() == 2 and mgr.steps() == [1, 2, 3]


@pytest.mark.parametrize("victim", ["buffer", "dir_commit"])
def test_exception_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch, victim):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(seed=1))
    if victim == "buffer":
        real_save = torch.save

        def failing_save(obj, f, *a, **k):
            if str(getattr(f, "name", "")).endswith("buffer.pt"):
                raise OSError("disk full")
            return real_save(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", failing_save)
    else:
        real_replace = os.replace

        def failing_replace(src, dst):
            if Path(src).name.startswith(".tmp-global_step_2"):
                raise OSError("rename failed")
            return real_replace(src, dst)

        monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError):
        mgr.save(2, make_state(seed=2))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # tmp dir cleaned
    assert mgr.steps() == [1] and mgr.latest_step() == 1
    step, loaded = CheckpointManager(tmp_path).load()
    assert step == 1 and loaded["config"]["seed"] == 1


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import torch
    import dapo.checkpoint as m

    root, phase, signal_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def hang():
        signal_file.write_text("now")
        time.sleep(120)

    class SlowToPickle:  # torch.save calls __reduce__ while buffer.pt is half written
        def __reduce__(self):
            hang()

    mgr = m.CheckpointManager(root)
    mgr.save(1, {"model": {"w": torch.ones(4)}, "counters": {"step": 1}})
    real_replace = os.replace
    def replace(src, dst):
        if (phase == "commit" and Path(src).name.startswith(".tmp-global_step_2")) or (
            phase == "pointer" and Path(dst).name == m.POINTER_FILE
        ):
            hang()
        return real_replace(src, dst)
    m.os.replace = replace
    big = {f"layer{i}": torch.randn(1024, 1024) for i in range(8)}  # 32 MB of weights
    buffer = [SlowToPickle()] if phase == "write" else []
    mgr.save(2, {"model": big, "counters": {"step": 2}, "buffer": buffer})
    """
)


@pytest.mark.parametrize("phase", ["write", "commit", "pointer"])
def test_sigkill_mid_save_leaves_previous_checkpoint_loadable(tmp_path, phase):
    root, flag = tmp_path / "ckpt", tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(root), phase, str(flag)],
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the saving process never reached the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers if phase != "pointer" else not leftovers  # the killed save left debris behind
    mgr = CheckpointManager(root)  # a restart cleans the debris of the dead process
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert mgr.latest_step() == 1
    step, loaded = mgr.load()
    assert step == 1 and loaded["counters"] == {"step": 1}
    # Killed after the directory commit: step 2 is complete and loadable, just not yet "latest".
    assert mgr.steps() == ([1, 2] if phase == "pointer" else [1])
    if phase == "pointer":
        assert mgr.load(2)[1]["model"]["layer3"].shape == (1024, 1024)


def test_stale_tmp_dir_of_a_live_process_is_left_alone(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".tmp-global_step_3-{other.pid}"
        live.mkdir()
        CheckpointManager(tmp_path)
        assert live.exists()
    finally:
        other.kill()
        other.wait()
    CheckpointManager(tmp_path)
    assert not live.exists()


def test_retention_killed_mid_delete_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(1, make_state(seed=1))

    def killed_rmtree(path, ignore_errors=False):  # dies after deleting one file of the old checkpoint
        next(Path(path).glob("*.pt")).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, make_state(seed=2))
    monkeypatch.undo()
    assert mgr.steps() == [2]  # the half-deleted step 1 is not listed as a checkpoint
    mgr = CheckpointManager(tmp_path, keep_last=1)  # restart removes the debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_2", POINTER_FILE]
    assert mgr.load()[1]["config"]["seed"] == 2


def test_dead_process_trash_dir_is_restored(tmp_path):
    # Killed between moving the old step 4 aside and committing the replacement: the old one returns.
    mgr = CheckpointManager(tmp_path)
    mgr.save(4, {"counters": {"v": 1}})
    os.replace(tmp_path / "global_step_4", tmp_path / ".trash-global_step_4-999999999")
    assert CheckpointManager(tmp_path).load()[1]["counters"] == {"v": 1}


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_file_names_the_file(tmp_path, damage):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state())
    target = tmp_path / "global_step_1" / "optimizer.pt"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 3]))
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=r"global_step_1/optimizer\.pt") as err:
        mgr.load()
    assert {"flip": "sha256", "truncate": "size", "delete": "missing"}[damage] in str(err.value)


def test_missing_or_garbled_manifest(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"counters": {}})
    manifest = tmp_path / "global_step_1" / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest\.json: unreadable"):
        mgr.load(1)
    manifest.unlink()
    assert mgr.steps() == []  # without a manifest it is not a checkpoint at all
    with pytest.raises(CheckpointError, match="no committed checkpoint"):
        mgr.load()


def test_fallback_returns_previous_good_with_warning(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for s in (1, 2, 3):
        mgr.save(s, {"model": {"w": torch.full((3,), float(s))}, "counters": {"s": s}})
    for s in (2, 3):  # the two newest are damaged, differently
        f = tmp_path / f"global_step_{s}" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match=r"global_step_3/model\.safetensors"):
        mgr.load()
    with pytest.warns(UserWarning, match=r"loaded checkpoint step 1 instead of step 3.*global_step_3.*global_step_2"):
        step, state = mgr.load(fallback=True)
    assert step == 1 and state["counters"] == {"s": 1}
    assert torch.equal(state["model"]["w"], torch.ones(3))
    f = tmp_path / "global_step_1" / "counters.json"
    f.write_text('{"s": 9}')
    with pytest.raises(CheckpointError, match="no loadable checkpoint at or before step 3"):
        mgr.load(fallback=True)


def test_good_latest_loads_without_warning_even_with_fallback(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"counters": {"s": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mgr.load(fallback=True)[0] == 1


def test_pointer_to_missing_step_falls_back_to_newest_committed(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"counters": {}})
    (tmp_path / POINTER_FILE).write_text("99\n")
    with pytest.warns(UserWarning, match="names 99"):
        assert mgr.latest_step() == 1


def test_buffer_classes_weights_only_policy(tmp_path, monkeypatch):
    # numpy arrays and dapo.* classes are allow-listed automatically; other classes need the caller's say.
    @dataclasses.dataclass(frozen=True)
    class Group:
        ids: torch.Tensor
        acc: float

    Group.__module__, Group.__qualname__ = "dapo.checkpoint", "_TestGroup"
    monkeypatch.setattr(ckpt_mod, "_TestGroup", Group, raising=False)
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"buffer": [Group(torch.arange(3), 0.5)], "sampler_np": np.arange(4, dtype=np.int32)})
    _, loaded = mgr.load()
    assert loaded["buffer"][0].acc == 0.5 and torch.equal(loaded["buffer"][0].ids, torch.arange(3))
    assert loaded["sampler_np"].dtype == np.int32 and loaded["sampler_np"].tolist() == [0, 1, 2, 3]

    with pytest.warns(UserWarning, match="ForeignRecord"):
        mgr.save(2, {"buffer": [ForeignRecord(torch.ones(2), 1.0)]})
    with pytest.raises(CheckpointError, match=r"buffer\.pt: needs classes .*ForeignRecord"):
        mgr.load(2)
    assert mgr.load(2, safe_globals=[ForeignRecord])[1]["buffer"][0].score == 1.0
    assert mgr.load(2, trust_pickle=True)[1]["buffer"][0].score == 1.0


def test_a_checkpoint_naming_a_class_where_it_used_to_live_still_loads(tmp_path, monkeypatch):
    """Checkpoints written before `ScoredGroup` moved from `dapo.groups` to `dapo.step.groups` pickle the old
    path; they load into today's class (`_MOVED_CLASSES`), weights_only and without asking the caller."""
    import types

    from dapo.step.groups import ScoredGroup

    group = ScoredGroup(
        record=None, prompt_ids=(1, 2), response_ids=((3,), (4, 5)), finish_reasons=("eos", "length"),
        scores=(1.0, -1.0), rewards=(1.0, -1.5), acc=(True, False), preds=("3", None),
    )  # fmt: skip
    old_home = types.ModuleType("dapo.groups")
    old_home.ScoredGroup = ScoredGroup
    with monkeypatch.context() as m:  # the class as it was at save time
        m.setitem(sys.modules, "dapo.groups", old_home)
        m.setattr(ScoredGroup, "__module__", "dapo.groups")
        CheckpointManager(tmp_path).save(1, {"dynamic_sampling": {"buffer": [group]}})
    manifest = json.loads((tmp_path / "global_step_1" / "manifest.json").read_text())
    assert "dapo.groups.ScoredGroup" in json.dumps(manifest)  # the file really names the old place
    _, loaded = CheckpointManager(tmp_path).load()
    assert loaded["dynamic_sampling"]["buffer"] == [group]
    assert type(loaded["dynamic_sampling"]["buffer"][0]) is ScoredGroup


def test_invalid_keys_rejected(tmp_path):
    with pytest.raises(ValueError, match="keys must match"):
        CheckpointManager(tmp_path).save(1, {"../evil": 1})
