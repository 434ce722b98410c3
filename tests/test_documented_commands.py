"""Every command the docs tell a reader to run is checked, the cheapest honest way (tests/doc_commands.py reads them).

- `dapo <subcommand>`: the CLI's own parser, then what the command would resolve before any work: the config
  (preset, YAML, overrides; validated) for train/eval/config, `dapo train --dry-run`, `dapo config` and
  `dapo presets` run whole, the warm-start recipe for sft, the ladder's plan for ablate;
- `scripts/*.sh`: exists, is executable, parses (`bash -n`), and takes the arguments given: train_cpu.sh passes
  them to the `dapo train` of its `exec` line (checked as above), test.sh knows the lane, setup.sh the extras;
- `python bench/*.py` / `scripts/*.py` and `ray` commands: their own parsers accept the arguments (the work never
  starts);
- every path a command names exists (`../shared/data` files where that folder is present); a path under `runs/`
  is written by some documented command, and a checkpoint it names is one that run keeps;
- two documented training runs of different configs never share a run directory (the second would resume the
  first, or refuse to).
The slow test runs the README's main job and the examples that follow it, in order and tiny, in a fresh folder.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from doc_commands import DATA, PLACEHOLDER, ROOT, USER_FILES, Command, documented_commands

pytestmark = pytest.mark.docs

COMMANDS = documented_commands()
# The number of commands the docs hold today: a parser that finds fewer is broken (lower it with the docs).
AT_LEAST = 90
FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".parquet", ".py", ".sh", ".md", ".gguf", ".txt")
CHECKPOINT = re.compile(r"^(?P<run>.+)/checkpoints/global_step_(?P<step>\d+)/?$")


@dataclass
class Resolved:
    """What one variant of a `dapo` command resolves to before it does any work."""

    args: list[str]  # the `dapo` arguments (for train_cpu.sh: those of its exec line, then the given ones)
    namespace: object | None = None
    config: object | None = None
    error: str | None = None  # why it does not parse or validate
    fragment: bool = False  # an inline mention that names a flag without its value


def _with_user_files(args: list[str]) -> list[str]:
    """The reader's own files (`USER_FILES`, e.g. `--config my.yaml`) stand in as empty ones."""
    return [os.devnull if a in USER_FILES else a for a in args]


@functools.cache
def _train_cpu_prefix() -> tuple[str, ...]:
    """The `dapo` arguments that scripts/train_cpu.sh puts before the ones it is given (its exec line)."""
    match = re.search(r'^exec \.venv/bin/dapo (.*) "\$@"$', (ROOT / "scripts/train_cpu.sh").read_text(), re.M)
    assert match, 'scripts/train_cpu.sh has no `exec .venv/bin/dapo ... "$@"` line'
    return tuple(shlex.split(match.group(1)))


def dapo_args(argv: list[str]) -> list[str] | None:
    """The `dapo` arguments a documented argv amounts to (a `dapo` command, or scripts/train_cpu.sh)."""
    if argv[0] in (".venv/bin/dapo", "dapo"):
        return argv[1:]
    if argv[0] == "scripts/train_cpu.sh":
        return [*_train_cpu_prefix(), *argv[1:]]
    return None


def resolve(args: list[str], inline: bool) -> Resolved:
    from dapo.cli import build_parser
    from dapo.config import ConfigError, load_config

    result = Resolved(args)
    parser = build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            result.namespace = parser.parse_args(_with_user_files(args))
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "usage error"
        result.fragment = inline and ("expected one argument" in message or "arguments are required" in message)
        result.error = None if result.fragment and _names_known_flags(parser, args) else message
        return result
    ns = result.namespace
    if ns.command in ("train", "eval", "config") and not getattr(ns, "fields", False):
        try:
            result.config = load_config(ns.preset, ns.config, ns.overrides)
        except (ConfigError, OSError) as error:
            result.error = f"config: {error}"
    return result


def _names_known_flags(parser, args: list[str]) -> bool:
    """A fragment (`dapo eval --out`): its subcommand exists and each flag it names is one of that subcommand's."""
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    sub = subparsers.get(args[0]) if args else None
    return sub is not None and all(a.split("=")[0] in sub._option_string_actions for a in args if a.startswith("-"))


