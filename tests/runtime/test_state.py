"""Typed run-time state: one slot per feature, reset together, summarised per generation and shape."""
import gc

import pytest
import torch

import ditcompile
from ditcompile.runtime.state import ModelRuntime, cache_stats, sparse_stats
from ditcompile.runtime.steps import Observation
from ditcompile.runtime.wrapper import RuntimeTable

T999 = Observation(999.0, b"cond")


def test_new_generation_resets_every_slot_and_keeps_the_finished_summaries():
    runtime = ModelRuntime()
    info = runtime.tracker.observe(T999)
    assert (info.generation, info.step, info.branch) == (0, 0, 0)
    site = runtime.sparse.site("blocks.0.attn1", info.generation, (1, 2, 8, 4))
    site.sparse_calls = 3
    runtime.step_cache.record(runtime.step_cache.branch(info, (1, 4)), True)
    runtime.new_generation()
    again = runtime.tracker.observe(T999)  # the same timestep: a restart, not a second CFG branch
    assert (again.generation, again.step, again.branch) == (1, 0, 0)
    assert runtime.sparse.site("blocks.0.attn1", again.generation, (1, 2, 8, 4)).sparse_calls == 0
    finished = list(runtime.sparse.finished)[0]["blocks.0.attn1"]
    assert (finished["sparse_calls"], finished["shapes"]["1x2x8x4"]["sparse_calls"]) == (3, 3)
    assert runtime.step_cache.branch(again, (1, 4)).computed == 0
    assert runtime.step_cache.finished[0][0]["computed"] == 1


def test_reset_releases_tensors_and_finished_summaries_are_bounded():
    runtime = ModelRuntime()
    for generation in range(runtime.sparse.KEEP_FINISHED + 5):
        info = runtime.tracker.observe(T999)
        site = runtime.sparse.site("s", info.generation)
        site.choice, site.sparse_calls = object(), generation
        branch = runtime.step_cache.branch(info)
        branch.reference_signal, branch.history = torch.ones(2), [(0, [torch.ones(2)])]
        runtime.new_generation()
        assert site.choice is None and branch.reference_signal is None and branch.history == []
        assert site.sparse_calls == generation  # counts stay for the summary
    assert len(runtime.sparse.finished) == runtime.sparse.KEEP_FINISHED
    assert runtime.sparse.finished[-1]["s"]["sparse_calls"] == runtime.sparse.KEEP_FINISHED + 3


def test_state_per_shape_is_separate_and_summed_per_site():
    runtime = ModelRuntime()
    info = runtime.tracker.observe(T999)
    runtime.sparse.site("s", info.generation, (1, 4, 288, 16)).sparse_calls = 2
    runtime.sparse.site("s", info.generation, (1, 4, 1152, 16)).dense_calls = 5
    summary = runtime.sparse.summary()["s"]
    assert (summary["sparse_calls"], summary["dense_calls"]) == (2, 5)
    assert summary["shapes"]["1x4x1152x16"]["dense_calls"] == 5 and summary["shapes"]["1x4x288x16"]["sparse_calls"] == 2
    small, large = runtime.step_cache.branch(info, (1, 288)), runtime.step_cache.branch(info, (1, 1152))
    assert small is not large
    runtime.step_cache.record(small, True)
    runtime.step_cache.record(large, True)
    runtime.step_cache.record(small, False)
    assert runtime.step_cache.summary()[0]["pattern"] == [True, True, False]  # call order across shapes


def test_stats_list_only_the_slots_a_model_used():
    model = torch.nn.Linear(4, 4)
    table = RuntimeTable()
    runtime = table.get(model.weight)
    assert table.get(model.weight) is runtime
    assert sparse_stats(model) == [] and cache_stats(model) == []
    runtime.sparse.site("s", runtime.tracker.observe(T999).generation).dense_calls = 2
    stats = sparse_stats(model)
    assert len(stats) == 1 and stats[0]["current"]["s"]["dense_calls"] == 2 and stats[0]["finished"] == []
    assert cache_stats(model) == []
    assert ditcompile.new_generation(model) == 1 and runtime.tracker.restart_requested


def test_a_runtime_table_is_bounded_per_caller_and_many_live_models_are_not_churn(caplog):
    table = RuntimeTable(limit=8, name="graph t")
    params = [torch.nn.Parameter(torch.ones(1)) for _ in range(40)]  # e.g. 40 regionally compiled blocks
    with caplog.at_level("WARNING", logger="ditcompile"):
        runtimes = [table.get(p) for p in params]
    assert len(table) == 8 and table.get(params[-1]) is runtimes[-1]  # least recently used out
    assert "replaced" not in caplog.text  # live instances are not churn
    del params[-1], runtimes
    gc.collect()
    assert len(table) == 7  # an entry goes with its model's parameters


def test_a_runtime_table_says_once_when_one_callers_weights_keep_being_replaced(caplog):
    table = RuntimeTable(name="graph t")
    with caplog.at_level("WARNING", logger="ditcompile"):
        for _ in range(RuntimeTable.CHURN + 4):
            weight = torch.nn.Parameter(torch.ones(1))  # new weights every call (offloading)
            runtime = table.get(weight)
            assert runtime.tracker.observe(T999).step == 0  # fresh state: the safe path
            del weight, runtime
            gc.collect()
    assert caplog.text.count("were replaced") == 1 and "graph t" in caplog.text
    assert len(table) == 0


def test_a_request_scope_has_its_own_runtime_and_releases_its_tensors_at_exit():
    table, param = RuntimeTable(), torch.nn.Parameter(torch.ones(1))
    outside = table.get(param)
    with ditcompile.request_scope("r1"):
        inside = table.get(param)
        assert inside is not outside and table.get(param) is inside
        branch = inside.step_cache.branch(inside.tracker.observe(T999), (1, 4))
        branch.history = [(0, [torch.ones(3)])]
        inside.step_cache.record(branch, True)
    assert branch.history == [] and list(inside.step_cache.finished) == [] and inside.step_cache.data  # summary kept
    assert table.get(param) is outside


@pytest.mark.parametrize("call", [
    lambda: ditcompile.new_generation(3), lambda: ditcompile.sparse_stats(None), lambda: ditcompile.cache_stats("m"),
    lambda: ditcompile.cache_report(object()), lambda: ditcompile.generation(lambda x: x).__enter__(),
])
def test_model_arguments_that_are_not_modules_get_a_type_error_naming_the_function(call):
    with pytest.raises(TypeError, match=r"ditcompile\.\w+.*\(model\): model must be a torch.nn.Module"):
        call()


def test_request_scope_checks_its_arguments():
    with pytest.raises(TypeError, match="name must be a string, got 3"):
        ditcompile.request_scope(3)
    with pytest.raises(TypeError, match="keep must be True or False, got 'yes'"):
        ditcompile.request_scope("r", keep="yes")
