"""The command lines the documentation tells a reader to run, parsed (tests/test_documented_commands.py checks them).

Where commands are read:
- `README.md`, `docs/**/*.md` and `bench/README.md`: every line of a ```bash / ```sh / ```shell / ```console code
  block (a console block: the lines after `$ `), continuations (`\\`) joined and comments removed; and every inline
  code span in the prose that starts with a command (`scripts/test.sh --all`, the bench table's
  `.venv/bin/python bench/bench_rollout.py [--quick]`). An inline span may be a fragment that names a flag
  (`dapo eval --out`);
- `recipes/*.yaml`: the command lines of the header comment (`#   .venv/bin/dapo train --config ...`).

How a command is written (and read here):
- `[--flag value]` is optional and `a|b|c` offers alternatives: `variants()` gives the command without its
  optional parts, and with all of them once per alternative, so every flag and every alternative is checked;
- `<HF dir>`, an upper-case word (`N`, `DIR`, `H:6379`) and `...` are placeholders for the reader's values;
  `my.yaml` is the reader's own file (`USER_FILES`).

Run as a script, `python tests/doc_commands.py parse-scripts REQUESTS` takes a JSON list of argv (Python scripts
and `ray` commands) and writes, for each, null or the reason its arguments do not parse: each script's own
argparse parser parses them and the script stops there (its work never starts); `ray` commands go through Ray's
click parser the same way. One process for all, so torch is imported once.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # the real data sets (../shared/data from the repository root)

SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
# The reader's own files, named by the docs as examples: validated as an empty file of the same kind.
USER_FILES = {"my.yaml": "the reader's own YAML config, applied on top of the preset"}
PLACEHOLDER = "PLACEHOLDER"


@dataclass(frozen=True)
class Command:
    """One documented command line, as written (continuations joined, comment removed)."""

    where: str  # "README.md:44"
    text: str
    inline: bool  # an inline code span in prose: may be a fragment that names a flag
    runnable: bool  # an instruction to run (a code block, a recipe's header, the README), not a mention

    @property
    def kind(self) -> str:
        """dapo | script | python | ray | unknown."""
        return command_kind(self.text)

    def variants(self) -> list[list[str]]:
        """argv of the command without its optional parts, and with all of them once per alternative."""
        return [_argv(text) for text in _variants(self.text)]


def command_kind(text: str) -> str:
    words = text.split()
    if not words:
        return "unknown"
    first = words[0]
    if first in (".venv/bin/dapo", "dapo") and len(words) > 1 and re.fullmatch(r"[a-z]+", words[1]):
        return "dapo"
    if re.fullmatch(r"scripts/[\w.-]+\.sh", first):
        return "script"
    if first in (".venv/bin/python", "python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        return "python"
    if first == "ray":
        return "ray"
    return "unknown"


def _variants(text: str) -> list[str]:
    groups = re.findall(r"\[([^\[\]]*)\]", text)
    groups = [g for g in groups if g.lstrip().startswith("-")]  # `[--flag x]`, not a list value `[a,b]`
    bare = text
    for g in groups:
        bare = bare.replace(f"[{g}]", " ")
    full = text
    for g in groups:
        full = full.replace(f"[{g}]", g)
    widest = max([len(w.split("|")) for w in full.split() if "|" in w and not w.startswith("-")] + [1])
    out = [bare] if groups else []
    for i in range(widest):
        out.append(" ".join(_pick(w, i) for w in full.split()))
    return [" ".join(_pick(w, 0) for w in v.split()) for v in dict.fromkeys(out)]


def _pick(word: str, i: int) -> str:
    if "|" not in word or (word.startswith("-") and "=" not in word):
        return word
    head, _, tail = word.rpartition("=") if "=" in word else ("", "", word)
    options = tail.split("|")
    choice = options[min(i, len(options) - 1)]
    return f"{head}={choice}" if head else choice


def _argv(text: str) -> list[str]:
    text = re.sub(r"<[^<>]+>", PLACEHOLDER, text)
    # An upper-case word is a placeholder (`--level N`, `--checkpoint DIR`, `ray.address=H:6379`).
    text = re.sub(r"(?<=[\s=])[A-Z][A-Z_]*(?=[\s:]|$)", PLACEHOLDER, text)
    words = shlex.split(text, comments=True)
    argv: list[str] = []
    for word in words:
        if word == "...":  # "and more": drop it, and an option it stands as the value of
            if argv and argv[-1].startswith("--") and "=" not in argv[-1]:
                argv.pop()
            continue
        argv.append(word)
    return argv


# ---------------------------------------------------------------------------------------------- reading docs


def doc_files() -> list[Path]:
    docs = sorted((ROOT / "docs").rglob("*.md"))
    return [ROOT / "README.md", *docs, ROOT / "bench" / "README.md"]


def recipe_files() -> list[Path]:
    return sorted((ROOT / "recipes").glob("*.yaml"))


def commands_in_markdown(path: Path) -> list[Command]:
    rel = str(path.relative_to(ROOT))
    lines = path.read_text().splitlines()
    found: list[Command] = []
    in_block, lang, pending, start = False, "", "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_block, lang = (not in_block), stripped[3:].strip().lower()
            continue
        if in_block:
            if lang not in SHELL_BLOCKS:
                continue
            if lang == "console":
                if not stripped.startswith("$ "):
                    continue
                stripped = stripped[2:]
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = _strip_comment(pending + stripped)
            pending = ""
            if text:
                found.append(Command(f"{rel}:{start}", text, inline=False, runnable=True))
            continue
        for span in re.findall(r"`([^`]+)`", line):
            span = span.strip()
            if command_kind(span) in ("dapo", "script", "python"):
                found.append(Command(f"{rel}:{number}", span, inline=True, runnable=rel == "README.md"))
    return found


def commands_in_recipe(path: Path) -> list[Command]:
    rel = str(path.relative_to(ROOT))
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break  # the header comment ends at the first line of YAML
        text = line.lstrip("#").strip()
        if command_kind(text) != "unknown":
            found.append(Command(f"{rel}:{number}", _strip_comment(text), inline=False, runnable=True))
    return found


def _strip_comment(text: str) -> str:
    return " ".join(shlex.join([w]) if " " in w else w for w in shlex.split(text, comments=True)) if text else ""


def documented_commands() -> list[Command]:
    """Every command of the docs and recipes, in the order a reader meets them (README first)."""
    found = [c for path in doc_files() for c in commands_in_markdown(path)]
    return found + [c for path in recipe_files() for c in commands_in_recipe(path)]


# -------------------------------------------------------------------------- scripts' and ray's own parsers


def parse_scripts(requests: list[list[str]]) -> list[str | None]:
    """For each argv ([script.py, args...] or [ray, sub, args...]): None if its parser accepts the arguments."""
    return [_parse_ray(argv[1:]) if argv[0] == "ray" else _parse_python(argv[0], argv[1:]) for argv in requests]


class _Parsed(Exception):
    """Raised by the patched `parse_args` once the script's parser has accepted its command line."""


