"""The callables handed back to Dynamo when a plan depends on the denoising step.

    compiled = compile_fx(gm)                     # or gm.forward with compiler="eager"
    call = StepTrackingCall(compiled, CallObserver(roles, "graph 0/0"))
    call(*args)  ->  find this caller's runtime, observe the step, set the step context, run

A `CallObserver` owns the state of one compiled callable (`RuntimeTable`: one runtime per model
instance and caller) and turns a call's inputs into its step (`steps.observe_call`), or takes
the step of the enclosing model call when `track_steps` follows it. When the step is unknown it
says so once per reason; the plans then take their safe path.

The wrapper accepts positional arguments or one boxed list from its caller, and calls the
wrapped function with positional arguments (what `compile_fx`'s result takes, although it
marks itself `_boxed_call`; torch 2.13).
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .state import INDEX, ModelRuntime, current_caller, parent_step, remember, step_scope
from .steps import StepInfo, observe_call

log = logging.getLogger("ditcompile")


@dataclass(frozen=True)
class CallRoles:
    """Which of a compiled graph's flat inputs tell the step (indices; None: the graph has none).

    timestep: the diffusion timestep; main: the latents (its shape keys per-shape state);
    conditions: the conditioning inputs that tell CFG branches apart (text embeddings, masks,
    guidance); anchor: the first parameter (identifies the model instance).
    """

    timestep: Optional[int]
    main: Optional[int]
    conditions: tuple[int, ...]
    anchor: Optional[int]


class RuntimeTable:
    """The runtimes of one compiled callable: one per (model instance, caller), at most `limit`
    (least recently used first out, their tensors released). An entry goes with its model.

    A model instance is recognised by its first parameter tensor. When one caller keeps bringing
    new parameter tensors (weights replaced between calls, e.g. by sequential CPU offloading),
    each starts fresh state -- the safe path, said once (`name`)."""

    CHURN = 16  # new instances for one caller before the warning

    def __init__(self, limit: int = 64, name: str = "graph") -> None:
        self.limit = limit
        self.name = name
        self._runtimes: OrderedDict[tuple, tuple[Optional[weakref.ref], ModelRuntime]] = OrderedDict()
        self._created: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
        self._warned = False
        self._lock = threading.Lock()

    def get(self, anchor: Optional[torch.Tensor]) -> ModelRuntime:
        caller = current_caller()
        key = (id(anchor) if anchor is not None else None, caller)
        with self._lock:
            entry = self._runtimes.get(key)
            if entry is not None and (entry[0] is None or entry[0]() is anchor):
                self._runtimes.move_to_end(key)
                return entry[1]
            runtime = ModelRuntime()
            self._runtimes[key] = (weakref.ref(anchor) if anchor is not None else None, runtime)
            while len(self._runtimes) > self.limit:
                _, (_, evicted) = self._runtimes.popitem(last=False)
                evicted.new_generation()  # releases its tensors
            created = self._created[caller] = self._created.get(caller, 0) + 1
            churn = created > self.CHURN and not self._warned
            self._warned |= churn
        if churn:
            log.warning("ditaccel: %s: one caller has called it with %d different model parameter tensors (weights "
                        "replaced between calls, e.g. sequential CPU offloading?); each starts fresh step tracking "
                        "and caches, so step-dependent plans keep taking their safe path", self.name, created)
        if anchor is not None:
            INDEX.add(anchor, runtime)
            weakref.finalize(anchor, _drop_entry, weakref.ref(self), key)
        remember(caller, runtime)
        return runtime

    def __len__(self) -> int:
        return len(self._runtimes)


def _drop_entry(table_ref: weakref.ref, key: tuple) -> None:
    table = table_ref()
    if table is not None:
        with table._lock:
            table._runtimes.pop(key, None)


class CallObserver:
    """One compiled callable's runtimes and step observation (see the module docstring)."""

    def __init__(self, roles: CallRoles, name: str = "graph") -> None:
        self.roles = roles
        self.name = name
        self.runtimes = RuntimeTable(name=name)
        self._warned: set[str] = set()

    def observe(self, args: Sequence[Any]) -> tuple[ModelRuntime, StepInfo, tuple]:
        """(this caller's runtime, the call's step, the main input's shape)."""
        roles = self.roles
        runtime = self.runtimes.get(args[roles.anchor] if roles.anchor is not None else None)
        main = args[roles.main] if roles.main is not None else None
        shape = tuple(main.shape) if isinstance(main, torch.Tensor) else ()
        parent = parent_step()
        if parent is not None:
            return runtime, parent, shape
        timestep = args[roles.timestep] if roles.timestep is not None else None
        obs = observe_call(timestep, main, [args[i] for i in roles.conditions])
        info = runtime.tracker.observe(obs)
        if info.step is None:
            self._warn_unknown(info.unknown_reason or "unknown")
        return runtime, info, obs.shape

    def _warn_unknown(self, reason: str) -> None:
        if reason in self._warned:
            return
        self._warned.add(reason)
        hint = (" -- if this is a regionally compiled block, call ditcompile.track_steps(model) on the model so "
                "that its blocks share the step of each model call" if reason == "no timestep input" else "")
        log.warning("ditaccel: %s: the denoising step of these calls is unknown (%s); step-dependent plans take "
                    "their safe path (dense attention, every step computed)%s", self.name, reason, hint)


class StepTrackingCall:
    """A compiled graph whose plans depend on the step: observe, then run inside the step context."""

    def __init__(self, compiled: Callable, observer: CallObserver):
        self.compiled = compiled
        self.observer = observer

    def __call__(self, *args: Any) -> Any:
        boxed = len(args) == 1 and isinstance(args[0], list)
        flat = args[0] if boxed else list(args)
        runtime, info, _ = self.observer.observe(flat)
        with step_scope(info, runtime):
            return self.compiled(*flat)


__all__ = ["CallRoles", "RuntimeTable", "CallObserver", "StepTrackingCall"]
