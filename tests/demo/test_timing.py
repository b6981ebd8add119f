"""Interleaved timing: each call runs once per round, in a rotated order, and is timed alone."""
import random
import time

import pytest

from ditcompile.demo.timing import interleaved_times, median

RNG = random.Random()


def test_rounds_are_interleaved_and_rotated():
    names = [f"v{i}" for i in range(RNG.randint(2, 5))]
    rounds = RNG.randint(1, 4)
    order, synced = [], []
    calls = {n: (lambda n=n: order.append(n)) for n in names}
    times = interleaved_times(calls, rounds, sync=lambda: synced.append(1))
    expected = []
    for r in range(rounds):
        shift = r % len(names)
        expected += names[shift:] + names[:shift]
    assert order == expected
    assert len(synced) == 2 * rounds * len(names)
    assert set(times) == set(names) and all(len(t) == rounds for t in times.values())


def test_each_time_is_its_own_call():
    sleeps = {"short": 0.005, "long": 0.05}
    times = interleaved_times({k: (lambda s=s: time.sleep(s)) for k, s in sleeps.items()}, 2)
    for name, seconds in sleeps.items():
        assert all(seconds <= t < seconds + 0.04 for t in times[name]), times


def test_progress_callback_and_bad_rounds():
    seen = []
    interleaved_times({"a": lambda: None, "b": lambda: None}, 3, after_each=seen.append)
    assert sorted(seen) == ["a"] * 3 + ["b"] * 3
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_times({"a": lambda: None}, 0)


def test_median():
    values = sorted(RNG.random() for _ in range(RNG.randint(1, 9)))
    mid = len(values) // 2
    expected = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    assert median(RNG.sample(values, len(values))) == pytest.approx(expected)
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 4.0]) == 2.5 and median([]) is None
