"""Entry point of a `KillablePool` worker: `python -m dapo.rewards._worker [warm_module ...]`.

Reads (task_id, "module:function", args) frames on stdin, runs each in the main thread (so SIGALRM-based
timeouts inside the task work) and writes (task_id, "ok" | "error", value) frames on stdout. A None frame
or EOF stops it. Anything the task prints goes to stderr: stdout carries frames only.
"""

from __future__ import annotations

import importlib
import os
import sys

from dapo.rewards.pool import read_frame, resolve, safe_error, write_frame


def main(warm_modules: list[str]) -> None:
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    frames_in = sys.stdin.buffer
    for module in warm_modules:
        importlib.import_module(module)
    write_frame(frames_out, ("ready", "ok", None))
    functions = {}
    while True:
        try:
            msg = read_frame(frames_in)
        except EOFError:
            return
        if msg is None:
            return
        task_id, ref, args = msg
        try:
            if ref not in functions:
                functions[ref] = resolve(ref)
            reply = (task_id, "ok", functions[ref](*args))
        except Exception as exc:
            reply = (task_id, "error", safe_error(exc))
        try:
            write_frame(frames_out, reply)
        except Exception as exc:  # an unpicklable result
            write_frame(frames_out, (task_id, "error", safe_error(exc)))


if __name__ == "__main__":
    main(sys.argv[1:])
