"""Run-time state across calls: denoising-step tracking and one typed state slot per feature.

    steps.py         StepInfo, StepTracker, GenerationState (the per-generation base)
    sparse_state.py  SiteState, SparseState        (sparse attention; `sparse_stats`)
    cache_state.py   StepCacheState                (step cache; `cache_stats`, `cache_report`)
    state.py         ModelRuntime (typed slots), the registry keyed by model, the current call's
                     step context, new_generation / generation, the stats functions
    wrapper.py       StepTrackingCall: the callable around a compiled graph with step-dependent plans
    step_cache.py    StepCacheRunner: head / decide / body or reuse / tail
"""
from .state import (
    REGISTRY, ModelRuntime, cache_report, cache_stats, current_runtime, current_step, generation, new_generation,
    sparse_stats,
)
from .steps import StepInfo, StepTracker

__all__ = ["REGISTRY", "ModelRuntime", "StepInfo", "StepTracker", "cache_report", "cache_stats", "current_runtime",
           "current_step", "generation", "new_generation", "sparse_stats"]