def _parse_python(script: str, args: list[str]) -> str | None:
    import argparse
    import contextlib
    import io
    import runpy
    import sys

    path = ROOT / script
    args = [a.replace(PLACEHOLDER, "1") for a in args]  # `--level N`: any value of the option's type
    source = path.read_text()
    if "parse_args(" not in source or '__name__ == "__main__"' not in source:
        return f"{script} has no argparse command line to check (it would run its work)"
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed  # the script's command line parsed: stop before its work

    argparse.ArgumentParser.parse_args = parse_args
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv, sys.path = [str(path), *args], [str(path.parent), *sys.path]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed:
        return None
    except SystemExit as exit:
        return f"exit {exit.code}: {stderr.getvalue().strip()[-500:]}"
    except Exception as error:  # an import error, or work before the command line is parsed
        return f"{type(error).__name__}: {error}"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv, sys.path = saved_argv, saved_path
    return f"{script} finished without parsing its command line"


def _parse_ray(args: list[str]) -> str | None:
    try:
        from ray.scripts.scripts import cli
    except ImportError as error:
        return f"ray is not installed ({error}): install the ray extra"
    import click

    args = [a.replace(PLACEHOLDER, "1") for a in args]
    command = cli.commands.get(args[0]) if args else None
    if command is None:
        return f"ray has no command {args[:1]}"
    try:
        command.make_context(f"ray {args[0]}", args[1:])
    except click.ClickException as error:
        return f"ray {args[0]}: {error.format_message()}"
    return None


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "parse-scripts":
        sys.exit('usage: python tests/doc_commands.py parse-scripts \'[["bench/x.py", "--flag"], ...]\'')
    answers = parse_scripts(json.loads(sys.argv[2]))
    print(json.dumps(answers))
