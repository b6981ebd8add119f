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

from .state import REGISTRY, ModelRuntime, step_scope
from .steps import StepInfo, StepTracker, timestep_value


class StepObserver:
    """Finds the calling model's runtime (by its first parameter input) and advances its step
    tracker with the call's timestep. Shared by every callable handed back to Dynamo."""

    def __init__(self, timestep_index: Optional[int], anchor_index: Optional[int]):
        self.timestep_index = timestep_index
        self.anchor_index = anchor_index
        self._fallback = ModelRuntime(StepTracker())  # a graph with no parameter inputs

    def observe(self, args: Sequence[Any]) -> tuple[ModelRuntime, StepInfo]:
        runtime = REGISTRY.for_anchor(args[self.anchor_index]) if self.anchor_index is not None else self._fallback
        timestep = timestep_value(args[self.timestep_index]) if self.timestep_index is not None else None
        return runtime, runtime.tracker.observe(timestep)


class StepTrackingCall:
    def __init__(self, compiled: Callable, timestep_index: Optional[int], anchor_index: Optional[int]):
        self.compiled = compiled
        self.observer = StepObserver(timestep_index, anchor_index)

    def __call__(self, *args: Any) -> Any:
        boxed = len(args) == 1 and isinstance(args[0], list)
        flat = args[0] if boxed else list(args)
        runtime, info = self.observer.observe(flat)
        with step_scope(info, runtime):
            return self.compiled(*flat)
