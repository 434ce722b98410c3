"""Atomic, verified, resumable checkpoints.

Layout (verl-compatible names, so verl users find their way around)::

    root/
      latest_checkpointed_iteration.txt     the committed step to resume from ("120\\n")
      global_step_100/
        manifest.json                       written last: sha256 + size + format of every file below
        model.safetensors                   one file per top-level key of the saved state
        optimizer.pt  scheduler.pt  rng.pt  buffer.pt  ...
        sampler.json  counters.json  config.json  ...
      global_step_120/ ...

Why it is safe to kill the process at any instant:

1. A save writes everything into ``root/.tmp-global_step_{N}-{pid}/``, fsyncs every file and the
   directory, then ``os.replace``\\s the directory to ``global_step_{N}``. A directory without a
   ``manifest.json`` is never treated as a checkpoint, and the manifest is the last file written.
2. Only then the pointer file is replaced atomically (tmp file + fsync + ``os.replace`` + fsync of the
   root). Until that moment the pointer names the previous checkpoint, which is untouched.
3. Old checkpoints are deleted only after the pointer names the new one.
   They are renamed out of the ``global_step_*`` namespace first, so a kill during deletion never
   leaves a half-deleted directory that still looks committed.
4. ``load`` checks size and sha256 of every file against the manifest before deserialising anything,
   so a truncated or bit-flipped file is reported by name instead of being half-loaded.

Serialisation, piece by piece:

* a flat ``{name: Tensor}`` state dict (``model``, ``critic``) -> safetensors (no pickle at all);
* a `ShardedWrite` (``policy_shards``, ``critic_shards``) -> a directory its callable fills, on every rank at
  once (`torch.distributed.checkpoint`: each rank writes its own shards; `dapo.workers.shards`); the manifest
  lists every file in it, and `load` returns it as a `ShardedState` (its verified path) for the ranks to read;
* a value that survives ``json.loads(json.dumps(x)) == x`` exactly (sampler position, counters,
  config, metric history) -> JSON, human-readable;
* anything else (optimizer, scheduler, RNG states, the buffer of kept groups) -> ``torch.save``.

``torch.save`` files are read back with ``torch.load(weights_only=True)``. At save time the manifest
records the classes a file needs beyond what ``weights_only`` allows (``get_unsafe_globals_in_checkpoint``);
at load time classes from the ``dapo`` package and numpy's array types are allow-listed for that one
call, so project dataclasses in the buffer still load with ``weights_only=True``. Any other class makes
``weights_only`` impossible: ``load`` then refuses with an error naming the classes unless the caller
passes them in ``safe_globals`` or explicitly trusts the file with ``trust_pickle=True`` (full pickle,
only after the sha256 check; it runs code from the file, so only for checkpoints you wrote).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dapo.errors import DapoError

__all__ = [
    "POINTER_FILE",
    "CheckpointError",
    "CheckpointManager",
    "ShardedState",
    "ShardedWrite",
    "capture_rng_state",
    "restore_rng_state",
]

POINTER_FILE = "latest_checkpointed_iteration.txt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
_TMP_DIR = re.compile(r"^\.(tmp|trash|del)-global_step_(\d+)-(\d+)$")
_KEY = re.compile(r"^[A-Za-z0-9_]+$")
# Modules whose classes may be allow-listed for weights_only loading without asking the caller:
# our own package (records kept in the buffer) and numpy's array reconstruction.
_TRUSTED_MODULE_PREFIXES = ("dapo.", "numpy.")
# Classes that moved since checkpoints holding them were first written: old qualified name -> where the class
# lives now. A pickle names the class where it lived at save time, so an older checkpoint names the old place.
_MOVED_CLASSES = {
    "dapo.groups.ScoredGroup": "dapo.step.groups.ScoredGroup",
    "dapo.data.records.PromptRecord": "dapo.data.types.PromptRecord",
    "dapo.data.records.ChatMessage": "dapo.data.types.ChatMessage",
}


class CheckpointError(DapoError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or unloadable. The message names the file."""


@dataclass(frozen=True)
class ShardedWrite:
    """A checkpoint piece written by others into a directory: `write(directory)` fills it (the training ranks,
    each with its own shards) before the manifest, which then lists and hashes every file in it."""

    write: Callable[[Path], None]


@dataclass(frozen=True)
class ShardedState:
    """A loaded checkpoint's sharded piece: the verified directory, for the ranks to read their shards from."""

    path: Path


