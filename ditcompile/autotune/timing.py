"""Median time of a callable (CUDA events on a GPU, wall time on the CPU): shared by the tuner
and benchmarks/attention.py."""
from __future__ import annotations

import time
from typing import Callable

import torch


def _median_of(timed_call: Callable[[], float], budget_ms: float, max_reps: int, min_reps: int) -> float:
    """`timed_call()` runs the function once and returns its milliseconds. One warm-up call, one
    timed call to size the run, then as many timed calls as fit in `budget_ms` (between
    `min_reps` and `max_reps`); the median."""
    timed_call()
    first = max(timed_call(), 1e-3)
    reps = max(min_reps, min(max_reps, int(budget_ms / first)))
    times = sorted(timed_call() for _ in range(reps))
    return times[len(times) // 2]


def cuda_median_ms(fn: Callable[[], object], budget_ms: float, max_reps: int = 20, min_reps: int = 1) -> float:
    """Median CUDA-event milliseconds of `fn` on the current stream (see `_median_of`)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed_call() -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    torch.cuda.synchronize()
    return _median_of(timed_call, budget_ms, max_reps, min_reps)


def cpu_median_ms(fn: Callable[[], object], budget_ms: float, max_reps: int = 20, min_reps: int = 1) -> float:
    """Median wall-clock milliseconds of `fn` (perf_counter; see `_median_of`)."""

    def timed_call() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return _median_of(timed_call, budget_ms, max_reps, min_reps)


def median_ms(fn: Callable[[], object], budget_ms: float, device: torch.device | str = "cpu") -> float:
    """Median milliseconds of `fn` on `device` (at least 3 timed calls): CUDA events on a GPU,
    wall time elsewhere."""
    if torch.device(device).type == "cuda":
        return cuda_median_ms(fn, budget_ms, min_reps=3)
    return cpu_median_ms(fn, budget_ms, min_reps=3)
