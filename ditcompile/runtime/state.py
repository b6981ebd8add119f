"""Run-time state across calls: who owns it, who may share it, and the step context of a call.

Ownership. State belongs to the compiled callable that uses it (`runtime.wrapper.RuntimeTable`),
one `ModelRuntime` per (model instance, caller):

* a compiled graph can be shared by several instances of one class, so the instance is
  identified by the first parameter a call receives (held weakly: the state goes with the model);
* two compiled wrappers of one module, or a recompiled graph (new shapes, new options), have
  their own callables and so their own state: nothing is inherited that was computed on another
  graph, and state goes away with its callable (`torch._dynamo.reset()`);
* a caller is a thread, or a `with ditcompile.request_scope():` block (one per request in an
  asyncio server): concurrent callers never share a step tracker or cached tensors.

`INDEX` finds every runtime of a model (weakly) for `new_generation`, `sparse_stats` and
`cache_stats`. A `ModelRuntime` has one typed slot per feature, each with a `reset()`.

Step context. The current call's (StepInfo, ModelRuntime) is a context variable set by the
callable around the compiled code and read by the ops (sparse warm-up, fidelity guard) -- valid
because the ops run synchronously inside the compiled call (no CUDA graphs with step-dependent
plans). A *parent* step context (`parent_scope`, set by `ditcompile.track_steps(model)` around
the model's own forward) gives every compiled region inside one model call the step of that call
(regional compilation: the blocks never see the timestep).
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from ..config import config_label, resolve_config
from ..geometry import BlockRef, block_of
from .cache_state import StepCacheState, format_cache_stats
from .sparse_state import SparseState
from .steps import StepInfo, StepTracker


_PARAMETER_NAMES: dict[int, tuple[weakref.ref, str]] = {}  # id(param) -> (param, qualified name)


def name_parameters(model: torch.nn.Module) -> None:
    """Remember the qualified name of each parameter of `model` (`track_steps` does it), so that a
    regionally compiled block knows which block it is (`ModelRuntime.block`). An entry goes with
    its parameter."""
    for name, param in model.named_parameters():
        key = id(param)
        entry = _PARAMETER_NAMES.get(key)
        if entry is None or entry[0]() is not param:
            weakref.finalize(param, _PARAMETER_NAMES.pop, key, None)
        _PARAMETER_NAMES[key] = (weakref.ref(param), name)


def parameter_name(param: Any) -> Optional[str]:
    """The qualified name recorded by `name_parameters` (None if none)."""
    entry = _PARAMETER_NAMES.get(id(param))
    return entry[1] if entry is not None and entry[0]() is param else None


@dataclass(eq=False)
class ModelRuntime:
    """Everything one model instance carries across the calls of one caller of one compiled
    callable: one typed slot per feature, each with a `reset()` (`new_generation` resets them
    all and releases the tensors they hold)."""

    tracker: StepTracker = field(default_factory=StepTracker)
    sparse: SparseState = field(default_factory=SparseState)            # sparse attention sites
    step_cache: StepCacheState = field(default_factory=StepCacheState)  # step-cache branches
    caller: Optional[weakref.ref] = None                                # the caller it serves (weakly)
    anchor: Optional[weakref.ref] = None                                # its model's first parameter
    config: Any = None                                                  # the DitConfig of its callable
    label: str = "graph"                                                # its callable's name ("graph 0/1")
    parent_tracker: Optional[StepTracker] = None  # track_steps' tracker, when the steps come from it

    def tracking(self) -> dict:
        """The step tracking behind this runtime's steps (its own, or the enclosing model call's
        under `track_steps`): `StepTracker.summary()`."""
        return (self.parent_tracker if self.parent_tracker is not None else self.tracker).summary()

    def describe(self) -> dict:
        """{"graph": its callable, "options": its config's options that differ from the defaults,
        "block": the block it is, for a regionally compiled block followed by `track_steps`}."""
        block = self.block()
        return {"graph": self.label, "options": config_label(self.config) if self.config is not None else "?",
                **({"block": block.path} if block is not None else {})}

    def block(self) -> Optional[BlockRef]:
        """The transformer block this runtime's model instance is, when it is a block of a model
        followed by `track_steps` (regional compilation), else None."""
        param = self.anchor() if self.anchor is not None else None
        name = parameter_name(param) if param is not None else None
        return block_of(name) if name else None

    def new_generation(self) -> None:
        self.tracker.reset()
        self.sparse.reset()
        self.step_cache.reset()


class RuntimeIndex:
    """Weak index: a model parameter -> every `ModelRuntime` created for it (any callable, any
    caller), in creation order. Entries go with the parameter and with the runtimes."""

    def __init__(self) -> None:
        self._by_anchor: dict[int, tuple[weakref.ref, list[weakref.ref]]] = {}
        self._lock = threading.Lock()

    def add(self, anchor: torch.Tensor, runtime: ModelRuntime) -> None:
        key = id(anchor)
        with self._lock:
            entry = self._by_anchor.get(key)
            if entry is None or entry[0]() is not anchor:
                entry = (weakref.ref(anchor), [])
                self._by_anchor[key] = entry
                weakref.finalize(anchor, self._by_anchor.pop, key, None)
            entry[1][:] = [r for r in entry[1] if r() is not None] + [weakref.ref(runtime)]

    def for_model(self, model: Any) -> list[ModelRuntime]:
        module = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
        found: list[ModelRuntime] = []
        with self._lock:
            for param in module.parameters():
                entry = self._by_anchor.get(id(param))
                if entry is None or entry[0]() is not param:
                    continue
                for ref in entry[1]:
                    runtime = ref()
                    if runtime is not None and runtime not in found:
                        found.append(runtime)
        return found


INDEX = RuntimeIndex()


# ----------------------------------------------------------------------------- callers


class Caller:
    """Identity of a caller (a thread, or one `request_scope`: `request` True); compared by identity."""

    __slots__ = ("name", "request", "__weakref__")

    def __init__(self, name: str, request: bool = False) -> None:
        self.name = name
        self.request = request

    def __repr__(self) -> str:
        return f"Caller({self.name})"


_REQUEST: contextvars.ContextVar[Optional[Caller]] = contextvars.ContextVar("ditaccel_request", default=None)
_THREAD = threading.local()
# request scope -> its runtimes (weakly), released when the scope ends
_RUNTIMES_OF: "weakref.WeakKeyDictionary[Caller, list[weakref.ref]]" = weakref.WeakKeyDictionary()
_CALLERS_LOCK = threading.Lock()


def current_caller() -> Caller:
    """The caller of the call now being made: the innermost `request_scope`, else this thread."""
    caller = _REQUEST.get()
    if caller is None:
        caller = getattr(_THREAD, "caller", None)
        if caller is None:
            caller = _THREAD.caller = Caller(f"thread {threading.current_thread().name}")
    return caller


def remember(caller: Caller, runtime: ModelRuntime) -> None:
    """Record that `runtime` serves the request scope `caller` (released when the scope ends).
    A thread's runtimes are not recorded: they live as long as their tables keep them."""
    if not caller.request:
        return
    with _CALLERS_LOCK:
        _RUNTIMES_OF.setdefault(caller, []).append(weakref.ref(runtime))