# --------------------------------------------------------------------------------------------- RNG


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot of every random number generator that influences a run.

    Covers Python's ``random``, numpy's legacy global generator, torch's CPU generator, every CUDA
    device's generator when CUDA is available, and any extra named ``torch.Generator`` (for example
    the rollout engine's sampling generator). The result holds only tensors, ints, floats, strings and
    tuples, so it loads with ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            # uint32 key as int64 tensor: weights_only cannot unpickle a numpy array without allow-listing.
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng_state`: the next draws equal those that followed the capture.

    Raises KeyError when a generator passed in ``generators`` was not captured, so a resumed run
    cannot silently continue with a fresh seed.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": np.asarray(npst["key"].numpy(), dtype=np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"generator {name!r} was not captured (captured: {sorted(saved)})")
        g.set_state(saved[name])


# ------------------------------------------------------------------------------------- file helpers


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the directory entries (new names, renames) durable, not only the file contents.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_tensor_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) and v.layout == torch.strided for v in value.values())
    )


def _is_exact_json(value: Any) -> bool:
    # Exact round trip only: tuples, int dict keys, NaN and tensors all fail this and go to torch.save.
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


def _write_safetensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage (tied embeddings) and non-contiguous views;
    # store an independent contiguous copy of each and restore tying by load_state_dict.
    seen: set[tuple[int, int]] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        flat[name] = t
    save_file(flat, str(path), metadata={"key_order": json.dumps(list(state))})


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as f:
        order = json.loads((f.metadata() or {}).get("key_order", "null")) or list(f.keys())
        return {name: f.get_tensor(name) for name in order}


def _verify_file(path: Path, entry: Mapping[str, Any], key: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (checkpoint piece {key!r})")
    size = path.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(f"{path}: size {size} bytes, manifest says {entry['size']} (truncated or overwritten)")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 mismatch with the manifest (corrupted)")


def _resolve_global(name: str) -> Any:
    # Qualified names of nested classes have dots: try the longest importable module prefix.
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module, qualname = ".".join(parts[:cut]), parts[cut:]
        try:
            obj: Any = importlib.import_module(module)
        except ImportError:
            continue
        for attr in qualname:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {name}")


def _numpy_dtype_classes() -> list[type]:
    import numpy.dtypes

    return [c for c in vars(numpy.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]


# ------------------------------------------------------------------------------------------ manager


class CheckpointManager:
    """Saves, lists, verifies and loads the checkpoints of one run directory.

    Args:
        root: the run's checkpoint directory (created if missing).
        keep_last: how many committed checkpoints to keep (>= 1); older ones are deleted after a
            newer one is committed.

    On construction, leftovers of a save that was killed (``.tmp-*`` directories of processes that
    are no longer alive) are removed; another live process's in-flight save is left alone.
    """

    def __init__(self, root: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.root.mkdir(parents=True, exist_ok=True)
        self._recover_interrupted()

    # ---- listing

    def step_dir(self, step: int) -> Path:
        return self.root / f"global_step_{step}"

    def steps(self) -> list[int]:
        """Committed steps (a ``global_step_N`` directory with a manifest), ascending."""
        found = []
        for entry in self.root.iterdir():
            m = _STEP_DIR.match(entry.name)
            if m and (entry / MANIFEST_FILE).is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def latest_step(self) -> int | None:
        """The step named by the pointer file; if the pointer is missing or names no committed
        checkpoint, the newest committed step (None when there is none)."""
        committed = self.steps()
        pointer = self.root / POINTER_FILE
        if pointer.is_file():
            try:
                step = int(pointer.read_text().strip())
            except ValueError:
                step = None
            if step in committed:
                return step
            if committed:
                warnings.warn(
                    f"{pointer} names {step}, which is not a committed checkpoint; using the newest "
                    f"committed step {committed[-1]}",
                    stacklevel=2,
                )
        return committed[-1] if committed else None

    # ---- save

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write ``state`` as checkpoint ``step`` atomically; returns the committed directory.

        Each top-level key becomes one file (names must match ``[A-Za-z0-9_]+``). If the step
        already exists it is replaced (the old copy is moved aside first and restored on the next
        start if the process dies in between).
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        bad = [k for k in state if not isinstance(k, str) or not _KEY.match(k)]
        if bad:
            raise ValueError(f"checkpoint keys must match [A-Za-z0-9_]+, got {bad}")

        tmp = self.root / f".tmp-global_step_{step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            files = {key: self._write_piece(tmp, key, value) for key, value in state.items()}
            manifest = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "created_unix": time.time(),
                "torch_version": torch.__version__,
                "files": files,
            }
            self._write_text_durably(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1))
            _fsync_dir(tmp)
            final = self._commit_dir(tmp, step)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._write_pointer(step)
        self._apply_retention(step)
        return final

    def _write_piece(self, tmp: Path, key: str, value: Any) -> dict[str, Any]:
        if isinstance(value, ShardedWrite):
            return self._write_sharded(tmp / key, value)
        entry: dict[str, Any] = {}
        path = None
        if _is_tensor_state_dict(value):
            try:
                path = tmp / f"{key}.safetensors"
                _write_safetensors(path, value)
                entry["format"] = "safetensors"
            except Exception:  # unusual dtype or layout: torch.save handles it
                path = None
        if path is None and _is_exact_json(value):
            path = tmp / f"{key}.json"
            path.write_text(json.dumps(value, allow_nan=False))
            entry["format"] = "json"
        if path is None:
            path = tmp / f"{key}.pt"
            with open(path, "wb") as f:
                torch.save(value, f)
            entry["format"] = "torch"
            entry["globals"] = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            foreign = [g for g in entry["globals"] if not g.startswith(_TRUSTED_MODULE_PREFIXES)]
            if foreign:
                warnings.warn(
                    f"checkpoint piece {key!r} pickles classes outside dapo/numpy {foreign}; loading it "
                    "will need load(safe_globals=[...]) or trust_pickle=True",
                    stacklevel=3,
                )
        _fsync_file(path)
        entry.update(file=path.name, size=path.stat().st_size, sha256=_sha256(path))
        return entry

    @staticmethod
    def _write_sharded(directory: Path, piece: ShardedWrite) -> dict[str, Any]:
        directory.mkdir()
        piece.write(directory)
        files = {}
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            _fsync_file(path)  # DCP fsyncs its own files; this also covers what another writer may leave unsynced
            files[str(path.relative_to(directory))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        if not files:
            raise CheckpointError(f"{directory}: the sharded writer wrote no file")
        _fsync_dir(directory)
        return {"format": "sharded", "dir": directory.name, "files": files}

    @staticmethod
    def _write_text_durably(path: Path, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def _commit_dir(self, tmp: Path, step: int) -> Path:
        final = self.step_dir(step)
        trash = None
        if final.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            trash = self.root / f".trash-global_step_{step}-{os.getpid()}"
            os.replace(final, trash)
        try:
            os.replace(tmp, final)
        except BaseException:
            if trash is not None:
                os.replace(trash, final)  # put the old copy back before reporting the failure
            raise
        _fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return final

    def _write_pointer(self, step: int) -> None:
        tmp = self.root / f".{POINTER_FILE}.tmp-{os.getpid()}"
        self._write_text_durably(tmp, f"{step}\n")
        os.replace(tmp, self.root / POINTER_FILE)
        _fsync_dir(self.root)

    def _apply_retention(self, step: int) -> None:
        committed = self.steps()
        older = [s for s in committed if s < step]
        newer = [s for s in committed if s > step]
        for s in older[: max(0, len(older) - (self.keep_last - 1))]:
            # Rename first: a kill during rmtree must not leave a half-deleted dir that still looks committed.
            doomed = self.root / f".del-global_step_{s}-{os.getpid()}"
            os.replace(self.step_dir(s), doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        if newer:
            # A run resumed from an earlier checkpoint: the newer ones belong to the abandoned run.
            warnings.warn(
                f"checkpoints newer than step {step} exist in {self.root} ({newer}); they are from an "
                f"abandoned run, are kept, and the pointer now names step {step}",
                stacklevel=3,
            )

    def _recover_interrupted(self) -> None:
        for entry in self.root.iterdir():
            m = _TMP_DIR.match(entry.name)
            if not m or not entry.is_dir():
                continue
            kind, step, pid = m.group(1), int(m.group(2)), int(m.group(3))
            if _pid_alive(pid) and pid != os.getpid():
                continue  # another live process is saving right now
            final = self.step_dir(step)
            if kind == "trash" and not final.exists() and (entry / MANIFEST_FILE).is_file():
                os.replace(entry, final)  # died between moving the old copy aside and committing
            else:
                shutil.rmtree(entry, ignore_errors=True)
        for entry in self.root.glob(f".{POINTER_FILE}.tmp-*"):
            entry.unlink(missing_ok=True)

    # ---- load

    def verify(self, step: int) -> dict[str, Any]:
        """Check every file of ``step`` against its manifest; returns the manifest.

        Raises CheckpointError naming the first missing, truncated or corrupted file.
        """
        d = self.step_dir(step)
        mpath = d / MANIFEST_FILE
        if not mpath.is_file():
            raise CheckpointError(f"{mpath}: missing, so {d} is not a committed checkpoint")
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{mpath}: format_version {manifest.get('format_version')}, expected {FORMAT_VERSION}"
            )
        for key, entry in files.items():
            if entry.get("format") == "sharded":
                for name, part in entry["files"].items():
                    _verify_file(d / entry["dir"] / name, part, key)
            else:
                _verify_file(d / entry["file"], entry, key)
        return manifest

    def load(
        self,
        step: int | None = None,
        *,
        fallback: bool = False,
        map_location: Any = "cpu",
        safe_globals: Iterable[Any] = (),
        trust_pickle: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """Verify and load a checkpoint; returns ``(step, state)`` with the keys given to `save`.

        Args:
            step: which checkpoint; None = `latest_step`.
            fallback: if the requested checkpoint is bad, try the earlier committed ones, newest
                first, and warn naming the bad file and the step actually loaded.
            map_location: passed to ``torch.load``; safetensors pieces go to the same device when
                it is a device or string, else to the CPU.
            safe_globals: extra classes to allow-list for ``weights_only`` loading.
            trust_pickle: load pieces that need classes outside dapo/numpy/safe_globals with full
                pickle (after the sha256 check). Only for checkpoints you wrote yourself.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"{self.root}: no committed checkpoint (no global_step_*/manifest.json)")
        candidates = [step] + ([s for s in reversed(self.steps()) if s < step] if fallback else [])
        failures: list[str] = []
        for s in candidates:
            try:
                state = self._load_verified(s, map_location, list(safe_globals), trust_pickle)
            except CheckpointError as e:
                if not fallback:
                    raise
                failures.append(str(e))
                continue
            if failures:
                warnings.warn(
                    f"loaded checkpoint step {s} instead of step {step}: " + "; ".join(failures),
                    stacklevel=2,
                )
            return s, state
        raise CheckpointError(f"no loadable checkpoint at or before step {step}: " + "; ".join(failures))

    def _load_verified(
        self, step: int, map_location: Any, safe_globals: list[Any], trust_pickle: bool
    ) -> dict[str, Any]:
        manifest = self.verify(step)
        d = self.step_dir(step)
        device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
        state: dict[str, Any] = {}
        for key, entry in manifest["files"].items():
            if entry.get("format") == "sharded":
                state[key] = ShardedState(d / entry["dir"])
                continue
            path = d / entry["file"]
            try:
                fmt = entry["format"]
                if fmt == "safetensors":
                    state[key] = _read_safetensors(path, device)
                elif fmt == "json":
                    state[key] = json.loads(path.read_text())
                elif fmt == "torch":
                    state[key] = self._torch_load(path, entry, map_location, safe_globals, trust_pickle)
                else:
                    raise CheckpointError(f"{path}: unknown format {fmt!r} in the manifest")
            except CheckpointError:
                raise
            except Exception as e:  # hash matched, so this is a code/environment problem: say which file
                raise CheckpointError(f"{path}: could not be deserialised ({type(e).__name__}: {e})") from e
        return state

    @staticmethod
    def _torch_load(
        path: Path, entry: Mapping[str, Any], map_location: Any, safe_globals: list[Any], trust_pickle: bool
    ) -> Any:
        needed = list(entry.get("globals", []))
        allow = list(safe_globals)
        allowed_names = {f"{getattr(o, '__module__', '')}.{getattr(o, '__qualname__', '')}" for o in allow}
        foreign = [g for g in needed if g not in allowed_names and not g.startswith(_TRUSTED_MODULE_PREFIXES)]
        if foreign:
            if not trust_pickle:
                raise CheckpointError(
                    f"{path}: needs classes {foreign} that weights_only loading does not allow; pass them "
                    "as load(safe_globals=[...]) or, for a checkpoint you wrote, trust_pickle=True"
                )
            # The caller vouched for the file and its sha256 matched the manifest: full pickle.
            return torch.load(path, map_location=map_location, weights_only=False)
        for name in needed:
            if name in _MOVED_CLASSES:
                allow.append((_resolve_global(_MOVED_CLASSES[name]), name))  # unpickled under its old name
            elif name not in allowed_names:
                allow.append(_resolve_global(name))
        if any(g.startswith("numpy.") for g in needed):
            allow.extend(_numpy_dtype_classes())  # dtype instances are rebuilt from their DType class
        ctx = torch.serialization.safe_globals(allow) if allow else contextlib.nullcontext()
        with ctx:
            return torch.load(path, map_location=map_location, weights_only=True)
