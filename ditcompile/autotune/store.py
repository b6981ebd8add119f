"""The persistent tuning cache: one JSON file per device and software stack.

    <cache dir>/<device>__torch-<v>__triton-<v>__cuda-<v>__ditaccel-<v>.json
    {
      "format": 1,
      "header": {"device": "NVIDIA H200", "capability": "sm90", "torch": "2.11.0", "triton": "3.6.0",
                 "cuda": "12.8", "ditaccel": "0.1.0", "candidate_sets": {"attention.dense": "3f2a..."}},
      "entries": {"<TuneKey.to_str()>": {"op": "attention.dense", "winner": "sdpa.cudnn",
                  "default": "sdpa", "times_ms": {...}, "dropped": {...}, "set": "3f2a...",
                  "tuned_at": "2026-12-01T10:00:00Z"}}
    }

The cache dir is `autotune.cache_dir` when set, else $DITACCEL_AUTOTUNE_DIR, else the user cache
directory (`platformdirs.user_cache_dir("ditaccel")/autotune`, e.g. ~/.cache/ditaccel/autotune).

Rules:
- A file whose header does not match this machine (another GPU, torch, triton, CUDA or ditaccel
  version) is ignored, never used; an entry whose candidate-set hash differs from the op's
  current set (a candidate added, removed or newly installed) is ignored.
- A corrupt, truncated or foreign file at our path gives one warning, is moved aside
  (`<name>.bad-<time>.json`, nothing is deleted) and rebuilt at the next write; never a crash.
- Writes are atomic (`fileio`) and merge under a file lock (`filelock`): two processes tuning at
  once both keep their entries (for the same key the later write wins).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import filelock
import platformdirs
import torch

from ..fileio import atomic_write_text
from .key import TuneKey

log = logging.getLogger("ditcompile")

FORMAT = 1
ENV_DIR = "DITACCEL_AUTOTUNE_DIR"
LOCK_TIMEOUT_S = 120.0
IDENTITY_FIELDS = ("device", "capability", "torch", "triton", "cuda", "ditaccel")


class TuneStoreError(ValueError):
    """A file given to import is not a tuning cache of this machine and software stack."""


def default_cache_dir(configured: str = "") -> Path:
    """`configured` (the `autotune.cache_dir` option) if set, else $DITACCEL_AUTOTUNE_DIR, else the
    platform's user cache dir + "autotune"."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(ENV_DIR, "")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("ditaccel", appauthor=False)) / "autotune"


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def stack_identity(device: torch.device | str) -> dict:
    """What a tuning result is valid for: device name and compute capability, torch / triton /
    CUDA / ditaccel versions (None where absent)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name, capability = torch.cuda.get_device_name(index), f"sm{major}{minor}"
    else:
        name, capability = f"{dev.type} {platform.machine() or 'unknown'}", ""
    return {"device": name, "capability": capability, "torch": torch.__version__, "triton": _version("triton"),
            "cuda": torch.version.cuda, "ditaccel": _version("ditaccel")}


def cache_file_name(identity: dict) -> str:
    """The file name for `identity` (every field in it: one file per device and stack)."""
    def slug(value: Any) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value or "none")).strip("-")
    device = slug(f"{identity['device']} {identity['capability']}".strip())
    stack = "__".join(f"{k}-{slug(identity[k])}" for k in ("torch", "triton", "cuda", "ditaccel"))
    return f"{device}__{stack}.json"


_WARNED: set = set()
_WARN_LOCK = threading.Lock()


def _warn_once(path: Path, message: str, *args: Any) -> None:
    with _WARN_LOCK:
        if (str(path), message) in _WARNED:
            return
        _WARNED.add((str(path), message))
    log.warning(message, *args)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_cache_file(path: Path) -> dict:
    """The parsed file: {"format", "header", "entries"}. Raises ValueError (with the reason) for a
    file that is not a tuning cache (bad JSON, truncated, wrong format or structure) and OSError
    when it cannot be read."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg}; line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a ditaccel tuning cache of format {FORMAT}")
    header, entries = data.get("header"), data.get("entries")
    if not isinstance(header, dict) or not isinstance(entries, dict):
        raise ValueError("header or entries missing")
    for name, entry in entries.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("op"), str) and isinstance(entry.get("winner"), str)
                and isinstance(entry.get("set"), str)):
            raise ValueError(f"entry {name[:60]!r} is malformed")
        TuneKey.from_str(name)
    return data


def header_mismatch(header: dict, identity: dict) -> list[str]:
    """The identity fields in which `header` differs from `identity` ("torch: 2.11.0 != 2.13.0")."""
    return [f"{k}: {header.get(k)!r} != {identity.get(k)!r}" for k in IDENTITY_FIELDS if header.get(k) != identity.get(k)]