@functools.cache
def _resolved_variants() -> dict[tuple[str, int], Resolved]:
    out = {}
    for command in COMMANDS:
        for i, argv in enumerate(command.variants()):
            args = dapo_args(argv)
            if args is not None:
                out[(command.where + command.text, i)] = resolve(args, command.inline)
    return out


def resolved(command: Command) -> list[Resolved]:
    table = _resolved_variants()
    out = []
    for i, argv in enumerate(command.variants()):
        if (args := dapo_args(argv)) is not None:
            known = table.get((command.where + command.text, i))  # absent: not a documented command (a test's)
            out.append(known or resolve(args, command.inline))
    return out


def run_dir(r: Resolved) -> str | None:
    """The run directory a training command writes (None for a dry run or a non-training command)."""
    ns = r.namespace
    if r.error or r.config is None or ns is None or ns.command != "train" or ns.dry_run:
        return None
    return f"{r.config.trainer.output_dir}/{r.config.trainer.run_name}"


def kept_steps(config) -> set[int]:
    """The checkpoints a finished run keeps: it saves every save_freq steps and at the end, keeps the last K."""
    t = config.trainer
    saves = sorted(
        {s for s in range(1, t.total_steps + 1) if t.save_freq > 0 and s % t.save_freq == 0} | {t.total_steps}
    )
    return set(saves[-t.keep_last :] if t.keep_last > 0 else saves)


@functools.cache
def produced() -> tuple[dict[str, list], set[str]]:
    """Run directories of documented training commands (with their configs), and every path a command writes."""
    runs: dict[str, list] = {}
    written: set[str] = set()
    for command in COMMANDS:
        for r in resolved(command):
            if (where := run_dir(r)) is not None:
                runs.setdefault(where, []).append(r.config)
                written.add(where)
            ns = r.namespace
            if ns is not None and ns.command == "eval" and r.config is not None:
                written.add(f"{r.config.trainer.output_dir}/{r.config.trainer.run_name}-eval")
        for argv in command.variants():
            written |= set(_outputs(argv))
    return runs, written


def _outputs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--out=")
    ]


def _path_values(argv: list[str]) -> list[str]:
    """Every value in a command line that names a path (option values, override values, list items)."""
    values = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            if "=" not in arg:
                continue
            arg = arg.split("=", 1)[1]
        elif "=" in arg:
            arg = arg.split("=", 1)[1]
        values += [v for v in arg.strip("[]").split(",") if v]
    return [v for v in values if _looks_like_path(v)]


def _looks_like_path(value: str) -> bool:
    if PLACEHOLDER in value or ":" in value:  # a placeholder, builtin:..., installed:..., host:port
        return False
    if value.startswith(("runs/", "/tmp/", "../", "./")) or value.endswith(FILE_SUFFIXES):
        return True
    return "/" in value and (ROOT / value.split("/")[0]).exists()  # Qwen/Qwen2.5-1.5B is a hub id, not a path


def path_problems(argv: list[str], config=None) -> list[str]:
    runs, written = produced()
    outputs = set(_outputs(argv))
    values = _path_values(argv)
    if config is not None:  # the data files the resolved config reads (a recipe names them in its YAML)
        values += [v for v in [*config.data.train_files, *config.data.val_files] if _looks_like_path(v)]
    problems = []
    for value in dict.fromkeys(values):
        if value in outputs or value.startswith("/tmp/") or value in USER_FILES:
            continue
        if match := CHECKPOINT.match(value):
            configs = runs.get(match["run"], [])
            steps = set().union(*(kept_steps(c) for c in configs)) if configs else set()
            if int(match["step"]) not in steps:
                problems.append(
                    f"{value}: no documented run keeps this checkpoint (runs writing {match['run']} keep steps "
                    f"{sorted(steps) or 'none'})"
                )
        elif value.startswith("runs/"):
            if not any(value == w or value.startswith(w.rstrip("/") + "/") for w in written):
                problems.append(f"{value}: no documented command writes it")
        elif value.startswith("../shared/data/"):
            if DATA.is_dir() and not (ROOT / value).exists():
                problems.append(f"{value}: not in {DATA}")
        elif not (ROOT / value).exists():
            problems.append(f"{value}: no such file in the repository")
    return problems


