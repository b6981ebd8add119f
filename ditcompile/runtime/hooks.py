"""`ditcompile.track_steps(model)`: the model's own calls give the denoising step to every
compiled region inside them.

With regional compilation (diffusers' `model.compile_repeated_blocks(backend="ditaccel", ...)`)
the compiled graphs are the transformer blocks: they receive the timestep embedding, never the
timestep, so on their own they cannot tell steps apart (their step-dependent plans then take
the safe path and say so). `track_steps` hooks the model's forward (eagerly, outside any compiled
region): before each call it observes the call's timestep, latents and conditioning arguments
(by name: `timestep`, `hidden_states`, ...) and sets the parent step context; every compiled
region called inside takes that step. Steps are tracked per caller (thread or request scope);
`ditcompile.new_generation(model)` restarts them.
"""
from __future__ import annotations

import inspect
import logging
import threading
import weakref
from typing import Any

import torch

from .state import current_caller, enter_parent, exit_parent
from .steps import MAIN_INPUT_NAMES, TIMESTEP_NAMES, StepTracker, observe_call

log = logging.getLogger("ditcompile")


class StepHooks:
    """The forward hooks `track_steps` installs on one module (see the module docstring)."""

    def __init__(self, module: torch.nn.Module) -> None:
        forward = getattr(getattr(module, "_orig_mod", module), "forward")
        self.signature = inspect.signature(forward)
        self._trackers: "weakref.WeakKeyDictionary[Any, StepTracker]" = weakref.WeakKeyDictionary()
        self._tokens = threading.local()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.handles = (module.register_forward_pre_hook(torch._dynamo.disable(self.pre), with_kwargs=True),
                        module.register_forward_hook(torch._dynamo.disable(self.post), with_kwargs=True,
                                                     always_call=True))

    def tracker(self) -> StepTracker:
        caller = current_caller()
        with self._lock:
            tracker = self._trackers.get(caller)
            if tracker is None:
                tracker = self._trackers[caller] = StepTracker()
            return tracker

    def pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            named = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            named = dict(kwargs)
        timestep = next((named[n] for n in TIMESTEP_NAMES if n in named), None)
        main = next((named[n] for n in MAIN_INPUT_NAMES if n in named), None)
        conditions = [v for k, v in named.items() if k not in TIMESTEP_NAMES and k not in MAIN_INPUT_NAMES
                      and isinstance(v, torch.Tensor)]
        info = self.tracker().observe(observe_call(timestep, main, conditions))
        if info.step is None and info.unknown_reason not in self._warned:
            self._warned.add(info.unknown_reason)
            log.warning("ditaccel track_steps(%s): the denoising step of these calls is unknown (%s); "
                        "step-dependent plans take their safe path", type(module).__name__, info.unknown_reason)
        stack = getattr(self._tokens, "stack", None)
        if stack is None:
            stack = self._tokens.stack = []
        stack.append(enter_parent(info))

    def post(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        stack = getattr(self._tokens, "stack", None)
        if stack:
            exit_parent(stack.pop())

    def new_generation(self) -> None:
        with self._lock:
            for tracker in self._trackers.values():
                tracker.reset()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def track_steps(model: torch.nn.Module) -> torch.nn.Module:
    """Follow `model`'s calls so that its compiled regions share the step of each call; returns
    `model`. Idempotent. Needed with regional compilation (`compile_repeated_blocks`); harmless
    on a model compiled as a whole. Raises TypeError when `model` is not an `nn.Module`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"track_steps needs a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, "_ditaccel_step_hooks", None) is None:
        model._ditaccel_step_hooks = StepHooks(model)
    return model


__all__ = ["StepHooks", "track_steps"]
