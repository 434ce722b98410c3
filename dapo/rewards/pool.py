"""A pool of worker processes with a hard per-task deadline: a task that overruns is killed, not waited for.

Why not `multiprocessing.Pool` or `concurrent.futures`: neither can stop a task that hangs (a sympy
simplification of an exponent tower can run for hours), and math-verify's own timeouts use SIGALRM,
which works only in a process's main thread. Here each worker is a fresh interpreter
(`python -m dapo.rewards._worker`, so the caller's `__main__` is never re-imported, unlike the "spawn"
start method) running tasks in its main thread. The parent talks to it through length-prefixed pickle
frames on its stdin/stdout, waits on the result pipes with a deadline, SIGKILLs a worker whose task
overruns, records a timeout for that task only and starts a replacement. A worker that dies (segfault,
OOM kill) is reported as an error for its task and replaced the same way.

Tasks are named by reference ("package.module:function") so that only strings and plain data cross the
process boundary; results must be picklable plain data (never sympy objects).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import struct
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import IO, Any

# A fresh worker imports its warm modules (math-verify + sympy: ~1-2 s) before it reports ready.
STARTUP_TIMEOUT_S = 120.0
_HEADER = struct.Struct("!Q")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one task: status "ok" (value set), "timeout" or "error" (error set)."""

    status: str
    value: Any = None
    error: str | None = None


def resolve(ref: str):
    """The function named by "package.module:function"."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def safe_error(exc: BaseException) -> str:
    """`Type: message`, bounded. Never str() arbitrary exception arguments: they may hold sympy objects
    whose printing can hang."""
    args = exc.args
    detail = args[0][:200] if args and isinstance(args[0], str) else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def write_frame(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """One frame; EOFError when the other side is gone."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class _Worker:
    def __init__(self, warm_modules: tuple[str, ...]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dapo.rewards._worker", *warm_modules],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.started_at = time.monotonic()
        self.ready = False
        self.task: tuple[int, float] | None = None  # (task index, deadline)

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    def send(self, obj: Any) -> None:
        assert self.process.stdin is not None
        write_frame(self.process.stdin, obj)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            if w.process.poll() is None:
                w.send(None)  # polite stop; kill() below catches the rest
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 1.0
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        w.kill()
    workers.clear()


class KillablePool:
    """`num_workers` worker processes that run named functions with a hard deadline per task.

    Args:
        num_workers: number of worker processes (≥ 1). They start when the pool is built and import
            `warm_modules` before taking tasks (so import time never eats into a task's deadline).
    """

    def __init__(self, num_workers: int, warm_modules: Sequence[str] = ()) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be ≥ 1, got {num_workers}")
        self._warm = tuple(warm_modules)
        self._workers = [_Worker(self._warm) for _ in range(num_workers)]
        self.num_restarts = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._warm)
        self.num_restarts += 1

    def map(self, ref: str, args_list: Sequence[tuple], timeout_s: float) -> list[TaskOutcome]:
        """Run `ref(*args)` for every args tuple; each task gets at most `timeout_s` seconds of wall time
        from the moment a worker receives it. Results come back in input order."""
        if not self._workers:
            raise RuntimeError("the pool is closed")
        results: list[TaskOutcome | None] = [None] * len(args_list)
        queue = deque(range(len(args_list)))
        while queue or any(w.task is not None for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.task is None and queue:
                    index = queue.popleft()
                    w.task = (index, now + timeout_s)
                    # A worker that died while idle fails the send; the read below reports it.
                    with contextlib.suppress(OSError, ValueError):
                        w.send((index, ref, args_list[index]))
            waits = [w.task[1] - now for w in self._workers if w.task is not None]
            waits += [w.started_at + STARTUP_TIMEOUT_S - now for w in self._workers if not w.ready]
            readable = wait([w.stdout for w in self._workers], timeout=max(0.0, min(waits, default=0.0)))
            for w in list(self._workers):
                if w.stdout in readable:
                    self._receive(w, results)
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is not None and now > w.task[1]:
                    results[w.task[0]] = TaskOutcome("timeout", error=f"exceeded {timeout_s:g} s")
                    self._replace(w)
                elif not w.ready and now > w.started_at + STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"a scoring worker did not start within {STARTUP_TIMEOUT_S:g} s")
        return results  # type: ignore[return-value]

    def _receive(self, w: _Worker, results: list[TaskOutcome | None]) -> None:
        try:
            task_id, status, payload = read_frame(w.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            code = w.process.poll()
            if not w.ready:
                raise RuntimeError(f"a scoring worker exited while starting (exit code {code})") from None
            if w.task is not None:
                results[w.task[0]] = TaskOutcome("error", error=f"worker died (exit code {code})")
            self._replace(w)
            return
        if task_id == "ready":
            w.ready = True
            return
        assert w.task is not None and w.task[0] == task_id, "out-of-order reply from a worker"
        results[task_id] = TaskOutcome("ok", value=payload) if status == "ok" else TaskOutcome("error", error=payload)
        w.task = None

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        self._finalizer()

    def __enter__(self) -> KillablePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