class RequestScope:
    """One request's caller identity (see `request_scope`). A context manager: entering makes it
    the current caller (in this thread or asyncio task); leaving the outermost `with` releases the
    cached tensors of its state, unless `keep` (then `close()` does, or dropping the scope)."""

    def __init__(self, name: str = "request", keep: bool = False) -> None:
        self.caller = Caller(name, request=True)
        self.keep = keep
        self._tokens: list[contextvars.Token] = []
        self._used = False
        self._closed = False

    def __enter__(self) -> Caller:
        if self._used and not self._tokens and not self.keep:
            raise RuntimeError(
                f"request_scope({self.caller.name!r}) was already entered and left, which released its state; "
                "for a request served in several `with` blocks (steps of several requests interleaved in one "
                "thread) use `scope = ditcompile.request_scope(name, keep=True)`, enter it for each call and "
                "`scope.close()` it when the request ends")
        if self._closed:
            raise RuntimeError(f"request_scope({self.caller.name!r}) is closed; make a new scope for a new request")
        self._used = True
        self._tokens.append(_REQUEST.set(self.caller))
        return self.caller

    def __exit__(self, *exc: Any) -> None:
        _REQUEST.reset(self._tokens.pop())
        if not self._tokens and not self.keep:
            self.close()

    def close(self) -> None:
        """Release the tensors the request's state holds (its summaries stay for the stats)."""
        self._closed = True
        with _CALLERS_LOCK:
            refs = _RUNTIMES_OF.pop(self.caller, [])
        for ref in refs:
            runtime = ref()
            if runtime is not None:
                runtime.new_generation()


