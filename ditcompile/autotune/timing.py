"""Median CUDA-event time of a callable: shared by the tuner and benchmarks/attention.py."""
from __future__ import annotations

from typing import Callable

import torch


def cuda_median_ms(fn: Callable[[], object], budget_ms: float, max_reps: int = 20, min_reps: int = 1) -> float:
    """One warm-up call, one timed call to size the run, then as many timed calls as fit in
    `budget_ms` (between `min_reps` and `max_reps`); the median, in milliseconds."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    first = max(start.elapsed_time(end), 1e-3)
    reps = max(min_reps, min(max_reps, int(budget_ms / first)))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
