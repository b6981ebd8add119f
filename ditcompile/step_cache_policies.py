"""Step-cache policies: the one list of them, and the decision each one makes per call.

Every policy answers one question per call of a CFG branch: run the body (the middle blocks)
this step, or reuse its residual? The answer depends on a *signal* the head computes and on
what the branch remembers (`BranchState`):

    policy     signal                                      decision (compute the body when ...)
    fbcache    residual of the head's blocks               rel-L1 change vs the last computed step > threshold
    dbcache    same, over `compute_first` head blocks      same (plus `compute_last` tail blocks, cache-dit)
    teacache   first block's timestep-modulated input      accumulated rescaled rel-L1 change >= threshold

Shared by every policy (applied in `runtime.step_cache.decide`): the first steps of a
generation (`warmup_steps`) and the first call of a branch always compute (the policy is told,
so that it can keep its bookkeeping); `max_cached_steps` caps consecutive reuses; a computed
step is passed to the policy's `on_compute`. TaylorSeer (`extrapolate`) is not a policy but a
way of reusing: it extrapolates the residual from the last computed ones instead of repeating
the newest.

Sources: First-Block Cache (ParaAttention; diffusers' `FirstBlockCacheConfig`), DBCache
(cache-dit), TeaCache (Liu et al., arXiv 2411.19108), TaylorSeer (Liu et al., arXiv 2503.06923).

Config validation (`cache.policy`), the pass (which signal to find in the graph), the runtime
(which decision to call) and the benchmarks all read `CACHE_POLICIES`. Adding a policy means one
entry here plus its tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

RESIDUAL = "residual"                # the head blocks' residual: stream after them - stream before them
MODULATED_INPUT = "modulated_input"  # the first block's timestep-modulated input (or a named module's output)
SIGNALS = (RESIDUAL, MODULATED_INPUT)


@dataclass
class BranchState:
    """What one CFG branch remembers between steps of a generation."""

    reference_signal: Optional[torch.Tensor] = None   # fb/db: signal at the last computed step
    previous_signal: Optional[torch.Tensor] = None    # teacache: signal at the previous step
    accumulated: float = 0.0                          # teacache: accumulated rescaled change
    consecutive_cached: int = 0
    history: list = field(default_factory=list)       # [(step, [residual per stream])], newest last
    computed: int = 0
    reused: int = 0
    decisions: list = field(default_factory=list)     # [(call order, computed?)], per call

    def release(self) -> None:
        """Drop the tensors this branch holds (signals, residual history); its counts stay."""
        self.reference_signal = self.previous_signal = None
        self.history = []


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous| (as diffusers' and ParaAttention's FBCache)."""
    diff = (current.float() - previous.float()).abs().mean()
    return float((diff / previous.float().abs().mean()).item())


def residual_change(cfg: Any, state: BranchState, signal: torch.Tensor, must_compute: bool) -> bool:
    """FBCache / DBCache: compute unless the signal moved less than `cfg.threshold` (relative L1)
    since the last *computed* step. `cfg`: the `cache` config section; `signal`: any shape."""
    if must_compute or state.reference_signal is None:
        return True
    return relative_l1(signal, state.reference_signal) > cfg.threshold


def residual_computed(state: BranchState, signal: torch.Tensor) -> None:
    """A computed step's signal is the reference the next steps compare with."""
    state.reference_signal = signal


def teacache(cfg: Any, state: BranchState, signal: torch.Tensor, must_compute: bool) -> bool:
    """TeaCache: accumulate the relative L1 change of the signal step over step, rescaled by the
    polynomial `cfg.teacache_coefficients` (highest degree first; none: identity); compute when the
    sum reaches `cfg.threshold`."""
    previous, state.previous_signal = state.previous_signal, signal
    if must_compute or previous is None:
        return True
    change = relative_l1(signal, previous)
    if cfg.teacache_coefficients:
        change = sum(c * change ** p for p, c in enumerate(reversed(cfg.teacache_coefficients)))
    state.accumulated += change
    return state.accumulated >= cfg.threshold


def teacache_computed(state: BranchState, signal: torch.Tensor) -> None:
    """The accumulated change restarts at a computed step."""
    state.accumulated = 0.0


def teacache_note(cfg: Any) -> Optional[str]:
    if not cfg.teacache_coefficients:
        return "teacache without coefficients: the relative change is accumulated unscaled"
    return None


@dataclass(frozen=True)
class CachePolicy:
    """One step-cache policy.

    decide(cfg, state, signal, must_compute) -> compute the body this step? (`must_compute`:
        the shared rules already require it; the policy still updates its bookkeeping).
    on_compute(state, signal): what the policy remembers of a computed step.
    fallback: the policy to use when the graph has no `signal` of this kind (None: it always has).
    note(cfg): a line for the explain report about the settings (None: nothing to say).
    example_options: options (dotted keys) that make the policy what its source describes beyond
        its name, e.g. DBCache's tail blocks; the benchmarks run each policy with them.
    """

    name: str
    signal: str                                                       # one of SIGNALS
    decide: Callable[[Any, BranchState, torch.Tensor, bool], bool]
    on_compute: Callable[[BranchState, torch.Tensor], None]
    description: str
    fallback: Optional[str] = None
    note: Callable[[Any], Optional[str]] = lambda cfg: None
    example_options: Mapping[str, Any] = field(default_factory=dict)


CACHE_POLICIES: dict[str, CachePolicy] = {p.name: p for p in (
    CachePolicy("fbcache", RESIDUAL, residual_change, residual_computed,
                "relative L1 change of the first block's residual (ParaAttention / diffusers)"),
    CachePolicy("dbcache", RESIDUAL, residual_change, residual_computed,
                "the same signal over the first `compute_first` blocks, with `compute_last` tail blocks, "
                "warm-up and a cap on consecutive cached steps (cache-dit)",
                example_options={"cache.compute_first": 2, "cache.compute_last": 1, "cache.max_cached_steps": 3}),
    CachePolicy("teacache", MODULATED_INPUT, teacache, teacache_computed,
                "accumulated, polynomially rescaled relative L1 change of the first block's modulated input "
                "(TeaCache)", fallback="fbcache", note=teacache_note),
)}


def extrapolate(history: list, step: int, order: int) -> list:
    """Residuals at `step` from the last computed ones: order 0 reuses the newest; 1 and 2
    extrapolate the polynomial through the newest order+1 points (TaylorSeer's finite-difference
    expansion in the step index)."""
    latest = {}
    for s, r in history:  # one point per step (the newest), in step order
        latest[s] = r
    points = sorted(latest.items())[-(order + 1):]
    if order == 0 or len(points) == 1:
        return points[-1][1]
    steps = [float(s) for s, _ in points]
    out = []
    for k in range(len(points[-1][1])):
        values = [r[k] for _, r in points]
        # Lagrange form of the interpolating polynomial, evaluated at `step`
        total = torch.zeros_like(values[-1])
        for j, (sj, vj) in enumerate(zip(steps, values)):
            weight = 1.0
            for m, sm in enumerate(steps):
                if m != j:
                    weight *= (step - sm) / (sj - sm)
            total = total + weight * vj
        out.append(total)
    return out


__all__ = ["BranchState", "CachePolicy", "CACHE_POLICIES", "RESIDUAL", "MODULATED_INPUT", "SIGNALS",
           "relative_l1", "residual_change", "residual_computed", "teacache", "teacache_computed", "extrapolate"]