def request_scope(name: str = "request", keep: bool = False) -> RequestScope:
    """`with ditcompile.request_scope():` -- the calls inside get their own step tracking and
    caches (one generation per scope, as a request in a server), never shared with other threads
    or scopes; at exit the tensors they cached are released, and the scope's state goes away with
    the scope (read `cache_stats` / `sparse_stats` inside it).

    `keep=True`: a request served in several `with` blocks (a scheduler that interleaves the
    steps of several requests in one thread): enter the same scope for each of its calls; its
    state lives until `scope.close()` (or until the scope is dropped). Entering a scope made
    without `keep` a second time raises RuntimeError (its state was released at the first exit).
    """
    if not isinstance(name, str):
        raise TypeError(f"request_scope(name): name must be a string, got {name!r}")
    if not isinstance(keep, bool):
        raise TypeError(f"request_scope(keep): keep must be True or False, got {keep!r}")
    return RequestScope(name, keep)


def check_model(model: Any, function: str) -> None:
    """TypeError unless `model` is an nn.Module (a `torch.compile` wrapper of one is an nn.Module)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"ditcompile.{function}(model): model must be a torch.nn.Module (or the torch.compile "
                        f"wrapper of one), got {type(model).__name__}")


# ----------------------------------------------------------------------------- step context


_CURRENT: contextvars.ContextVar[Optional[tuple[StepInfo, ModelRuntime]]] = contextvars.ContextVar(
    "ditaccel_call", default=None)
_PARENT: contextvars.ContextVar[Optional[tuple[StepInfo, Optional[tuple], Optional[StepTracker]]]] = (
    contextvars.ContextVar("ditaccel_parent_call", default=None))


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


def parent_step() -> Optional[StepInfo]:
    """The step of the enclosing model call, when `track_steps` follows it (else None)."""
    parent = _PARENT.get()
    return parent[0] if parent is not None else None


def parent_grid() -> Optional[tuple]:
    """The token grid (frames, height, width) of the enclosing model call, when `track_steps`
    follows it and found the model's patch embedding (else None)."""
    parent = _PARENT.get()
    return parent[1] if parent is not None else None


def parent_tracker() -> Optional[StepTracker]:
    """The step tracker of the enclosing model call, when `track_steps` follows it (else None)."""
    parent = _PARENT.get()
    return parent[2] if parent is not None else None


def enter_parent(info: StepInfo, grid: Optional[tuple] = None, tracker: Optional[StepTracker] = None
                 ) -> contextvars.Token:
    """Make `info` (and `grid`) the step (and token grid) of every compiled region called until
    `exit_parent(token)`; `tracker`: the tracker that gave the step (for the stats)."""
    return _PARENT.set((info, grid, tracker))


def exit_parent(token: contextvars.Token) -> None:
    _PARENT.reset(token)


# ----------------------------------------------------------------------------- public functions


_GENERATION_LISTENERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def on_new_generation(module: Any, callback: Any) -> None:
    """Call `callback(caller or None)` when `new_generation(module)` runs (`track_steps` uses it)."""
    _GENERATION_LISTENERS[module] = callback


def new_generation(model: Any, all_callers: bool = False) -> int:
    """Restart step counting (and every feature's per-generation state, releasing its cached
    tensors) for `model` and the current caller (this thread or request scope) -- or every
    caller with `all_callers=True` -- in every compiled callable, regional ones included.

    Returns how many runtime states were reset (0 if the model has not run through a ditaccel
    graph that tracks steps yet: the next call then starts a generation anyway).
    """
    check_model(model, "new_generation")
    caller = None if all_callers else current_caller()
    states = [s for s in INDEX.for_model(model) if caller is None or (s.caller is not None and s.caller() is caller)]
    for state in states:
        state.new_generation()
    for module in (model, getattr(model, "_orig_mod", None)):
        callback = _GENERATION_LISTENERS.get(module) if module is not None else None
        if callback is not None:
            callback(caller)
    return len(states)


_DECLARED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("ditaccel_declared", default=frozenset())


def is_declared(anchor: Any) -> bool:
    """True inside `generation(model)` for a parameter `anchor` of that model."""
    return anchor is not None and id(anchor) in _DECLARED.get()


