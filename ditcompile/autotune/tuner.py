"""Choose the fastest candidate by measurement, once per key.

    settings = TuneSettings()                          # explicit: no environment variables
    choice = tuned(cache, make_key, candidates, run, make_scratch, settings)

`run(candidate, out)` computes the op with one candidate into `out` (which it overwrites
entirely); while tuning, candidates write a scratch output (`make_scratch()`, allocated once per
tuning), never the caller's buffer. A candidate that fails (e.g. a Triton config that runs out
of shared memory) is skipped; the first candidate is the documented default, used when tuning
is off, when only one candidate is left, or when the scratch output cannot be allocated.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .cache import TuneCache
from .key import TuneKey
from .timing import cuda_median_ms

log = logging.getLogger("ditcompile")


@dataclass(frozen=True)
class TuneSettings:
    """How a kernel launcher tunes.

    enabled: time candidates on a cache miss (False: the first candidate, the default, always).
    max_candidates: how many of the pruned candidates are timed (the first is the default).
    budget_ms: timing budget per candidate (median of the repetitions that fit, CUDA events).
    """

    enabled: bool = True
    max_candidates: int = 12
    budget_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise ValueError(f"TuneSettings.max_candidates must be >= 1, got {self.max_candidates}")
        if not self.budget_ms > 0:
            raise ValueError(f"TuneSettings.budget_ms must be > 0, got {self.budget_ms}")


def pick_fastest(candidates: Sequence[Any], run: Callable[[Any, Any], None], make_scratch: Callable[[], Any],
                 time_ms: Callable[[Callable[[], object], float], float], budget_ms: float) -> Any:
    """The candidate with the lowest `time_ms` (milliseconds); failing candidates are skipped
    (logged at DEBUG). All candidates write one scratch output, allocated here.

    Raises RuntimeError naming the last error when no candidate runs at all; whatever
    `make_scratch` raises (e.g. torch.OutOfMemoryError) when no scratch can be allocated.
    """
    best, best_ms, error = None, float("inf"), None
    scratch = make_scratch()
    for candidate in candidates:
        try:
            ms = time_ms(lambda c=candidate: run(c, scratch), budget_ms)
        except Exception as exc:  # noqa: BLE001 -- e.g. triton OutOfResources for this config
            log.debug("ditaccel autotune: candidate %s failed: %s", candidate, exc)
            error = exc
            continue
        if ms < best_ms:
            best, best_ms = candidate, ms
    if best is None:
        raise RuntimeError(f"no candidate could run; last error: {error}") from error
    return best


def tuned(cache: TuneCache, make_key: Callable[[], TuneKey], candidates: Sequence[Any],
          run: Callable[[Any, Any], None], make_scratch: Callable[[], Any], settings: TuneSettings,
          time_ms: Optional[Callable[[Callable[[], object], float], float]] = None) -> Any:
    """The cached choice for the key `make_key()` (built only when there is a choice to make),
    tuning on a miss; the first candidate when tuning is off or there is only one.

    `run(candidate, out)` writes the op's full result into `out` (a tensor from `make_scratch()`);
    `time_ms(fn, budget_ms)` times `fn` (default: CUDA events, median). When the scratch output
    cannot be allocated the first candidate is kept for this key, with one warning.
    """
    if not candidates:
        raise ValueError("tuned: no candidates")
    if len(candidates) == 1 or not settings.enabled:
        return candidates[0]
    key = make_key()
    choice = cache.get(key)
    if choice is None:
        try:
            choice = pick_fastest(list(candidates)[: settings.max_candidates], run, make_scratch,
                                  time_ms or cuda_median_ms, settings.budget_ms)
        except torch.OutOfMemoryError as err:
            log.warning("ditaccel autotune: no memory for a scratch output to tune %s; using the default "
                        "config for this shape (%s)", key, err)
            choice = candidates[0]
        cache.put(key, choice)
    return choice
