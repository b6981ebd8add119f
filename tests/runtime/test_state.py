"""Typed run-time state: one slot per feature, reset together, summarised per generation."""
import torch

import ditcompile
from ditcompile.runtime.state import REGISTRY, ModelRuntime, cache_stats, sparse_stats
from ditcompile.runtime.steps import StepInfo


def test_new_generation_resets_every_slot_and_keeps_the_finished_summaries():
    runtime = ModelRuntime()
    info = runtime.tracker.observe(999.0)
    assert (info.generation, info.step, info.branch) == (0, 0, 0)
    site = runtime.sparse.site("blocks.0.attn1", info.generation)
    site.sparse_calls = 3
    branch = runtime.step_cache.branch(info)
    branch.computed = 1
    runtime.new_generation()
    again = runtime.tracker.observe(999.0)  # the same timestep: a restart, not a second CFG branch
    assert (again.generation, again.step, again.branch) == (1, 0, 0)
    assert runtime.sparse.site("blocks.0.attn1", again.generation).sparse_calls == 0
    assert list(runtime.sparse.finished) == [{"blocks.0.attn1": {"sparse_calls": 3, "dense_calls": 0, "guard_errors": [],
                                                           "dense_from_step": None, "density": None}}]
    assert runtime.step_cache.branch(again).computed == 0
    assert runtime.step_cache.finished[0][0]["computed"] == 1


def test_reset_releases_tensors_and_finished_summaries_are_bounded():
    runtime = ModelRuntime()
    for generation in range(runtime.sparse.KEEP_FINISHED + 5):
        info = runtime.tracker.observe(999.0)
        site = runtime.sparse.site("s", info.generation)
        site.choice, site.sparse_calls = object(), generation
        branch = runtime.step_cache.branch(info)
        branch.reference_signal, branch.history = torch.ones(2), [(0, [torch.ones(2)])]
        runtime.new_generation()
        assert site.choice is None and branch.reference_signal is None and branch.history == []
        assert site.sparse_calls == generation  # counts stay for the summary
    assert len(runtime.sparse.finished) == runtime.sparse.KEEP_FINISHED
    assert runtime.sparse.finished[-1]["s"]["sparse_calls"] == runtime.sparse.KEEP_FINISHED + 3


def test_stats_list_only_the_slots_a_model_used():
    model = torch.nn.Linear(4, 4)
    runtime = REGISTRY.for_anchor(model.weight)
    assert sparse_stats(model) == [] and cache_stats(model) == []
    runtime.sparse.site("s", StepInfo(0, 0, 0, 1.0).generation).dense_calls = 2
    assert sparse_stats(model) == [{"current": {"s": {"sparse_calls": 0, "dense_calls": 2, "guard_errors": [],
                                                       "dense_from_step": None, "density": None}}, "finished": []}]
    assert cache_stats(model) == []
    assert ditcompile.new_generation(model) == 1 and runtime.tracker.restart_requested