@contextlib.contextmanager
def generation(model: Any) -> Iterator[None]:
    """`with ditcompile.generation(model): pipe(...)` declares one generation (for this caller):
    step counting restarts at entry and exit, and inside, the model's calls belong to this
    generation whatever their latents do -- each new timestep is the next step, a repeated one
    another evaluation or CFG branch. Use it for one sampling run; it is what makes stochastic
    samplers (SDE, ancestral), whose latents do not continue from step to step, keep their
    step-dependent plans."""
    check_model(model, "generation")
    new_generation(model)
    params = frozenset(id(p) for m in (model, getattr(model, "_orig_mod", None)) if isinstance(m, torch.nn.Module)
                       for p in m.parameters())
    token = _DECLARED.set(_DECLARED.get() | params)
    try:
        yield
    finally:
        _DECLARED.reset(token)
        new_generation(model)


def _runtimes(model: Any) -> list[ModelRuntime]:
    """The runtimes of `model`: of every compiled callable for a module, of that wrapper's own
    callables for a `torch.compile` wrapper whose ditaccel options can be read."""
    check_model(model, "sparse_stats / cache_stats / cache_report")
    runtimes = INDEX.for_model(model)
    config = _wrapper_config(model)
    return runtimes if config is None else [r for r in runtimes if r.config == config]


def _wrapper_config(model: Any) -> Any:
    """The DitConfig a `torch.compile(m, backend="ditaccel", options=...)` wrapper compiles with
    (None for a plain module, or when the options cannot be found): Dynamo keeps the backend at
    the end of the `_torchdynamo_orig_backend` chain of its callback (torch/_dynamo/convert_frame.py)."""
    node = getattr(getattr(model, "dynamo_ctx", None), "callback", None)
    for _ in range(16):
        if node is None:
            return None
        kwargs = getattr(node, "kwargs", None)
        if isinstance(kwargs, dict) and getattr(node, "compiler_name", None) == "ditaccel":
            try:
                return resolve_config(kwargs.get("options"))
            except Exception:  # options the backend would refuse: no filtering
                return None
        node = getattr(node, "_torchdynamo_orig_backend", None)
    return None


def sparse_stats(model: Any) -> list[dict]:
    """Per runtime state of `model` (of that wrapper, for a compiled wrapper) that ran sparse
    attention: which callable and options ("graph", "options"), per-site sparse/dense call
    counts, guard results and density for the current generation ("current", with a per-shape
    breakdown), plus the summaries of finished generations ("finished") and the step tracking
    ("tracking": the current generation and why generations started or steps were unknown, with
    counts)."""
    return [{**r.describe(), **r.sparse.stats(), "tracking": r.tracking()} for r in _runtimes(model)
            if r.sparse.used]


def cache_stats(model: Any) -> list[dict]:
    """Per runtime state of `model` (of that wrapper, for a compiled wrapper) that ran the step
    cache: "graph" and "options" as in `sparse_stats`, the current generation's computed/reused
    steps per CFG branch (with the per-call decision pattern and a per-shape breakdown,
    "current"), the summaries of finished generations ("finished") and the step tracking
    ("tracking", as in `sparse_stats`)."""
    return [{**r.describe(), **r.step_cache.stats(), "tracking": r.tracking()} for r in _runtimes(model)
            if r.step_cache.used]


def cache_report(model: Any) -> str:
    """One line for the current generation and one per finished generation (per CFG branch:
    computed/reused steps, per shape when there are several), then one line of step tracking
    events (why generations started, calls whose step was unknown)."""
    lines = []
    states = cache_stats(model)
    for state in states:
        if len(states) > 1:
            lines.append(f"{state['graph']} ({state['options']}):")
        if state["current"]:
            lines.append("current generation: " + format_cache_stats(state["current"]))
        for i, finished in enumerate(state["finished"]):
            lines.append(f"finished generation {i}: " + format_cache_stats(finished))
        events = state["tracking"]["events"]
        if events:
            lines.append("step tracking: " + ", ".join(f"{why} x{n}" for why, n in sorted(events.items())))
    return "\n".join(lines) or "no step-cache state (the model has not run through a cached ditaccel graph)"


__all__ = ["ModelRuntime", "name_parameters", "parameter_name", "RuntimeIndex", "INDEX", "Caller", "current_caller", "remember", "RequestScope", "request_scope",
           "current_step", "current_runtime", "step_scope", "parent_step", "parent_grid", "parent_tracker",
           "enter_parent", "exit_parent",
           "new_generation", "generation", "is_declared", "sparse_stats", "cache_stats", "cache_report"]
