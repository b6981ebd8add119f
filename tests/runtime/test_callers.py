"""Callers (threads, request scopes) own their state; it goes with them. Warnings are said once per
kind. A tracked model can be copied and pickled without doubling its tracking."""
import copy
import gc
import logging
import pickle
import queue
import threading
import weakref

import torch
import torch.nn as nn

import ditcompile
from ditcompile.runtime.state import parent_step
from ditcompile.runtime.steps import Observation
from ditcompile.runtime.wrapper import CallObserver, CallRoles, RuntimeTable


def in_thread(fn):
    result, errors = [], []

    def run():
        try:
            result.append(fn())
        except Exception as err:  # noqa: BLE001 -- re-raised below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    if errors:
        raise errors[0]
    return result[0]


class Worker:
    """A live thread that runs what it is given, one function at a time."""

    def __init__(self):
        self.tasks, self.results = queue.Queue(), queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while (fn := self.tasks.get()) is not None:
            try:
                self.results.put((True, fn()))
            except Exception as err:  # noqa: BLE001 -- re-raised in run()
                self.results.put((False, err))

    def run(self, fn):
        self.tasks.put(fn)
        ok, value = self.results.get(timeout=60)
        if not ok:
            raise value
        return value

    def stop(self):
        self.tasks.put(None)
        self.thread.join(timeout=60)


def observe(runtime, t):
    return runtime.tracker.observe(Observation(t, b"c"))


def test_new_generation_restarts_only_the_calling_thread_unless_all_callers():
    model, table, worker = nn.Linear(4, 4), RuntimeTable(), Worker()
    try:
        mine, other = table.get(model.weight), worker.run(lambda: table.get(model.weight))
        assert other is not mine
        for t in (999.0, 800.0):
            observe(mine, t)
            worker.run(lambda: observe(other, t))
        assert worker.run(lambda: ditcompile.new_generation(model)) == 1  # the worker restarts its own
        assert observe(mine, 600.0).step == 2  # this thread's generation goes on
        assert worker.run(lambda: observe(other, 600.0)).step == 0
        assert ditcompile.new_generation(model) == 1
        assert worker.run(lambda: observe(other, 500.0)).step == 1  # the worker's goes on
        assert observe(mine, 999.0).step == 0
        assert ditcompile.new_generation(model, all_callers=True) == 2
        assert worker.run(lambda: observe(other, 400.0)).step == 0
        with ditcompile.generation(model):  # one generation for this caller
            assert [observe(mine, t).step for t in (400.0, 300.0)] == [0, 1]
            assert worker.run(lambda: observe(other, 300.0)).step == 1
        assert observe(mine, 200.0).step == 0  # restarted at exit
    finally:
        worker.stop()


def test_a_callers_state_goes_with_the_thread_or_request_scope():
    table, weight = RuntimeTable(), nn.Parameter(torch.randn(3))

    def use():
        runtime = table.get(weight)
        runtime.step_cache.branch(runtime.tracker.observe(Observation(9.0, b"c")))
        return weakref.ref(runtime)

    thread_runtime = in_thread(use)
    with ditcompile.request_scope("r") as caller:
        scope_runtime = use()
    caller_ref = weakref.ref(caller)
    del caller
    gc.collect()
    assert thread_runtime() is None and scope_runtime() is None and caller_ref() is None
    assert len(table) == 0
    table.get(weight)
    assert len(table) == 1


def test_dead_models_leave_no_finalizers_or_entries_behind():
    table = RuntimeTable()
    for _ in range(100):
        table.get(nn.Parameter(torch.randn(2)))
    gc.collect()
    assert len(table) == 0 and not table._watched


def test_each_kind_of_warning_is_said_once_whatever_values_it_carries(caplog):
    observer = CallObserver(CallRoles(timestep=0, main=1, conditions=(2,), anchor=3), "graph w")
    weight, x = nn.Parameter(torch.randn(2)), torch.randn(1, 4)
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        for i in range(5):  # per-token timesteps with different values: unknown, values differ per call
            _, info, _ = observer.observe([torch.tensor([[10.0 + i, 20.0 + i]]), x, torch.ones(2), weight])
            assert info.step is None
        for i in range(30):  # a new conditioning every call
            observer.observe([torch.tensor([500.0]), x, torch.randn(2), weight])
    assert caplog.text.count("holds different values") == 1
    assert caplog.text.count("different conditionings") == 1


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen, self.proj = [], nn.Linear(4, 4)

    def forward(self, hidden_states):
        info = parent_step()
        self.seen.append(None if info is None else (info.generation, info.step, info.branch))
        return self.proj(hidden_states)


class Tracked(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Recorder()

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        return self.block(hidden_states + encoder_hidden_states.mean())


def cfg_run(model, steps=(999.0, 700.0, 400.0)):
    x, cond, uncond = torch.randn(1, 4), torch.randn(1, 3, 4), torch.zeros(1, 3, 4)
    for t in steps:
        for c in (cond, uncond):
            model(x, torch.tensor([t]), c)


def test_a_copied_or_pickled_tracked_model_is_tracked_once_when_asked():
    model = ditcompile.track_steps(Tracked())
    cfg_run(model)
    assert model.block.seen == [(0, s, b) for s in range(3) for b in (0, 1)]
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.block.seen = []
        cfg_run(clone)
        assert clone.block.seen == [None] * 6  # carried hooks, but the clone is not tracked yet
        assert ditcompile.track_steps(clone) is clone and ditcompile.track_steps(clone) is clone
        assert len(clone._forward_pre_hooks) == 1 and len(clone._forward_hooks) == 1
        clone.block.seen = []
        cfg_run(clone)
        assert clone.block.seen == [(0, s, b) for s in range(3) for b in (0, 1)]
