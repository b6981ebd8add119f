"""The tuner: the fastest valid candidate wins (injected timer), failures are skipped, results are
cached per key in a bounded table, and candidates never write the caller's buffer."""
import pytest
import torch

from ditcompile.autotune import TuneCache, TuneKey, TuneSettings, bucket, next_power_of_2, pick_fastest, tuned


def fake_timer(times):
    """time_ms(fn, budget) that runs fn once and returns the candidate's listed time."""
    calls = []

    def time_ms(fn, budget_ms):
        candidate = fn()
        calls.append(candidate)
        return times[candidate]

    return time_ms, calls


def run_into(outputs):
    def run(candidate, out):
        out.fill_(float(len(candidate)))
        outputs.append(out)
        if candidate == "broken":
            raise RuntimeError("out of shared memory")
        return candidate
    return run


def test_fastest_candidate_wins_and_is_cached():
    times = {"a": 3.0, "bb": 1.0, "ccc": 2.0}
    time_ms, calls = fake_timer(times)
    cache, key = TuneCache(), TuneKey.make("k", "cpu", q_len=bucket(300))
    outputs = []
    caller_out = torch.zeros(4)
    choice = tuned(cache, lambda: key, list(times), run_into(outputs), lambda: torch.zeros(4), TuneSettings(), time_ms)
    assert choice == "bb" and cache.get(key) == "bb"
    assert len({id(o) for o in outputs}) == 1 and all(o is not caller_out for o in outputs)  # one scratch output
    assert torch.equal(caller_out, torch.zeros(4))
    again = tuned(cache, lambda: key, list(times), run_into(outputs), lambda: torch.zeros(4), TuneSettings(), time_ms)
    assert again == "bb" and len(calls) == 3  # a hit times nothing


def test_failing_candidates_are_skipped_and_all_failing_raises():
    time_ms, _ = fake_timer({"broken": 0.1, "ok": 5.0})
    assert pick_fastest(["broken", "ok"], run_into([]), lambda: torch.zeros(1), time_ms, 1.0) == "ok"
    with pytest.raises(RuntimeError, match="out of shared memory"):
        pick_fastest(["broken"], run_into([]), lambda: torch.zeros(1), time_ms, 1.0)


def test_disabled_or_single_candidate_takes_the_default_and_the_cap_limits_timing():
    time_ms, calls = fake_timer({"a": 3.0, "bb": 1.0, "ccc": 0.5})
    cache, key = TuneCache(), TuneKey.make("k", "cpu")

    def no_key():
        raise AssertionError("no key is built when there is nothing to choose")

    assert tuned(cache, no_key, ["a", "bb"], run_into([]), lambda: torch.zeros(1), TuneSettings(enabled=False),
                 time_ms) == "a"
    assert tuned(cache, no_key, ["ccc"], run_into([]), lambda: torch.zeros(1), TuneSettings(), time_ms) == "ccc"
    assert calls == [] and len(cache) == 0
    # only the first two candidates are timed: "ccc" would be faster but is past the cap
    assert tuned(cache, lambda: key, ["a", "bb", "ccc"], run_into([]), lambda: torch.zeros(1),
                 TuneSettings(max_candidates=2), time_ms) == "bb"
    with pytest.raises(ValueError, match="max_candidates"):
        TuneSettings(max_candidates=0)


def test_no_memory_for_the_scratch_keeps_the_default_with_a_warning(caplog):
    time_ms, calls = fake_timer({"a": 3.0, "bb": 1.0})
    cache, key = TuneCache(), TuneKey.make("k", "cpu")

    def no_memory():
        raise torch.OutOfMemoryError("CUDA out of memory")

    with caplog.at_level("WARNING", logger="ditcompile"):
        assert tuned(cache, lambda: key, ["a", "bb"], run_into([]), no_memory, TuneSettings(), time_ms) == "a"
    assert "no memory for a scratch output" in caplog.text and cache.get(key) == "a" and calls == []


@pytest.mark.parametrize("n, expected", [(0, 1), (1, 1), (2, 2), (5, 8), (1024, 1024), (1025, 2048)])
def test_next_power_of_2(n, expected):
    assert next_power_of_2(n) == expected == bucket(n)


def test_cache_is_bounded_least_recently_used_first():
    cache = TuneCache(max_entries=3)
    keys = [TuneKey.make("k", "cpu", q_len=bucket(n)) for n in (100, 200, 300, 600)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, i)
    assert cache.get(keys[0]) == 0  # touch: keys[1] is now the oldest
    cache.put(keys[3], 3)
    assert len(cache) == 3 and cache.get(keys[1]) is None and cache.get(keys[0]) == 0
    cache.clear()
    assert len(cache) == 0


def test_keys_bucket_lengths():
    assert TuneKey.make("k", "cpu", q_len=bucket(1000)) == TuneKey.make("k", "cpu", q_len=bucket(1024))
    assert TuneKey.make("k", "cpu", q_len=bucket(1025)) != TuneKey.make("k", "cpu", q_len=bucket(1024))
    key = TuneKey.make("k", "cpu", dtype=torch.bfloat16)
    assert key.device == "cpu" and key.fields == (("dtype", "torch.bfloat16"),)
