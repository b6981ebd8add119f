"""The op-level autotuner on the CPU with fake candidates and an injected timer: validate, then
time; the persistent cache (header matching, corruption recovery, concurrent writers, bucketing);
run-time modes."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
from dataclasses import dataclass

import pytest
import torch

from ditcompile.autotune import (Autotuner, Candidate, Tunable, TuneKey, TuneStore, TuneStoreError, candidate_set_hash,
                                 length_bucket, stack_identity, tune_problem)
from ditcompile.autotune.lookup import DEFAULT_INVALID, DEFAULT_MISS, DEFAULT_OFF, DEFAULT_STALE, FROM_CACHE, TUNED_NOW


@dataclass(eq=False)
class Problem:
    x: torch.Tensor
    device: str = "cpu"


RAN: list[str] = []


def cand(name, fn, check=None, available=True):
    def run(p):
        RAN.append(name)
        return fn(p.x)
    return Candidate(name, run, check or (lambda p: None), available=available)


def make_tunable(op="test.op", extra=(), crash=True):
    crashes = (cand("crashes", lambda x: (_ for _ in ()).throw(RuntimeError("out of shared memory"))),) if crash else ()
    candidates = (
        cand("default", lambda x: x * 2),
        cand("fast_wrong", lambda x: x * 3),
        cand("fast_nan", lambda x: x * float("nan")),
        *crashes,
        cand("writes_input", lambda x: x.mul_(1.0) * 2),
        cand("invalid", lambda x: x * 2, check=lambda p: "needs CUDA"),
        cand("absent", lambda x: x * 2, available=False),
        cand("fast_ok", lambda x: x * 2 + 1e-7),
        *extra,
    )
    return Tunable(op=op, candidates=candidates, key=lambda p: TuneKey.make(op, "cpu", n=length_bucket(p.x.numel())),
                   default=lambda p: "default", reference=lambda p: p.x * 2,
                   error=lambda out, ref, p: float((out - ref).norm() / ref.norm()),
                   tolerance=lambda p: 1e-4, inputs=lambda p: (p.x,))


TIMES = {"default": 5.0, "fast_wrong": 0.1, "fast_nan": 0.1, "crashes": 0.1, "writes_input": 0.1, "invalid": 0.1,
         "absent": 0.1, "fast_ok": 2.0, "fastest": 1.0}


def fake_time_ms(fn, budget_ms, device="cpu"):
    RAN.clear()
    fn()
    return TIMES[RAN[-1]]


def test_fastest_valid_candidate_wins_and_bad_ones_are_dropped():
    problem = Problem(torch.randn(100))
    RAN.clear()
    result = tune_problem(make_tunable(), problem, fake_time_ms)
    assert result.winner == "fast_ok" and result.default == "default"
    assert set(result.times_ms) == {"default", "fast_ok"}
    assert result.speedup == pytest.approx(2.5)
    assert result.dropped["fast_wrong"].startswith("wrong")
    assert "non-finite" in result.dropped["fast_nan"]
    assert "out of shared memory" in result.dropped["crashes"]
    assert result.dropped["writes_input"] == "wrote its inputs"
    assert result.dropped["invalid"] == "not valid here: needs CUDA"
    assert result.dropped["absent"] == "not valid here: not installed"


def test_within_the_noise_margin_the_default_stays(monkeypatch):
    monkeypatch.setitem(TIMES, "fast_ok", 4.9)  # 2% faster than the default: not a gain worth a change
    result = tune_problem(make_tunable(), Problem(torch.randn(100)), fake_time_ms)
    assert result.winner == "default" and result.times_ms["fast_ok"] == 4.9
    monkeypatch.setitem(TIMES, "fast_ok", 4.7)  # 6% faster: it wins
    assert tune_problem(make_tunable(), Problem(torch.randn(100)), fake_time_ms).winner == "fast_ok"


def test_candidates_are_timed_in_interleaved_rounds_and_keep_their_best():
    order, calls = [], {}

    def timer(fn, budget_ms):
        fn()
        name = RAN[-1]
        order.append(name)
        calls[name] = calls.get(name, 0) + 1
        return TIMES[name] + (10.0 if calls[name] == 1 and name == "fast_ok" else 0.0)  # a slow first round

    result = tune_problem(make_tunable(), Problem(torch.randn(100)), timer, rounds=2)
    assert order == ["default", "fast_ok"] * 4  # two rounds, then two side-by-side confirmation rounds
    assert result.winner == "fast_ok" and result.times_ms["fast_ok"] == TIMES["fast_ok"]


def test_no_valid_candidate_raises_naming_the_dropped():
    t = make_tunable()
    only_bad = Tunable(t.op, t.candidates[1:3], t.key, t.default, t.reference, t.error, t.tolerance, t.inputs)
    with pytest.raises(RuntimeError, match="no valid candidate.*fast_wrong"):
        tune_problem(only_bad, Problem(torch.randn(10)), fake_time_ms)


def test_invalid_and_absent_candidates_never_run():
    RAN.clear()
    tune_problem(make_tunable(), Problem(torch.randn(10)), lambda fn, b: (fn(), 1.0)[1])
    assert "invalid" not in RAN and "absent" not in RAN


def test_modes_offline_online_off(tmp_path, caplog):
    t, problem = make_tunable(crash=False), Problem(torch.randn(64))
    offline = Autotuner("offline", tmp_path, time_ms=fake_time_ms)
    with caplog.at_level(logging.INFO, logger="ditcompile"):
        assert offline.choose(t, problem).source == DEFAULT_MISS
        offline.choose(t, Problem(torch.randn(640)))
    hints = [r for r in caplog.records if "ditaccel autotune --model" in r.getMessage()]
    assert len(hints) == 1  # one line per process and cache file, naming the command
    online = Autotuner("online", tmp_path, time_ms=fake_time_ms)
    choice = online.choose(t, problem)
    assert (choice.name, choice.source) == ("fast_ok", TUNED_NOW)
    fresh = Autotuner("offline", tmp_path, time_ms=fake_time_ms)  # another process: reads the file
    assert fresh.choose(t, problem) == type(choice)("fast_ok", FROM_CACHE)
    assert fresh.choose(t, Problem(torch.randn(63))).source == FROM_CACHE  # same bucket
    assert Autotuner("off", tmp_path).choose(t, problem).source == DEFAULT_OFF


def test_online_result_with_a_crashed_candidate_is_used_but_not_saved(tmp_path, caplog):
    t, problem = make_tunable(), Problem(torch.randn(64))
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        assert Autotuner("online", tmp_path, time_ms=fake_time_ms).choose(t, problem).source == TUNED_NOW
    assert any("crashed while tuning inside the model's call" in r.getMessage() for r in caplog.records)
    assert Autotuner("offline", tmp_path).choose(t, problem).source == DEFAULT_MISS  # nothing was saved
    Autotuner("offline", tmp_path, time_ms=fake_time_ms).tune(t, problem)  # the command's path saves it
    assert Autotuner("offline", tmp_path).choose(t, problem).source == FROM_CACHE


def test_a_stall_during_the_defaults_rounds_does_not_crown_an_equal_kernel():
    calls = {}

    def timer(fn, budget_ms):
        fn()
        name = RAN[-1]
        calls[name] = calls.get(name, 0) + 1
        stalled = name == "default" and calls[name] <= 2  # the machine stalls while the default is timed
        return 5.0 + (10.0 if stalled else 0.0) if name in ("default", "twin") else TIMES[name]

    twin = cand("twin", lambda x: x * 2)
    t = make_tunable(extra=(twin,))
    result = tune_problem(Tunable(t.op, (t.candidates[0], twin), t.key, t.default, t.reference, t.error,
                                  t.tolerance, t.inputs), Problem(torch.randn(10)), timer)
    assert result.winner == "default"


def test_cached_choice_that_cannot_run_the_call_falls_back_to_the_default(tmp_path):
    flag = {"ok": True}
    t = make_tunable(extra=(cand("fastest", lambda x: x * 2, check=lambda p: None if flag["ok"] else "unaligned"),),
                     crash=False)
    problem = Problem(torch.randn(64))
    tuner = Autotuner("online", tmp_path, time_ms=fake_time_ms)
    assert tuner.choose(t, problem).name == "fastest"
    flag["ok"] = False
    assert (tuner.choose(t, problem).name, tuner.choose(t, problem).source) == ("default", DEFAULT_INVALID)


def test_candidate_set_change_invalidates_entries(tmp_path):
    t, problem = make_tunable(crash=False), Problem(torch.randn(64))
    Autotuner("online", tmp_path, time_ms=fake_time_ms).choose(t, problem)
    grown = make_tunable(extra=(cand("fastest", lambda x: x * 2),), crash=False)
    assert candidate_set_hash(grown) != candidate_set_hash(t)
    assert Autotuner("offline", tmp_path).choose(grown, problem).source == DEFAULT_STALE


def _tuned_store(tmp_path):
    t = make_tunable(crash=False)
    tuner = Autotuner("online", tmp_path, time_ms=fake_time_ms)
    tuner.choose(t, Problem(torch.randn(64)))
    return t, tuner.store("cpu")


def test_header_mismatch_is_ignored_and_set_aside(tmp_path, caplog):
    t, store = _tuned_store(tmp_path)
    data = json.loads(store.path.read_text())
    data["header"]["torch"] = "0.0.1"
    store.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        choice = Autotuner("offline", tmp_path).choose(t, Problem(torch.randn(64)))
    assert choice.source == DEFAULT_MISS
    assert any("another device or software stack" in r.getMessage() for r in caplog.records)
    assert not store.path.exists() and len(list(tmp_path.glob("*.bad-*.json"))) == 1  # kept, not deleted


@pytest.mark.parametrize("content", ["", "{not json", '{"format": 1}', '{"format": 1, "header": {}, "entries": '
                                     '{"x": {"op": 1}}}', "[1, 2]", '{"format": 99, "header": {}, "entries": {}}'])
def test_corrupt_or_truncated_file_warns_once_and_is_rebuilt(tmp_path, caplog, content):
    t, store = _tuned_store(tmp_path)
    good = store.path.read_text()
    store.path.write_text(content if content else good[: len(good) // 2])
    tuner = Autotuner("online", tmp_path, time_ms=fake_time_ms)
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        assert tuner.choose(t, Problem(torch.randn(64))).source == TUNED_NOW  # the entry was lost: tuned again
        tuner.choose(t, Problem(torch.randn(640)))
    assert sum("not a usable tuning cache" in r.getMessage() for r in caplog.records) <= 1
    entries = TuneStore(tmp_path, stack_identity("cpu")).entries()
    assert len(entries) == 2 and all(e["winner"] == "fast_ok" for e in entries.values())


def _writer(directory: str, prefix: str, count: int) -> None:
    store = TuneStore(directory, stack_identity("cpu"))
    for i in range(count):
        key = TuneKey.make("test.op", "cpu", writer=prefix, i=i)
        store.merge({key.to_str(): {"op": "test.op", "winner": "a", "set": "s"}}, {"test.op": "s"})


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), name, 25)) for name in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = TuneStore(tmp_path, stack_identity("cpu")).entries()
    assert len(entries) == 50


def test_import_refuses_a_foreign_file_and_export_round_trips(tmp_path):
    t, store = _tuned_store(tmp_path / "a")
    exported = tmp_path / "shared.json"
    assert store.export_to(exported) == 1
    other = TuneStore(tmp_path / "b", stack_identity("cpu"))
    assert other.import_from(exported) == 1 and other.entries() == store.entries()
    foreign = json.loads(exported.read_text())
    foreign["header"]["device"] = "NVIDIA H100 80GB HBM3"
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    with pytest.raises(TuneStoreError, match="another device"):
        other.import_from(tmp_path / "foreign.json")
    with pytest.raises(TuneStoreError, match="not a ditaccel tuning cache"):
        (tmp_path / "junk.json").write_text("junk")
        other.import_from(tmp_path / "junk.json")


def test_bucketing_bounds_the_number_of_entries():
    lengths = range(1000, 128_001, 7)
    buckets = {length_bucket(n) for n in lengths}
    assert len(buckets) <= 4 * 7 + 1  # four per doubling over 2^7
    for n in lengths:
        assert n <= length_bucket(n) < 1.25 * n + 1  # a bucket is never more than 25% above its lengths
