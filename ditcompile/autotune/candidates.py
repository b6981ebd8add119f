"""What can be tuned: an op ("attention.dense", ...) and the candidate implementations of it.

    Candidate(name, run, check, available)   one implementation: run(problem) -> output tensor;
                                             check(problem) -> None (valid) or the reason it is not
    Tunable(op, candidates, key, default, reference, error, tolerance)
    register_tunable(tunable)                the ops layer registers its ops at import
    add_candidate(op, candidate)             e.g. the linear-quantization GEMMs, a user's kernel
    get_tunable(op), tunables()
    candidate_set_hash(tunable)              changes when a candidate is added, removed, renamed,
                                             re-versioned, or becomes (un)available: results timed
                                             against another set are not used

A problem is whatever object the op builds for one call (its tensors and static arguments);
this package never looks inside it: the op's callables do. Candidates must not write their
inputs: each returns its own output tensor (the tuner checks inputs' version counters).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from torch import Tensor

from .key import TuneKey

Problem = Any


def _always_valid(problem: Problem) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Candidate:
    """One implementation of a tunable op.

    name: unique within the op, stable across versions ("sdpa.flash", "triton.m128n64w8s3"):
        the persistent cache stores it.
    run(problem) -> Tensor: the op's output for the problem, a new tensor (inputs untouched).
    check(problem) -> None or a reason: whether it can run this problem (dtype, head dim,
        device capability, mask kind, alignment); checked before every use, cached or not.
    available: False when its library is not installed (kept in the set, never run).
    version: bump when the implementation changes enough that old timings mean nothing.
    """

    name: str
    run: Callable[[Problem], Tensor]
    check: Callable[[Problem], Optional[str]] = _always_valid
    available: bool = True
    version: str = "1"

    def reason_invalid(self, problem: Problem) -> Optional[str]:
        if not self.available:
            return "not installed"
        return self.check(problem)


@dataclass(frozen=True)
class Tunable:
    """A tunable op: its candidates and how one problem is keyed, defaulted and validated.

    key(problem) -> TuneKey: bucketed shapes and everything the choice depends on.
    default(problem) -> str: the candidate used without a tuning result (documented per op).
    reference(problem) -> Tensor: the exact result to validate against (any layout the op's
        `error` understands, e.g. sampled query rows in float32).
    error(output, reference, problem) -> float: the candidate's error (relative L2; NaN for
        a non-finite output).
    tolerance(problem) -> float: the largest error a valid candidate may have.
    inputs(problem) -> tuple of tensors a candidate must not write.
    """

    op: str
    candidates: tuple[Candidate, ...]
    key: Callable[[Problem], TuneKey]
    default: Callable[[Problem], str]
    reference: Callable[[Problem], Tensor]
    error: Callable[[Tensor, Tensor, Problem], float]
    tolerance: Callable[[Problem], float]
    inputs: Callable[[Problem], tuple] = lambda problem: ()
    """The problem's input tensors: a candidate that changes one (version counter) is dropped."""
    names: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.candidates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tunable {self.op!r}: duplicate candidate names {dup}")
        object.__setattr__(self, "names", {c.name: c for c in self.candidates})

    def candidate(self, name: str) -> Optional[Candidate]:
        return self.names.get(name)


_REGISTRY: dict[str, Tunable] = {}
_LOCK = threading.Lock()


def register_tunable(tunable: Tunable) -> Tunable:
    """Register (or replace) the tunable op `tunable.op`; returns it."""
    with _LOCK:
        _REGISTRY[tunable.op] = tunable
    return tunable


def add_candidate(op: str, candidate: Candidate) -> None:
    """Add `candidate` to the registered op `op` (replacing one of the same name).

    Raises KeyError naming the registered ops when `op` is not one."""
    with _LOCK:
        tunable = _REGISTRY.get(op)
        if tunable is None:
            raise KeyError(f"no tunable op {op!r}; registered: {sorted(_REGISTRY)}")
        kept = tuple(c for c in tunable.candidates if c.name != candidate.name)
        _REGISTRY[op] = replace(tunable, candidates=kept + (candidate,))


def get_tunable(op: str) -> Tunable:
    """The registered tunable `op`; KeyError naming the registered ops."""
    try:
        return _REGISTRY[op]
    except KeyError:
        raise KeyError(f"no tunable op {op!r}; registered: {sorted(_REGISTRY)}") from None


def tunables() -> dict[str, Tunable]:
    """Every registered tunable op, by name."""
    return dict(_REGISTRY)


def candidate_set_hash(tunable: Tunable) -> str:
    """A short hash of the op's candidate set: names, versions and availability."""
    text = "|".join(f"{c.name}@{c.version}{'' if c.available else '!'}"
                    for c in sorted(tunable.candidates, key=lambda c: c.name))
    return hashlib.sha256(f"{tunable.op}:{text}".encode()).hexdigest()[:16]


__all__ = ["Candidate", "Tunable", "register_tunable", "add_candidate", "get_tunable", "tunables",
           "candidate_set_hash"]
