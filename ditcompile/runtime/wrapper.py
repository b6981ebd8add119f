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

from .continuity import LatentView, latent_sample
from .state import INDEX, ModelRuntime, current_caller, is_declared, parent_step, parent_tracker, remember, step_scope
from .steps import StepInfo, observe_call, warn_once

log = logging.getLogger("ditcompile")


@dataclass(frozen=True)
class CallRoles:
    """Which of a compiled graph's flat inputs tell the step (indices; None: the graph has none).

    timestep: the diffusion timestep; main: the latents (its shape keys per-shape state);
    conditions: the conditioning inputs that tell CFG branches apart (text embeddings, masks,
    guidance); anchor: the first parameter (identifies the model instance); output and view:
    the model's prediction among the graph's outputs, for the latents test (`continuity`).
    """

    timestep: Optional[int]
    main: Optional[int]
    conditions: tuple[int, ...]
    anchor: Optional[int]
    output: Optional[int] = None          # the graph output the model predicts (None: none)
    view: Optional[LatentView] = None     # how it relates to the main input (None: not comparable)


class RuntimeTable:
    """The runtimes of one compiled callable: per caller (held weakly: a finished thread or request
    scope takes its state with it), one per model instance, at most `limit` instances per caller
    (least recently used first out). An entry goes with its model instance.

    A model instance is recognised by its first parameter tensor. When a caller's instances keep
    dying and being replaced (weights replaced between calls, e.g. by sequential CPU offloading),
    each starts fresh state -- the safe path, said once (`name`)."""

    CHURN = 1  # replacements for one caller before the warning (the first is often missed: Dynamo holds the
    #           first call's weights)

    def __init__(self, limit: int = 256, name: str = "graph", config: Any = None,
                 trackers: Optional["RuntimeTable"] = None, shared: bool = False) -> None:
        self.limit = limit
        self.name = name
        self.shared = shared      # a table of shared step trackers only (`frame_trackers`): not in INDEX,
        #                           says nothing (the callables' own tables do)
        self.config = config      # the DitConfig of the callable (reports, `sparse_stats(wrapper)`)
        self.trackers = trackers  # where the step trackers come from (shared by a frame's recompiles)
        self._by_caller: "weakref.WeakKeyDictionary[Any, OrderedDict]" = weakref.WeakKeyDictionary()
        self._watched: set[int] = set()                    # anchors with a finalizer
        self._replaced: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()  # [died?, count]
        self._warned = False
        self._lock = threading.Lock()

    def get(self, anchor: Optional[torch.Tensor]) -> ModelRuntime:
        caller = current_caller()
        key = id(anchor) if anchor is not None else None
        churn = 0
        with self._lock:
            table = self._by_caller.get(caller)
            if table is None:
                table = self._by_caller[caller] = OrderedDict()
            entry = table.get(key)
            if entry is not None and (entry[0] is None or entry[0]() is anchor):
                table.move_to_end(key)
                return entry[1]
            runtime = ModelRuntime(caller=weakref.ref(caller),
                                   anchor=weakref.ref(anchor) if anchor is not None else None,
                                   config=self.config, label=self.name)
            if self.trackers is not None:
                runtime.tracker = self.trackers.get(anchor).tracker
            table[key] = (weakref.ref(anchor) if anchor is not None else None, runtime)
            while len(table) > self.limit:
                table.popitem(last=False)  # not released: a call in flight may still hold it
            replaced = self._replaced.setdefault(caller, [False, 0])
            if replaced[0] and not self.shared:  # an instance of this caller died since its last new instance
                replaced[0], replaced[1] = False, replaced[1] + 1
                runtime.tracker.events["fresh state: the model's weights were replaced since the last call"] = replaced[1]
                if replaced[1] > self.CHURN and not self._warned:
                    self._warned, churn = True, replaced[1]
            watch = anchor is not None and key not in self._watched
            if watch:
                self._watched.add(key)
        if watch:
            weakref.finalize(anchor, _anchor_died, weakref.ref(self), key)
        if self.shared:
            return runtime
        if anchor is not None:
            INDEX.add(anchor, runtime)
        remember(caller, runtime)
        if churn:
            log.warning("ditaccel: %s: one caller's model weights were replaced %d times between calls (e.g. "
                        "sequential CPU offloading?); each replacement starts fresh step tracking and caches, so "
                        "step-dependent plans keep taking their safe path", self.name, churn)
        return runtime

    def __len__(self) -> int:
        return sum(len(t) for t in list(self._by_caller.values()))


