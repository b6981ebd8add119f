"""Side-by-side timing: every variant runs once per round, rounds interleaved, medians reported.

Interleaving (round r runs the variants in an order rotated by r) makes slow phases of a busy
machine hit every variant alike, where timing one variant after the other would charge them to
whichever ran then.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Optional


def interleaved_times(calls: Mapping[str, Callable[[], object]], rounds: int,
                      sync: Callable[[], None] = lambda: None,
                      after_each: Optional[Callable[[str], None]] = None) -> dict[str, list[float]]:
    """Wall-clock seconds of each call, ``rounds`` times, in rotated round-robin order.

    Args:
        calls: name -> a callable doing one timed unit of work (one generation).
        rounds: how many times each call runs (>= 1).
        sync: waits for queued device work; called before starting and before stopping each clock.
        after_each: called with the name after each timed call (progress bars).

    Returns:
        name -> the ``rounds`` times in seconds, in the order measured.

    Raises:
        ValueError: ``rounds`` < 1.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            times[name].append(time.perf_counter() - start)
            if after_each is not None:
                after_each(name)
    return times


def median(values: Sequence[float]) -> Optional[float]:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


__all__ = ["interleaved_times", "median"]
