"""Choose the fastest candidate by measurement, once per key.

    settings = TuneSettings()                          # explicit: no environment variables
    choice = tuned(cache, key, candidates, run, settings)

`run(candidate, out)` computes the op with one candidate into `out`; while tuning, each
candidate writes a scratch output of its own (`make_scratch()`), never the caller's buffer.
A candidate that fails (e.g. a Triton config that runs out of shared memory) is skipped; the
first candidate is the documented default, used when tuning is off or only one candidate is left.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

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
    """The candidate with the lowest `time_ms`; failing candidates are skipped (logged at DEBUG).

    Raises RuntimeError naming the last error when no candidate runs at all.
    """
    best, best_ms, error = None, float("inf"), None
    for candidate in candidates:
        scratch = make_scratch()
        try:
            ms = time_ms(lambda c=candidate, s=scratch: run(c, s), budget_ms)
        except Exception as exc:  # noqa: BLE001 -- e.g. triton OutOfResources for this config
            log.debug("ditaccel autotune: candidate %s failed: %s", candidate, exc)
            error = exc
            continue
        if ms < best_ms:
            best, best_ms = candidate, ms
    if best is None:
        raise RuntimeError(f"no candidate could run; last error: {error}") from error
    return best


def tuned(cache: TuneCache, key: TuneKey, candidates: Sequence[Any], run: Callable[[Any, Any], None],
          make_scratch: Callable[[], Any], settings: TuneSettings,
          time_ms: Optional[Callable[[Callable[[], object], float], float]] = None) -> Any:
    """The cached choice for `key`, tuning on a miss (or the first candidate when tuning is off)."""
    if not candidates:
        raise ValueError("tuned: no candidates")
    if len(candidates) == 1 or not settings.enabled:
        return candidates[0]
    choice = cache.get(key)
    if choice is None:
        choice = pick_fastest(list(candidates)[: settings.max_candidates], run, make_scratch,
                              time_ms or cuda_median_ms, settings.budget_ms)
        cache.put(key, choice)
    return choice
