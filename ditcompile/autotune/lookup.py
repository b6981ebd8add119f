"""Run-time choice of a candidate, inside the ops (shapes are real there, even when the compiled
graph's shapes were symbolic).

    tuner = autotuner(mode="offline", cache_dir="")   # one per (mode, dir) per process
    choice = tuner.choose(tunable, problem)           # Choice(name, source)

Modes (`autotune.mode`):
    offline  (default) look up the persistent cache; a miss uses the op's documented default and
             logs one line per process naming the command that fills the cache
    online   a miss tunes the problem now (validate, then time, with the real tensors), persists
             the result and uses it; never while a CUDA graph is being captured (default then)
    off      the default, no lookup

A cached winner is checked against the call's problem before use (a shape in the same bucket may
not suit it); if it cannot run it, the default runs and the reason is logged once.

The last choice per site (`record_choice`) is what `ditaccel explain` reports.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from .candidates import Tunable, candidate_set_hash
from .key import TuneKey
from .store import TuneStore, default_cache_dir, stack_identity
from .timing import median_ms
from .tuner import TuneResult, tune_problem

log = logging.getLogger("ditcompile")

MODES = ("offline", "online", "off")
TUNE_COMMAND = "ditaccel autotune --model NAME (or --preset NAME) --resolution HEIGHTxWIDTHxFRAMES"

# Choice.source values
FROM_CACHE = "cache"
TUNED_NOW = "tuned now"
DEFAULT_MISS = "default: not tuned"
DEFAULT_OFF = "default: autotune off"
DEFAULT_INVALID = "default: the cached choice cannot run this call"
DEFAULT_FAILED = "default: tuning failed"
DEFAULT_RECORDING = "default: recording shapes"
DEFAULT_STALE = "default: the cached entry is stale (candidates changed since it was tuned)"


@dataclass(frozen=True)
class Choice:
    """name: the candidate that runs; source: where the choice came from (one of the constants
    above: "cache", "tuned now", "default: ...")."""

    name: str
    source: str

    @property
    def from_cache(self) -> bool:
        return self.source in (FROM_CACHE, TUNED_NOW)

    def describe(self) -> str:
        """"sdpa.cudnn (cache)", "sdpa (default: not tuned)"."""
        return f"{self.name} ({self.source})"


def _device_of(problem: Any) -> torch.device:
    return torch.device(getattr(problem, "device", "cpu"))


class Autotuner:
    """The run-time lookup of one mode and cache directory (see the module docstring).

    time_ms(fn, budget_ms, device) -> median ms: injectable for tests (default `median_ms`)."""

    def __init__(self, mode: str = "offline", cache_dir: str | Path = "", budget_ms: float = 50.0,
                 time_ms: Optional[Callable[..., float]] = None) -> None:
        if mode not in MODES:
            raise ValueError(f"autotune mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.cache_dir = default_cache_dir(str(cache_dir))
        self.budget_ms = budget_ms
        self.time_ms = time_ms or median_ms
        self._stores: dict[str, TuneStore] = {}
        self._memo: dict[tuple, Choice] = {}
        self._hinted: set = set()
        self._lock = threading.Lock()

    def store(self, device: torch.device | str) -> TuneStore:
        """The cache file of `device`'s stack in this tuner's directory."""
        dev = torch.device(device)
        name = str(dev) if dev.type != "cuda" else f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                store = self._stores[name] = TuneStore(self.cache_dir, stack_identity(dev))
            return store

    def forget(self) -> None:
        """Drop the memo and the loaded files (the next lookup reads the cache again)."""
        with self._lock:
            self._memo.clear()
            self._stores.clear()

    def choose(self, tunable: Tunable, problem: Any, site: str = "") -> Choice:
        """The candidate to run `problem` (a call at `site`, a module path) with (see the module
        docstring). Inside `recording()` the problem is recorded and the default runs."""
        default = tunable.default(problem)
        recorder = _RECORDER[0]
        if recorder is not None:
            recorder.add(tunable, problem, site)
            return Choice(default, DEFAULT_RECORDING)
        if self.mode == "off":
            return Choice(default, DEFAULT_OFF)
        key = tunable.key(problem)
        memo_key = (tunable.op, key)
        choice = self._memo.get(memo_key)
        if choice is None:
            choice = self._lookup(tunable, problem, key, default)
            with self._lock:
                if len(self._memo) > 4096:
                    self._memo.clear()
                self._memo[memo_key] = choice
        if choice.name != default:
            candidate = tunable.candidate(choice.name)
            reason = "no longer a candidate" if candidate is None else candidate.reason_invalid(problem)
            if reason is not None:
                self._hint_once(("invalid", tunable.op, choice.name, reason), logging.WARNING,
                                "ditaccel autotune: %s: the cached choice %s cannot run this call (%s); using the "
                                "default %s", tunable.op, choice.name, reason, default)
                return Choice(default, DEFAULT_INVALID)
        return choice

    def cached_winners(self, tunable: Tunable, device: torch.device | str, **fields: Any) -> dict[str, str]:
        """The fresh entries of `tunable` in `device`'s cache whose key has every given field
        value (e.g. ``dtype="torch.float16", heads=12``), as {key string: winner}; no log, no
        memo. For decisions made before any call (the backend lowers a dense site to aten SDPA
        unless the cache holds another kernel for it); a file that cannot be read gives {}."""
        set_hash = candidate_set_hash(tunable)
        wanted = {k: str(v) if isinstance(v, torch.dtype) else v for k, v in fields.items()}
        out = {}
        for text, entry in self.store(device).entries().items():
            if entry.get("set") != set_hash or tunable.candidate(entry.get("winner", "")) is None:
                continue  # stale or unknown: the default runs
            try:
                key = TuneKey.from_str(text)
            except ValueError:
                continue
            have = dict(key.fields)
            if key.kernel == tunable.op and all(have.get(k) == v for k, v in wanted.items()):
                out[text] = entry["winner"]
        return out

    def _lookup(self, tunable: Tunable, problem: Any, key: Any, default: str) -> Choice:
        device = _device_of(problem)
        store = self.store(device)
        set_hash = candidate_set_hash(tunable)
        entry = store.get(key, set_hash)
        if entry is not None and tunable.candidate(entry["winner"]) is not None:
            return Choice(entry["winner"], FROM_CACHE)
        stale = entry is not None or store.stale(key, set_hash)  # unknown winner, or another candidate set
        if self.mode == "online" and not _capturing(device):
            try:
                result = self.tune(tunable, problem, persist_crashes=False)
            except Exception as err:  # noqa: BLE001 -- tuning must never break the model's call
                log.warning("ditaccel autotune: tuning %s failed (%s); using the default %s", tunable.op, err, default)
                return Choice(default, DEFAULT_FAILED)
            return Choice(result.winner, TUNED_NOW)
        if stale:
            self._hint_once(("stale", str(store.path)), logging.WARNING,
                            "ditaccel autotune: the tuning cache entry for %s %s was made with another set of "
                            "candidate kernels (one was added, removed or installed since); using the default (%s). "
                            "Run `%s` again (cache file: %s)", tunable.op, key.to_str(), default, TUNE_COMMAND,
                            store.path)
            return Choice(default, DEFAULT_STALE)
        self._hint_once(("miss", str(store.path)),
                        logging.WARNING if device.type == "cuda" else logging.INFO,
                        "ditaccel autotune: no tuning result for %s %s on %s; using the default kernel (%s). Fill "
                        "the cache with `%s` (cache file: %s), or set autotune.mode='online'",
                        tunable.op, key.to_str(), store.identity["device"], default, TUNE_COMMAND, store.path)
        return Choice(default, DEFAULT_MISS)

    def tune(self, tunable: Tunable, problem: Any, persist: bool = True, strict: bool = False,
             persist_crashes: bool = True) -> TuneResult:
        """Validate and time every candidate on `problem`, persist the result (with `persist`).
        A cache that cannot be written is logged once (the result is used in this process);
        with `strict` the OSError is raised (the `ditaccel autotune` command). Without
        `persist_crashes` a result in which a candidate crashed is used but not saved (online
        tuning runs inside the model's call, where a candidate can fail for reasons of that
        context, e.g. eager FlexAttention's vmap inside an Inductor graph)."""
        device = _device_of(problem)
        result = tune_problem(tunable, problem, lambda fn, budget: self.time_ms(fn, budget, device), self.budget_ms)
        crashed = sorted(name for name, why in result.dropped.items() if why.startswith("crashed"))
        if persist and crashed and not persist_crashes:
            persist = False
            self._hint_once(("unsaved", tunable.op, tuple(crashed)), logging.WARNING,
                            "ditaccel autotune: %s: candidate(s) %s crashed while tuning inside the model's call; the "
                            "result is used in this process but not saved. Run `%s` to tune outside the call",
                            tunable.op, ", ".join(crashed), TUNE_COMMAND)
        if persist:
            try:
                self.store(device).put([result], {tunable.op: candidate_set_hash(tunable)})
            except OSError as err:
                if strict:
                    raise
                self._hint_once(("write", str(err)), logging.WARNING, "ditaccel autotune: cannot write the tuning cache (%s); the "
                                "result is used in this process only", err)
        with self._lock:
            self._memo[(tunable.op, result.key)] = Choice(result.winner, TUNED_NOW)
        return result

    def _hint_once(self, key: tuple, level: int, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._hinted:
                return
            self._hinted.add(key)
        log.log(level, message, *args)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


@functools.lru_cache(maxsize=16)
def autotuner(mode: str = "offline", cache_dir: str = "") -> Autotuner:
    """The process's `Autotuner` for a mode and cache dir ("" = the default dir)."""
    return Autotuner(mode, cache_dir)


def reset_autotuners() -> None:
    """Forget every process-wide autotuner (their memos and loaded files)."""
    autotuner.cache_clear()
    clear_recorded_choices()


@dataclass
class Recorded:
    """One distinct problem seen while recording: its tunable, the first problem of its key (with
    cloned inputs), the sites that made it and how many calls did."""

    tunable: Tunable
    problem: Any
    sites: list
    calls: int = 1


class Recorder:
    """The distinct problems (by tuning key) of the calls made inside `recording()`.

    clone(problem) -> problem: a copy that stays valid after the call (default: as is)."""

    def __init__(self, clone: Optional[Callable[[Any], Any]] = None) -> None:
        self.clone = clone or (lambda problem: problem)
        self.problems: dict[tuple, Recorded] = {}

    def add(self, tunable: Tunable, problem: Any, site: str) -> None:
        key = (tunable.op, tunable.key(problem))
        seen = self.problems.get(key)
        if seen is None:
            self.problems[key] = Recorded(tunable, self.clone(problem), [site] if site else [])
        else:
            seen.calls += 1
            if site and site not in seen.sites:
                seen.sites.append(site)


_RECORDER: list = [None]


def is_recording() -> bool:
    """True inside `recording()` (tunable ops must then run, not be compiled away)."""
    return _RECORDER[0] is not None


@contextlib.contextmanager
def recording(clone: Optional[Callable[[Any], Any]] = None) -> Iterator[Recorder]:
    """Record the distinct problems of every tunable op called inside the block (which run their
    default meanwhile): how `ditaccel autotune` finds a model's attention shapes. Not re-entrant
    and process-wide (one recording at a time)."""
    if _RECORDER[0] is not None:
        raise RuntimeError("autotune.recording() is already active")
    recorder = _RECORDER[0] = Recorder(clone)
    try:
        yield recorder
    finally:
        _RECORDER[0] = None


_CHOICES: dict[str, tuple[str, Choice]] = {}
_CHOICES_LOCK = threading.Lock()


def record_choice(site: str, op: str, choice: Choice) -> None:
    """Remember the latest choice at `site` (a module path) for the explain report (bounded)."""
    if _CHOICES.get(site) == (op, choice):
        return
    with _CHOICES_LOCK:
        if len(_CHOICES) > 4096:
            _CHOICES.clear()
        _CHOICES[site] = (op, choice)


def recorded_choices() -> dict[str, tuple[str, Choice]]:
    """site -> (op, Choice) of the latest call at each site."""
    with _CHOICES_LOCK:
        return dict(_CHOICES)


def clear_recorded_choices() -> None:
    with _CHOICES_LOCK:
        _CHOICES.clear()


__all__ = ["MODES", "TUNE_COMMAND", "Choice", "Autotuner", "Recorder", "Recorded", "recording", "is_recording", "DEFAULT_RECORDING", "autotuner", "reset_autotuners", "record_choice",
           "recorded_choices", "clear_recorded_choices", "FROM_CACHE", "TUNED_NOW", "DEFAULT_MISS", "DEFAULT_OFF",
           "DEFAULT_INVALID", "DEFAULT_FAILED", "DEFAULT_STALE"]
