"""The callable handed back to Dynamo when a plan depends on the denoising step.

    compiled = compile_fx(gm)                    # or gm.forward with compiler="eager"
    runner = StepTrackingCall(compiled, timestep_index=3, anchor_index=5)
    runner(*args)  ->  observe the timestep, set the step context, run `compiled`

The wrapper accepts positional arguments or one boxed list from its caller, and calls the
wrapped function with positional arguments (what `compile_fx`'s result takes, although it
marks itself `_boxed_call`; torch 2.13).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from .state import REGISTRY, ModelRuntime, StepTracker, step_scope, timestep_value


class StepTrackingCall:
    def __init__(self, compiled: Callable, timestep_index: Optional[int], anchor_index: Optional[int]):
        self.compiled = compiled
        self.timestep_index = timestep_index
        self.anchor_index = anchor_index
        self._fallback = ModelRuntime(StepTracker())  # a graph with no parameter inputs

    def runtime_for(self, args: Sequence[Any]) -> ModelRuntime:
        if self.anchor_index is None:
            return self._fallback
        return REGISTRY.for_anchor(args[self.anchor_index])

    def __call__(self, *args: Any) -> Any:
        boxed = len(args) == 1 and isinstance(args[0], list)
        flat = args[0] if boxed else list(args)
        runtime = self.runtime_for(flat)
        timestep = timestep_value(flat[self.timestep_index]) if self.timestep_index is not None else None
        info = runtime.tracker.observe(timestep)
        runtime.last_step = info
        with step_scope(info, runtime):
            return self.compiled(*flat)
