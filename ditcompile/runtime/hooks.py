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

The hooks are module-level functions that look the model up in a weak registry, so a tracked
model can still be deep-copied and pickled; the copy is tracked once `track_steps` is called on
it (its carried hooks are reused, never doubled).
"""
from __future__ import annotations

import inspect
import logging
import threading
import weakref
from typing import Any, Optional

import torch

from ..geometry import MAIN_INPUT_NAMES, TIMESTEP_NAMES
from .state import Caller, current_caller, enter_parent, exit_parent, on_new_generation
from .steps import StepTracker, observe_call

log = logging.getLogger("ditcompile")


class StepHooks:
    """The step tracking `track_steps` adds to one module (see the module docstring)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.name = type(getattr(module, "_orig_mod", module)).__name__
        self.signature = inspect.signature(getattr(module, "_orig_mod", module).forward)
        self._trackers: "weakref.WeakKeyDictionary[Caller, StepTracker]" = weakref.WeakKeyDictionary()
        self._tokens: "weakref.WeakKeyDictionary[Caller, list]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def enter(self, args: tuple, kwargs: dict) -> None:
        try:
            named = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            named = dict(kwargs)
        timestep = next((named[n] for n in TIMESTEP_NAMES if n in named), None)
        main = next((named[n] for n in MAIN_INPUT_NAMES if n in named), None)
        conditions = [v for k, v in named.items() if k not in TIMESTEP_NAMES and k not in MAIN_INPUT_NAMES
                      and isinstance(v, torch.Tensor)]
        caller = current_caller()
        with self._lock:
            tracker = self._trackers.setdefault(caller, StepTracker())
            tokens = self._tokens.setdefault(caller, [])
        info = tracker.observe(observe_call(timestep, main, conditions))
        for text in (info.unknown_reason, info.note):
            kind = text.split(" (")[0] if text else None
            if kind and kind not in self._warned:
                self._warned.add(kind)
                log.warning("ditaccel track_steps(%s): %s%s", self.name, text,
                            "; step-dependent plans take their safe path" if text == info.unknown_reason else "")
        tokens.append(enter_parent(info))

    def leave(self) -> None:
        tokens = self._tokens.get(current_caller())
        if tokens:
            exit_parent(tokens.pop())

    def new_generation(self, caller: Optional[Caller]) -> None:
        with self._lock:
            trackers = list(self._trackers.items())
        for owner, tracker in trackers:
            if caller is None or owner is caller:
                tracker.reset()


_HOOKS: "weakref.WeakKeyDictionary[torch.nn.Module, StepHooks]" = weakref.WeakKeyDictionary()


def _pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    hooks = _HOOKS.get(module)
    if hooks is not None:
        hooks.enter(args, kwargs)


def _post_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    hooks = _HOOKS.get(module)
    if hooks is not None:
        hooks.leave()


# Run eagerly even when the module itself is compiled in place (`module.compile()`); the module-level
# names are the wrapped functions, so the hooks pickle by name.
_pre_hook = torch._dynamo.disable(_pre_hook)
_post_hook = torch._dynamo.disable(_post_hook)


def track_steps(model: torch.nn.Module) -> torch.nn.Module:
    """Follow `model`'s calls so that its compiled regions share the step of each call; returns
    `model`. Idempotent. Needed with regional compilation (`compile_repeated_blocks`); harmless
    on a model compiled as a whole. Raises TypeError when `model` is not an `nn.Module`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"track_steps needs a torch.nn.Module, got {type(model).__name__}")
    if model not in _HOOKS:
        hooks = _HOOKS[model] = StepHooks(model)
        # a deep copy or an unpickled tracked model carries the hooks already: register them once
        if _pre_hook not in model._forward_pre_hooks.values():
            model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        if _post_hook not in model._forward_hooks.values():
            model.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)
        on_new_generation(model, hooks.new_generation)
    return model


__all__ = ["StepHooks", "track_steps"]