def _anchor_died(table_ref: weakref.ref, key: int) -> None:
    """A model instance went away: drop its runtimes (every caller) and note the replacement."""
    table = table_ref()
    if table is None:
        return
    with table._lock:
        table._watched.discard(key)
        for caller, runtimes in list(table._by_caller.items()):
            if runtimes.pop(key, None) is not None:
                table._replaced.setdefault(caller, [False, 0])[0] = True


_SHARED: dict[tuple, weakref.ref] = {}  # (Dynamo frame id, config) -> the frame's table of step trackers
_SHARED_LOCK = threading.Lock()


def frame_trackers(frame: Any, config: Any, name: str) -> RuntimeTable:
    """The step trackers of one Dynamo frame compiled with one config, shared by the callables of
    its recompiles (new shapes, dynamic sizes): a run that moves to a new graph keeps its step
    count (the features' own state stays per callable). Goes with the last callable using it."""
    key = (frame, config)
    with _SHARED_LOCK:
        ref = _SHARED.get(key)
        table = ref() if ref is not None else None
        if table is None:
            table = RuntimeTable(name=name, shared=True)
            _SHARED[key] = weakref.ref(table, lambda dead, key=key: _SHARED.get(key) is dead and _SHARED.pop(key))
        return table


class CallObserver:
    """One compiled callable's runtimes and step observation (see the module docstring).
    `config`: the callable's DitConfig; `frame`: its Dynamo frame id (recompiles of one frame
    with one config share step tracking; None: not shared)."""

    def __init__(self, roles: CallRoles, name: str = "graph", config: Any = None, frame: Any = None) -> None:
        self.roles = roles
        self.name = name
        self.frame = frame
        trackers = frame_trackers(frame, config, name) if frame is not None else None
        self.runtimes = RuntimeTable(name=name, config=config, trackers=trackers)
        self._warned: set[str] = set()

    def observe(self, args: Sequence[Any]) -> tuple[ModelRuntime, StepInfo, tuple]:
        """(this caller's runtime, the call's step, the main input's shape)."""
        roles = self.roles
        anchor = args[roles.anchor] if roles.anchor is not None else None
        runtime = self.runtimes.get(anchor)
        main = args[roles.main] if roles.main is not None else None
        shape = tuple(main.shape) if isinstance(main, torch.Tensor) else ()
        parent = parent_step()
        if parent is not None:
            runtime.parent_tracker = parent_tracker()
            return runtime, parent, shape
        timestep = args[roles.timestep] if roles.timestep is not None else None
        view = roles.view if roles.output is not None else None
        obs = observe_call(timestep, main, [args[i] for i in roles.conditions], view, runtime.tracker.take_pending())
        info = runtime.tracker.observe(obs, declared=is_declared(anchor))
        if info.step is None:
            self._warn_unknown(info.unknown_reason or "unknown")
        if info.note is not None:
            warn_once(self._warned, info.note, "ditaccel: %s: %s", self.name, info.note)
        return runtime, info, obs.shape

    def record_output(self, runtime: ModelRuntime, info: StepInfo, outputs: Sequence[Any]) -> None:
        """After a call that observed its own step: sample the model's prediction for the latents test."""
        roles = self.roles
        if roles.output is None or roles.view is None or parent_step() is not None or info.step is None:
            return
        if roles.output < len(outputs):
            runtime.tracker.record_output(info, latent_sample(outputs[roles.output], roles.view))

    def _warn_unknown(self, reason: str) -> None:
        hint = (" -- if this is a regionally compiled block, call ditcompile.track_steps(model) on the model so "
                "that its blocks share the step of each model call" if reason == "no timestep input" else "")
        warn_once(self._warned, reason, "ditaccel: %s: the denoising step of these calls is unknown (%s); step-dependent "
                        "plans take their safe path (dense attention, every step computed)%s", self.name, reason, hint)


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
            outputs = self.compiled(*flat)
        self.observer.record_output(runtime, info, outputs)
        return outputs


__all__ = ["CallRoles", "RuntimeTable", "CallObserver", "StepTrackingCall"]