# ------------------------------------------------------------------------------------------------ checks


def check_dapo(command: Command, r: Resolved) -> list[str]:
    if r.error:
        return [f"dapo {' '.join(r.args)}: {r.error}"]
    if r.fragment:
        return []
    ns = r.namespace
    problems = []
    args = _with_user_files(r.args)
    if ns.command == "presets" or ns.command == "config" or (ns.command == "train" and ns.dry_run):
        from dapo.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        if code != 0:
            problems.append(f"dapo {' '.join(args)} exited {code}: {(err.getvalue() or out.getvalue())[-400:]}")
    elif ns.command == "sft":
        from dapo.sft import SftSettings, check_rates

        chosen = {"steps": ns.steps, "shortcut_rate": ns.shortcut_rate, "repeat_rate": ns.repeat_rate}
        settings = SftSettings(**{k: v for k, v in chosen.items() if v is not None})
        try:
            check_rates(settings.shortcut_rate, settings.repeat_rate)
        except ValueError as error:
            problems.append(f"dapo sft: {error}")
    elif ns.command == "ablate":
        from dapo.ablation import plan
        from dapo.config import ConfigError

        try:
            plan(ns.ladder, ns.presets, ns.seeds, ns.out, ns.quick, ns.overrides)
        except ConfigError as error:
            problems.append(f"dapo ablate: {error}")
    return problems


@functools.cache
def _bash_syntax(script: str) -> str | None:
    done = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    return (done.stderr.strip() or f"exit status {done.returncode}") if done.returncode else None


@functools.cache
def _test_lanes() -> frozenset[str]:
    text = (ROOT / "scripts/test.sh").read_text()
    block = text.split('case "$lane" in', 1)[1].split("esac", 1)[0]
    return frozenset(w for label in re.findall(r"^\s*([\w|]+)\)", block, re.M) for w in label.split("|"))


