"""Choose the fastest candidate by measurement.

Ops (`tune_problem`): every candidate of a `Tunable` is first run on the real problem and
compared with the op's reference (wrong, NaN-producing, crashing or input-writing candidates are
dropped and logged), then the valid ones are timed (warm-up, median) and the fastest wins.

Kernel configs (`tuned`, the in-memory table of the Triton launcher's direct API), once per key:

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
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .cache import TuneCache
from .candidates import Candidate, Tunable
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


# ---------------------------------------------------------------- validate, then time (ops)


@dataclass(frozen=True)
class TuneResult:
    """The outcome of tuning one problem of a tunable op.

    winner: the fastest valid candidate; default: the op's default for the problem;
    times_ms: median milliseconds of every valid candidate; dropped: name -> why it was not
    timed (invalid here, not installed, crashed, wrong result, wrote its inputs, too slow).
    """

    op: str
    key: TuneKey
    winner: str
    default: str
    times_ms: dict
    dropped: dict

    @property
    def speedup(self) -> Optional[float]:
        """Default time / winner time (None when the default could not be timed)."""
        base = self.times_ms.get(self.default)
        return base / self.times_ms[self.winner] if base else None


def _versions(tensors: Sequence[torch.Tensor]) -> tuple:
    """What changes when a tensor is written: its version counter, or for inference tensors
    (which have none) a checksum of its values."""
    return tuple(float(t.detach().float().nan_to_num().sum()) if t.is_inference() else t._version for t in tensors)


def validate_candidate(tunable: Tunable, candidate: Candidate, problem: Any, reference: torch.Tensor,
                       tolerance: float) -> Optional[str]:
    """None when `candidate` runs `problem` within `tolerance` of `reference` without writing its
    inputs; else the reason (invalid, crashed, non-finite, wrong, wrote inputs)."""
    reason = candidate.reason_invalid(problem)
    if reason is not None:
        return reason
    inputs = tunable.inputs(problem)
    before = _versions(inputs)
    try:
        out = candidate.run(problem)
    except Exception as exc:  # noqa: BLE001 -- any failure drops the candidate, never the tuning
        return f"crashed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if _versions(inputs) != before:
        return "wrote its inputs"
    err = tunable.error(out, reference, problem)
    if not math.isfinite(err):
        return "non-finite output (NaN/inf)"
    if err > tolerance:
        return f"wrong: relative error {err:.2e} > tolerance {tolerance:.1e}"
    return None


def tune_problem(tunable: Tunable, problem: Any, time_ms: Callable[[Callable[[], object], float], float],
                 budget_ms: float = 50.0, rounds: int = 2, margin: float = 0.03) -> TuneResult:
    """Validate every candidate of `tunable` on `problem` against the op's reference, then time the
    valid ones in `rounds` interleaved rounds (`time_ms(fn, budget_ms / rounds)`: median ms; a
    candidate's time is its best round) and return the fastest. A winner other than the default
    is confirmed by timing it and the default again, alternately, for `rounds` more rounds; it
    replaces the default only if it is still faster by more than `margin` (a fraction: 0.03 = 3%).

    A candidate that is invalid for the problem, crashes, gives NaN/inf or a result outside the
    op's tolerance is dropped (logged at INFO) and never timed or chosen; one that fails while
    being timed is dropped too.

    Raises RuntimeError naming every dropped candidate when none is valid.
    """
    key = tunable.key(problem)
    default = tunable.default(problem)
    reference = tunable.reference(problem)
    tolerance = tunable.tolerance(problem)
    valid, dropped = [], {}
    for candidate in tunable.candidates:
        reason = candidate.reason_invalid(problem)
        if reason is not None:
            dropped[candidate.name] = f"not valid here: {reason}"
            continue
        reason = validate_candidate(tunable, candidate, problem, reference, tolerance)
        if reason is None:
            valid.append(candidate)
        else:
            dropped[candidate.name] = reason
            log.info("ditaccel autotune: %s: candidate %s dropped: %s", tunable.op, candidate.name, reason)
    del reference
    times: dict = {}
    for _ in range(rounds):  # interleaved rounds: a slow moment of the machine hits every candidate
        for candidate in valid:
            if candidate.name in dropped:
                continue
            try:
                ms = float(time_ms(lambda c=candidate: c.run(problem), budget_ms / rounds))
            except Exception as exc:  # noqa: BLE001
                dropped[candidate.name] = f"crashed while timed: {type(exc).__name__}: {exc}"[:200]
                times.pop(candidate.name, None)
                continue
            times[candidate.name] = min(ms, times.get(candidate.name, ms))
    if not times:
        raise RuntimeError(f"autotune {tunable.op} {key.to_str()}: no valid candidate; dropped: {dropped}")
    winner = min(times, key=times.get)
    if winner != default and default in times:
        # Confirm a change side by side: the default and the winner again, alternately (a stall of
        # the machine during the default's rounds must not crown an equal or slower kernel).
        finalists = [tunable.candidate(default), tunable.candidate(winner)]
        for _ in range(rounds):
            for candidate in finalists:
                ms = float(time_ms(lambda c=candidate: c.run(problem), budget_ms / rounds))
                times[candidate.name] = min(ms, times[candidate.name])
        winner = min((default, winner), key=times.get)
        if times[winner] > times[default] * (1.0 - margin):
            winner = default  # within the noise margin the default stays: no change without a gain
    return TuneResult(tunable.op, key, winner, default, times, dropped)
