"""Runtime state that lives across calls of one compiled model: which denoising step this is.

Diffusion pipelines call the transformer once per step (or once per classifier-free-guidance
branch per step, e.g. Wan's pipeline calls it for the conditional and then the unconditional
prediction with the same timestep). A `StepTracker` turns the sequence of timesteps it sees
into (generation, step, branch):

    t: 999 999 966 966 ... 5 5 | 999 999 ...
       s0b0 s0b1 s1b0 s1b1      | new generation (the timestep went up): s0b0 s0b1 ...

A call with the same timestep as the previous one is the next CFG branch of the same step; a
lower timestep starts the next step; a higher one starts a new generation.
`ditcompile.new_generation(model)` (or `with ditcompile.generation(model):`) forces a restart,
for schedules the rule cannot see (two generations that start at the same timestep).

State is per model instance: a compiled graph can be shared by several instances of the same
class, so states are keyed (weakly) by the first parameter tensor a call receives, never by
the graph and never in a module-global singleton that a second model would share.
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch


@dataclass(frozen=True)
class StepInfo:
    generation: int   # 0 for the first generation this model runs, then 1, 2, ...
    step: int         # denoising step within the generation, from 0
    branch: int       # CFG branch within the step (order of the calls), from 0
    timestep: Optional[float]


@dataclass
class StepTracker:
    generation: int = -1
    step: int = 0
    branch: int = 0
    last_timestep: Optional[float] = None
    restart_requested: bool = True

    def observe(self, timestep: Optional[float]) -> StepInfo:
        """Advance with the timestep of a new call; None (unknown) counts every call as a step."""
        if self.restart_requested or (timestep is not None and self.last_timestep is not None
                                      and timestep > self.last_timestep):
            self.generation += 1
            self.step, self.branch = 0, 0
            self.restart_requested = False
        elif timestep is not None and timestep == self.last_timestep:
            self.branch += 1
        else:
            self.step += 1
            self.branch = 0
        self.last_timestep = timestep
        return StepInfo(self.generation, self.step, self.branch, timestep)

    def restart(self) -> None:
        self.restart_requested = True


@dataclass
class ModelRuntime:
    """Everything one model instance carries across calls (passes add their own entries)."""

    tracker: StepTracker = field(default_factory=StepTracker)
    extras: dict = field(default_factory=dict)  # per-pass state, e.g. {"step_cache": ...}

    def new_generation(self) -> None:
        self.tracker.restart()
        for value in self.extras.values():
            reset = getattr(value, "reset", None)
            if callable(reset):
                reset()


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


def pass_stats(model: Any, key: str) -> list[dict]:
    """For each runtime state of `model` holding `extras[key]` (a `GenerationState`): its current
    generation's summary and the summaries of finished generations."""
    out = []
    for runtime in REGISTRY.for_model(model):
        state = runtime.extras.get(key)
        if state is not None:
            out.append({"current": state.summary(), "finished": list(state.finished)})
    return out


class GenerationState:
    """Base of per-pass run-time state that restarts with every generation.

    Subclasses keep their per-generation data in `self.data` (a dict) and say how to summarise
    it; a finished generation's summary is kept in `finished`.
    """

    def __init__(self) -> None:
        self.generation = -1
        self.data: dict = {}
        self.finished: list = []

    def entry(self, key: Any, generation: int, factory: Any) -> Any:
        """This generation's entry for `key` (a site or a CFG branch), created by `factory`."""
        if generation != self.generation:
            if self.data:
                self.finished.append(self.summary())
            self.data, self.generation = {}, generation
        return self.data.setdefault(key, factory())

    def reset(self) -> None:
        self.generation = -1  # the next call's generation differs: entries restart then

    def summary(self) -> dict:
        raise NotImplementedError


def new_generation(model: Any) -> int:
    """Restart step counting (and every pass's per-generation state) for `model`.

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


def timestep_value(value: Any) -> Optional[float]:
    """A call's timestep as a float (first element of a tensor; a host sync on GPU)."""
    if isinstance(value, torch.Tensor):
        return float(value.reshape(-1)[0].item()) if value.numel() else None
    if isinstance(value, (int, float)):
        return float(value)
    return None