@functools.cache
def _extras() -> frozenset[str]:
    import tomllib

    return frozenset(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_script(command: Command, argv: list[str]) -> list[str]:
    script, args = argv[0], argv[1:]
    path = ROOT / script
    if not path.is_file():
        return [f"{script}: no such script"]
    problems = []
    if not os.access(path, os.X_OK):
        problems.append(f"{script} is not executable")
    if error := _bash_syntax(script):
        problems.append(f"{script}: bash -n: {error}")
    name = path.name
    if name == "train_cpu.sh":
        return problems  # its arguments go to `dapo train`: checked with the dapo commands
    if name == "test.sh":
        lanes, i = _test_lanes(), 0
        while i < len(args):
            arg = args[i]
            lane = args[i + 1] if arg == "--lane" and i + 1 < len(args) else arg.partition("=")[2]
            if arg == "--lane" or arg.startswith("--lane="):
                if lane not in lanes:
                    problems.append(f"{script}: no lane {lane!r} (lanes: {sorted(lanes)})")
                i += 2 if arg == "--lane" else 1
                continue
            if arg != "--all" and not arg.startswith("-") and not (ROOT / arg.split("::")[0]).exists():
                problems.append(f"{script}: pytest argument {arg!r} names no test path")
            i += 1
    elif name == "setup.sh":
        unknown = [e for a in args for e in a.split(",") if e not in _extras()]
        if len(args) > 1 or unknown:
            problems.append(f"{script} takes one comma-separated list of extras; unknown: {unknown or args}")
    elif args:
        problems.append(f"{script} takes no arguments, given {args}")
    return problems


def _own_parsers_requests() -> list[list[str]]:
    requests = []
    for command in COMMANDS:
        if command.kind in ("python", "ray"):
            for argv in command.variants():
                request = argv[1:] if command.kind == "python" else argv
                if command.kind == "ray" or (ROOT / request[0]).is_file():
                    requests.append(request)
    return [list(r) for r in dict.fromkeys(tuple(r) for r in requests)]


def _start_own_parsers(requests: list[list[str]]) -> subprocess.Popen:
    """Python scripts' and ray's own parsers on these argv, in one process (torch imported once), started now."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests/doc_commands.py"), "parse-scripts", json.dumps(requests)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@functools.cache
def _own_parsers_started() -> subprocess.Popen:
    return _start_own_parsers(_own_parsers_requests())


def _answers(process: subprocess.Popen, requests: list[list[str]]) -> dict[tuple[str, ...], str | None]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return {tuple(r): answer for r, answer in zip(requests, json.loads(out), strict=True)}


@functools.cache
def _parsed_by_own_parsers() -> dict[tuple[str, ...], str | None]:
    return _answers(_own_parsers_started(), _own_parsers_requests())


def check_own_parser(command: Command, argv: list[str]) -> list[str]:
    request = argv[1:] if command.kind == "python" else argv
    if command.kind == "python" and not (ROOT / request[0]).is_file():
        return [f"{request[0]}: no such script"]
    answers = _parsed_by_own_parsers()
    if tuple(request) not in answers:  # not a documented command (the tests of this module's checks)
        answers = _answers(_start_own_parsers([request]), [request])
    answer = answers[tuple(request)]
    return [f"{' '.join(argv)}: {answer}"] if answer else []


def check(command: Command) -> list[str]:
    kind = command.kind
    if kind == "unknown":
        return [f"not a command this test knows how to check: {command.text!r} (teach tests/doc_commands.py)"]
    problems = []
    variants = command.variants()
    for argv in variants:
        r = next((x for x in resolved(command) if x.args == dapo_args(argv)), None) if dapo_args(argv) else None
        if kind == "script":
            problems += check_script(command, argv)
        elif kind in ("python", "ray"):
            problems += check_own_parser(command, argv)
        if r is not None:
            problems += check_dapo(command, r)
        if kind != "ray" and not (r is not None and r.fragment):
            problems += path_problems(argv, r.config if r is not None and not r.error else None)
    return list(dict.fromkeys(problems))


# ------------------------------------------------------------------------------------------------- tests


def test_every_documented_command_parses_and_validates():
    start = time.perf_counter()
    _own_parsers_started()  # in another process, while this one resolves the dapo commands
    _resolved_variants()
    checked, failures = 0, []
    for command in COMMANDS:
        try:
            failures += [f"{command.where}: {problem}" for problem in check(command)]
        except Exception as error:  # a check that crashes is a failure of that command, not of the others
            failures.append(f"{command.where}: {command.text}: {type(error).__name__}: {error}")
        checked += 1
    by_file = Counter(command.where.split(":")[0] for command in COMMANDS)
    print(f"\n{checked} documented commands checked in {time.perf_counter() - start:.1f} s: {dict(by_file)}")
    assert not failures, f"{len(failures)} problem(s) in documented commands:\n" + "\n".join(failures)
    assert checked == len(COMMANDS) >= AT_LEAST, f"checked {checked} of {len(COMMANDS)} found (at least {AT_LEAST})"
    for source in ("README.md", "bench/README.md", "docs/", "recipes/"):
        assert any(c.where.startswith(source) for c in COMMANDS), f"no command found in {source}"


def test_documented_runs_of_different_configs_have_different_run_directories():
    """A second run under the same name resumes the first (or refuses to, the config being different): each
    documented training command that a reader is told to run needs a run directory of its own."""
    from dapo.config import config_diff

    seen: dict[str, tuple[str, object]] = {}
    collisions = []
    for command in COMMANDS:
        if not command.runnable or "..." in command.text:  # `--preset ...`: the reader's run, named by the reader
            continue
        for r in resolved(command):
            where = run_dir(r)
            if where is None:
                continue
            if where not in seen:
                seen[where] = (command.where, r.config)
                continue
            first, config = seen[where]
            differences = config_diff(config.to_dict(), r.config.to_dict())
            if differences:
                collisions.append(
                    f"{command.where} trains into {where} as {first} does, with another config "
                    f"({'; '.join(differences[:3])}): give it its own trainer.run_name"
                )
    assert not collisions, "\n".join(collisions)


def test_the_parser_reads_each_form():
    command = Command(
        "x:1", "dapo export --checkpoint DIR --out <HF dir> [--dtype float32|bfloat16] ...", inline=False, runnable=True
    )
    assert command.variants() == [
        ["dapo", "export", "--checkpoint", PLACEHOLDER, "--out", PLACEHOLDER],
        ["dapo", "export", "--checkpoint", PLACEHOLDER, "--out", PLACEHOLDER, "--dtype", "float32"],
        ["dapo", "export", "--checkpoint", PLACEHOLDER, "--out", PLACEHOLDER, "--dtype", "bfloat16"],
    ]
    lanes = Command("x:2", "scripts/test.sh --lane slow|ray", inline=True, runnable=False)
    assert lanes.kind == "script" and [v[-1] for v in lanes.variants()] == ["slow", "ray"]
    assert Command("x:3", "dapo/sft.py", inline=True, runnable=False).kind == "unknown"
    driver = Command("x:4", "dapo train --preset ... ray.address=H:6379", inline=False, runnable=True)
    assert driver.variants() == [["dapo", "train", f"ray.address={PLACEHOLDER}:6379"]]
    r = resolve(["export", "--checkpoint", "runs/x/checkpoints/global_step_3", "--out", "runs/y"], inline=False)
    assert r.error is None and not r.fragment
    assert resolve(["eval", "--out"], inline=True).fragment
    assert resolve(["eval", "--nope"], inline=True).error
    assert resolve(["train", "algo.no_such_field=1"], inline=False).error.startswith("config:")


def test_the_checks_catch_what_they_claim():
    def problems(text: str) -> list[str]:
        return check(Command("x:1", text, inline=False, runnable=True))

    assert problems("scripts/test.sh --lane fast") == []
    assert "no lane 'nope'" in problems("scripts/test.sh --lane nope")[0]
    assert "names no test path" in problems("scripts/test.sh tests/no_such_dir")[0]
    assert "unknown: ['nope']" in problems("scripts/setup.sh nope")[0]
    assert "takes no arguments" in problems("scripts/gpu_check.sh --fast")[0]
    assert "no such script" in problems("scripts/no_such.sh")[0]
    assert "unknown preset" in problems("dapo train --preset nope")[0]
    assert "config:" in problems("scripts/train_cpu.sh algo.clip_eps_high=oops")[0]
    assert "No such file" in problems("dapo train --config recipes/no-such.yaml")[0]
    assert "keep steps [90, 100]" in problems("dapo eval --checkpoint runs/dapo-cpu/checkpoints/global_step_40")[0]
    assert "no documented command writes it" in problems("dapo eval model.path=runs/never-written")[0]
    assert "not a command" in problems("make everything")[0]
    requests = [["bench/bench_rollout.py", "--no-such-flag"], ["ray", "start", "--no-such-flag"], ["ray", "nope"]]
    answers = _answers(_start_own_parsers(requests), requests)
    assert "unrecognized arguments: --no-such-flag" in answers[tuple(requests[0])]
    assert "No such option '--no-such-flag'" in answers[tuple(requests[1])]
    assert "ray has no command" in answers[tuple(requests[2])]


# ------------------------------------------------------------------------- the README's commands, really run

# What makes each run tiny (appended, so they win): 2 DAPO steps of 2 groups, 8 held-out problems, a checkpoint
# every step, and a base that solves some problems soon (level 1, a 200-step warm start: dynamic sampling needs
# groups that are neither all right nor all wrong). `dapo sft` takes `--steps`.
TINY = [
    "data.task_level=1", "model.warm_start.steps=200", "data.train_batch_size=2", "data.gen_batch_size=8",
    "actor.mini_batch_size=2", "data.val_size=8", "rollout.val_n=1", "trainer.total_steps=2", "trainer.test_freq=2",
    "trainer.save_freq=1", "trainer.progress=false",
]  # fmt: skip
TINY_STEPS = 2


def readme_runs() -> list[Command]:
    """The README's main job and the examples that follow it, in the README's order: every runnable command that
    trains, evaluates, exports or warm-starts on the built-in task (an inline mention only with arguments; not the
    Ray ones, which the ray lane runs; not `dapo ablate`, tests/e2e/test_ablate_quick.py; not SmolLM2's)."""
    chosen, seen = [], set()
    for command in COMMANDS:
        if not command.where.startswith("README.md:") or command.text in seen:
            continue
        rs = resolved(command)
        if not rs or any(r.error or r.fragment for r in rs) or (command.inline and len(command.text.split()) < 3):
            continue
        r = rs[0]
        ns, config = r.namespace, r.config
        if ns.command not in ("train", "eval", "export", "sft") or (ns.command == "train" and ns.dry_run):
            continue
        if config is not None and (config.trainer.backend != "local" or config.model.path.startswith("installed:")):
            continue
        chosen.append(command)
        seen.add(command.text)
    return chosen


@pytest.mark.slow
def test_the_readme_main_job_and_its_examples_run_in_order(tmp_path):
    """Each command as the README writes it, made tiny, in a fresh folder laid out like a checkout (`../shared/data`
    beside it): each must end without error and write its own run directory, not resume another command's."""
    sequence = readme_runs()
    texts = [c.text for c in sequence]
    assert texts[0] == "scripts/train_cpu.sh" and len(sequence) >= 6, texts
    cwd = tmp_path / "main"
    cwd.mkdir()
    if DATA.is_dir():
        (tmp_path / "shared").symlink_to(DATA.parent)
    for name in USER_FILES:
        (cwd / name).write_text("# the reader's own settings\n")
    runs = cwd / "runs"
    dapo = Path(sys.executable).with_name("dapo")
    last_export = None
    for command in sequence:
        argv = command.variants()[0]
        if any(a.startswith("../shared/") or "../shared/" in a for a in argv) and not DATA.is_dir():
            continue  # the shared data sets are not on this machine
        argv = [re.sub(r"global_step_\d+", f"global_step_{TINY_STEPS}", a) for a in argv]
        if last_export is not None:
            argv = [a.replace(PLACEHOLDER, last_export) for a in argv]  # `model.path=<HF dir>`: the export's
        assert PLACEHOLDER not in " ".join(argv), f"{command.where}: nothing to put for the placeholder"
        sub = resolve(dapo_args(argv), inline=False).namespace.command
        if sub in ("train", "eval"):  # after the command's own overrides (the last value wins), before its options
            at = max([i + 1 for i, a in enumerate(argv) if "=" in a and not a.startswith("-")] or [len(argv)])
            argv[at:at] = [*TINY, f"trainer.output_dir={runs}"]
        elif sub == "sft":
            argv += ["--steps", "20"]
        exe = str(ROOT / argv[0]) if argv[0].startswith("scripts/") else str(dapo)
        own_dir = None
        if sub == "train":
            config = resolve(dapo_args(argv), inline=False).config
            own_dir = runs / config.trainer.run_name
            assert not own_dir.exists(), f"{command.where}: {own_dir} exists already: it would resume another run"
        start = time.perf_counter()
        done = subprocess.run([exe, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=900)
        print(f"{command.where}: {time.perf_counter() - start:.0f} s, exit {done.returncode}: {command.text}")
        assert done.returncode == 0, f"{command.where}: {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        outputs = _outputs(argv)
        if own_dir is not None:
            for part in ("metrics.jsonl", f"checkpoints/global_step_{TINY_STEPS}", "policy/config.json"):
                assert (own_dir / part).exists(), f"{command.where}: no {part} in {own_dir}"
        if sub == "export":
            last_export = outputs[0]
            assert (cwd / last_export / "config.json").exists(), f"{command.where}: no model in {last_export}"
        if sub == "eval" and outputs:
            assert (cwd / outputs[0] / "eval.md").exists(), f"{command.where}: no eval.md in {outputs[0]}"
        if sub == "sft":
            assert re.search(r"\[sft\] saved (\S+)", done.stdout), f"{command.where}: {done.stdout[-500:]}"