class TuneStore:
    """The tuning cache file of one device and software stack in `directory`.

    get(key, set_hash) -> entry dict or None; put(results, set_hashes) merges and writes;
    entries(); clear(); export_to(path); import_from(path).
    """

    def __init__(self, directory: Path | str, identity: dict) -> None:
        self.directory = Path(directory)
        self.identity = dict(identity)
        self.path = self.directory / cache_file_name(self.identity)
        self._lock = threading.Lock()
        self._entries: Optional[dict] = None

    # ------------------------------------------------------------------ reading
    def _read_valid(self) -> tuple[dict, dict]:
        """(entries, candidate-set hashes of the header) of the file at `self.path` if it is ours;
        ({}, {}) for a missing file; for a corrupt or foreign one: one warning, the file moved
        aside, ({}, {})."""
        try:
            data = read_cache_file(self.path)
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, UnicodeDecodeError) as err:
            self._set_aside(f"is not a usable tuning cache ({err})")
            return {}, {}
        mismatch = header_mismatch(data["header"], self.identity)
        if mismatch:
            self._set_aside(f"was written for another device or software stack ({'; '.join(mismatch)})")
            return {}, {}
        return data["entries"], data["header"].get("candidate_sets", {})

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.stem}.bad-{_utc_now().replace(':', '')}{self.path.suffix}")
        try:
            os.replace(self.path, aside)
            where = f"moved to {aside.name}; it will be rebuilt"
        except OSError as err:
            where = f"could not be moved aside ({err}); it is ignored"
        _warn_once(self.path, "ditaccel autotune: the tuning cache %s %s; %s", self.path, why, where)

    def entries(self, refresh: bool = False) -> dict:
        """Every entry of the file (read once, again with `refresh`)."""
        with self._lock:
            if self._entries is None or refresh:
                self._entries = self._read_valid()[0]
            return dict(self._entries)

    def get(self, key: TuneKey, set_hash: str) -> Optional[dict]:
        """The entry for `key` if it was tuned against the candidate set `set_hash`, else None."""
        entry = self.entries().get(key.to_str())
        if entry is None or entry.get("set") != set_hash:
            return None
        return entry

    def stale(self, key: TuneKey, set_hash: str) -> bool:
        """True when `key` has an entry tuned against another candidate set (to tune again)."""
        entry = self.entries().get(key.to_str())
        return entry is not None and entry.get("set") != set_hash

    # ------------------------------------------------------------------ writing
    def _file_lock(self) -> filelock.FileLock:
        return filelock.FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def _write(self, entries: dict, set_hashes: dict) -> None:
        header = {**self.identity, "candidate_sets": dict(sorted(set_hashes.items()))}
        text = json.dumps({"format": FORMAT, "header": header, "entries": dict(sorted(entries.items()))}, indent=1)
        atomic_write_text(self.path, text + "\n")

    def merge(self, new_entries: dict, set_hashes: dict) -> int:
        """Under the file lock: read the file again, add `new_entries` (key string -> entry; they
        replace entries of the same key), write atomically. Returns the number of entries in the
        file. Raises OSError when the directory cannot be written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._file_lock():
            current, old_sets = self._read_valid()
            merged = {**current, **new_entries}
            self._write(merged, {**old_sets, **set_hashes})
        with self._lock:
            self._entries = merged
        return len(merged)

    def put(self, results: Iterable[Any], set_hashes: dict) -> int:
        """Persist `TuneResult`s (see `merge`)."""
        new = {}
        for r in results:
            new[r.key.to_str()] = {"op": r.op, "winner": r.winner, "default": r.default,
                                   "times_ms": {k: round(v, 6) for k, v in r.times_ms.items()},
                                   "dropped": dict(r.dropped), "set": set_hashes[r.op], "tuned_at": _utc_now()}
        return self.merge(new, set_hashes)

    def clear(self) -> bool:
        """Remove this stack's file (under the lock); True when there was one."""
        with self._lock:
            self._entries = {}
        if not self.path.exists():
            return False
        with self._file_lock():
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
        return True

    def export_to(self, dest: Path | str) -> int:
        """Copy the valid entries to `dest` (atomic), with this stack's header; returns the count."""
        entries, sets = self._read_valid()
        with self._lock:
            self._entries = entries
        header = {**self.identity, "candidate_sets": sets}
        atomic_write_text(dest, json.dumps({"format": FORMAT, "header": header, "entries": entries}, indent=1) + "\n")
        return len(entries)

    def import_from(self, src: Path | str) -> int:
        """Merge the entries of a file exported on a machine of the same kind; returns how many.

        Raises TuneStoreError naming what differs (device, capability, versions) or why the file
        is not a tuning cache; OSError when it cannot be read or the cache cannot be written."""
        try:
            data = read_cache_file(Path(src))
        except ValueError as err:
            raise TuneStoreError(f"{src} is not a ditaccel tuning cache: {err}") from None
        mismatch = header_mismatch(data["header"], self.identity)
        if mismatch:
            raise TuneStoreError(f"{src} was tuned on another device or software stack ({'; '.join(mismatch)}); "
                                 "tuning results are only shared between machines of the same kind")
        self.merge(data["entries"], data["header"].get("candidate_sets", {}))
        return len(data["entries"])


__all__ = ["FORMAT", "ENV_DIR", "TuneStore", "TuneStoreError", "default_cache_dir", "stack_identity",
           "cache_file_name", "read_cache_file", "header_mismatch"]
