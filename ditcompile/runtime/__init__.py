"""Run-time state across calls: step tracking, state ownership, one typed slot per feature.

    steps.py         StepInfo, Observation, StepTracker (generation / step / CFG branch rules),
                     observe_call, GenerationState (the per-generation base)
    sparse_state.py  SiteState, SparseState        (sparse attention, per site and shape)
    cache_state.py   StepCacheState                (step cache, per branch and shape)
    state.py         ModelRuntime (typed slots), the weak index by model, callers (threads,
                     request_scope), the step context, new_generation / generation, the stats
    wrapper.py       CallRoles, RuntimeTable (state per compiled callable), CallObserver,
                     StepTrackingCall (the callable around a graph with step-dependent plans)
    step_cache.py    StepCacheRunner: head / decide / body or reuse / tail
    hooks.py         track_steps(model): the model's own calls give the step to its compiled regions
"""
from .state import (
    INDEX, ModelRuntime, cache_report, cache_stats, current_runtime, current_step, generation, new_generation,
    request_scope, sparse_stats,
)
from .steps import StepInfo, StepTracker

__all__ = ["INDEX", "ModelRuntime", "StepInfo", "StepTracker", "cache_report", "cache_stats", "current_runtime",
           "current_step", "generation", "new_generation", "request_scope", "sparse_stats"]
