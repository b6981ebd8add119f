"""Run-time state of one model instance across calls, and the step context of the call now running.

State is per model instance: a compiled graph can be shared by several instances of the same
class, so states are keyed (weakly) by the first parameter tensor a call receives, never by
the graph and never in a module-global singleton that a second model would share. A
`ModelRuntime` has one typed slot per feature, each with a `reset()`; `new_generation` resets
them all.

The current call's (StepInfo, ModelRuntime) is a context variable set by the wrapper around a
compiled graph (`runtime.wrapper`) and read by the ops (sparse warm-up, fidelity guard) -- valid
because the ops run synchronously inside the compiled call (no CUDA graphs with step-dependent
plans).
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from .cache_state import StepCacheState, format_cache_stats
from .sparse_state import SparseState
from .steps import StepInfo, StepTracker


@dataclass
class ModelRuntime:
    """Everything one model instance carries across calls: one typed slot per feature, each with
    a `reset()` (`new_generation` resets them all)."""

    tracker: StepTracker = field(default_factory=StepTracker)
    sparse: SparseState = field(default_factory=SparseState)            # sparse attention sites
    step_cache: StepCacheState = field(default_factory=StepCacheState)  # step-cache branches

    def new_generation(self) -> None:
        self.tracker.reset()
        self.sparse.reset()
        self.step_cache.reset()


class RuntimeRegistry:
    """Per-model runtimes, keyed by a parameter tensor of the model (by identity, held weakly).

    Keys are `id(tensor)` checked against a weak reference: tensors cannot be keys of a
    WeakKeyDictionary (their `==` is elementwise). An entry disappears with its tensor.
    """

    def __init__(self) -> None:
        self._states: dict[int, tuple[weakref.ref, ModelRuntime]] = {}

    def _get(self, tensor: torch.Tensor) -> Optional[ModelRuntime]:
        entry = self._states.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        return None

    def for_anchor(self, anchor: torch.Tensor) -> ModelRuntime:
        state = self._get(anchor)
        if state is None:
            state = ModelRuntime()
            key = id(anchor)
            self._states[key] = (weakref.ref(anchor), state)
            weakref.finalize(anchor, self._states.pop, key, None)
        return state

    def for_model(self, model: Any) -> list[ModelRuntime]:
        module = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
        found, seen = [], set()
        for param in module.parameters():
            state = self._get(param)
            if state is not None and id(state) not in seen:
                seen.add(id(state))
                found.append(state)
        return found


REGISTRY = RuntimeRegistry()
_CURRENT: contextvars.ContextVar[Optional[tuple[StepInfo, ModelRuntime]]] = contextvars.ContextVar(
    "ditaccel_call", default=None)


def current_step() -> Optional[StepInfo]:
    """The step of the compiled call now running (None outside a ditaccel runtime wrapper)."""
    call = _CURRENT.get()
    return call[0] if call is not None else None


def current_runtime() -> Optional[ModelRuntime]:
    """The runtime state of the model whose compiled call is running (None outside one)."""
    call = _CURRENT.get()
    return call[1] if call is not None else None


@contextlib.contextmanager
def step_scope(info: StepInfo, runtime: ModelRuntime) -> Iterator[None]:
    token = _CURRENT.set((info, runtime))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def new_generation(model: Any) -> int:
    """Restart step counting (and every feature's per-generation state) for `model`.

    Returns how many runtime states were reset (0 if the model has not run through a
    ditaccel graph that tracks steps yet; the next call then starts a generation anyway).
    """
    states = REGISTRY.for_model(model)
    for state in states:
        state.new_generation()
    return len(states)


@contextlib.contextmanager
def generation(model: Any) -> Iterator[None]:
    """`with ditcompile.generation(model): pipe(...)` runs exactly one generation."""
    new_generation(model)
    try:
        yield
    finally:
        new_generation(model)


def sparse_stats(model: Any) -> list[dict]:
    """Per runtime state of `model` that ran sparse attention: per-site sparse/dense call counts,
    guard results and density for the current generation ("current"), plus the summaries of
    finished generations ("finished")."""
    return [r.sparse.stats() for r in REGISTRY.for_model(model) if r.sparse.used]


def cache_stats(model: Any) -> list[dict]:
    """Per runtime state of `model` that ran the step cache: the current generation's
    computed/reused steps per CFG branch (with the per-call decision pattern, "current") and
    the summaries of finished generations ("finished")."""
    return [r.step_cache.stats() for r in REGISTRY.for_model(model) if r.step_cache.used]


def cache_report(model: Any) -> str:
    """One line per CFG branch of the current generation (and one per finished generation)."""
    lines = []
    for state in cache_stats(model):
        if state["current"]:
            lines.append("current generation: " + format_cache_stats(state["current"]))
        for i, finished in enumerate(state["finished"]):
            lines.append(f"finished generation {i}: " + format_cache_stats(finished))
    return "\n".join(lines) or "no step-cache state (the model has not run through a cached ditaccel graph)"


__all__ = ["ModelRuntime", "RuntimeRegistry", "REGISTRY", "current_step", "current_runtime", "step_scope",
           "new_generation", "generation", "sparse_stats", "cache_stats", "cache_report"]
