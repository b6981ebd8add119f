"""Step-cache runtime: per call, run the head, decide, run the body or reuse its residual, run the tail.

    head(inputs) -> streams entering the body, signal
    if should_compute(signal):   body(...) -> streams; residual_k = out_k - in_k (stored)
    else:                        out_k = in_k + residual_k   (or TaylorSeer's extrapolation)
    tail(...) -> model outputs

The decision is `decide()`: one small function of the branch state and the signal, outside
every compiled region. State is per model instance (runtime registry) and per CFG branch (the
k-th call with the same timestep), reset when a new generation starts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..config import CacheConfig
from ..graph.split import GraphSplit
from .state import GenerationState, StepInfo, pass_stats, step_scope
from .wrapper import StepObserver

log = logging.getLogger("ditcompile")


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
    decisions: list = field(default_factory=list)     # True = computed, per call in order


class StepCacheState(GenerationState):
    """Per-CFG-branch `BranchState`s of the current generation (`data`: branch -> BranchState).

    `body_share`: the body's fraction of the trunk's blocks, so a reused call saves about that
    fraction of a call's compute (embeddings and the output projection are small in DiTs).
    """

    def __init__(self, body_share: float = 0.0) -> None:
        super().__init__()
        self.body_share = body_share

    def branch(self, info: StepInfo) -> BranchState:
        return self.entry(info.branch, info.generation, BranchState)

    def summary(self) -> dict:
        return {b: {"computed": s.computed, "reused": s.reused, "pattern": list(s.decisions),
                    "estimated_saving": round(self.body_share * s.reused / max(1, s.computed + s.reused), 4)}
                for b, s in sorted(self.data.items())}


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous| (as diffusers' and ParaAttention's FBCache)."""
    diff = (current.float() - previous.float()).abs().mean()
    return float((diff / previous.float().abs().mean()).item())


def decide(cfg: CacheConfig, state: BranchState, signal: torch.Tensor, step: int) -> bool:
    """True: run the body this step. Updates the signal bookkeeping of `state`."""
    if cfg.policy == "teacache":
        previous, state.previous_signal = state.previous_signal, signal
        if previous is None or step < cfg.warmup_steps or not state.history:
            state.accumulated = 0.0
            return True
        change = relative_l1(signal, previous)
        if cfg.teacache_coefficients:
            change = sum(c * change ** p for p, c in enumerate(reversed(cfg.teacache_coefficients)))
        state.accumulated += change
        compute = state.accumulated >= cfg.threshold
    else:  # fbcache / dbcache: compare with the signal of the last computed step
        if state.reference_signal is None or step < cfg.warmup_steps or not state.history:
            compute = True
        else:
            compute = relative_l1(signal, state.reference_signal) > cfg.threshold
    if not compute and cfg.max_cached_steps and state.consecutive_cached >= cfg.max_cached_steps:
        compute = True
    if compute:
        state.accumulated = 0.0
        state.reference_signal = signal
    return compute


def extrapolate(history: list, step: int, order: int) -> list:
    """Residuals at `step` from the last computed ones: order 0 reuses the newest; 1 and 2
    extrapolate the polynomial through the newest order+1 points (TaylorSeer's finite-difference
    expansion in the step index)."""
    points = history[-(order + 1):]
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


class StepCacheRunner:
    """The callable handed to Dynamo for a graph split into head, body and tail."""

    def __init__(self, split: GraphSplit, cfg: CacheConfig, compile_piece: Callable,
                 timestep_index: Optional[int], anchor_index: Optional[int]):
        self.split, self.cfg = split, cfg
        self.head = compile_piece(split.head.gm)
        self.body = compile_piece(split.body.gm)
        self.tail = compile_piece(split.tail.gm)
        self.observer = StepObserver(timestep_index, anchor_index)
        blocks = len(split.head_blocks) + len(split.body_blocks) + len(split.tail_blocks)
        self.body_share = len(split.body_blocks) / blocks

    def __call__(self, *args: Any) -> Any:
        runtime, info = self.observer.observe(args)
        state: StepCacheState = runtime.extras.setdefault("step_cache", StepCacheState(self.body_share))
        if info.generation != state.generation and state.data:
            log.info("ditaccel step cache: generation %d: %s", state.generation, _format_stats(state.summary()))
        branch = state.branch(info)
        split = self.split
        env = dict(zip(split.placeholders, args))
        with step_scope(info, runtime):
            env.update(zip(split.head.outputs, self.head(*[env[k] for k in split.head.inputs])))
            if self.cfg.policy == "teacache" and split.modulated_input is not None:
                signal = env[split.modulated_input]
            else:
                signal = env[split.stream_after_head_blocks] - env[split.stream_before_blocks]
            compute = decide(self.cfg, branch, signal, info.step)
            if compute:
                env.update(zip(split.body.outputs, self.body(*[env[k] for k in split.body.inputs])))
                residuals = [env[o] - env[i] for i, o in split.streams]
                branch.history = (branch.history + [(info.step, residuals)])[-(self.cfg.taylor_order + 1):]
                branch.computed += 1
                branch.consecutive_cached = 0
            else:
                residuals = extrapolate(branch.history, info.step, self.cfg.taylor_order)
                for (i, o), r in zip(split.streams, residuals):
                    env[o] = env[i] + r
                branch.reused += 1
                branch.consecutive_cached += 1
            branch.decisions.append(compute)
            return self.tail(*[env[k] for k in split.tail.inputs])


def _format_stats(stats: dict) -> str:
    return "; ".join(f"branch {b}: {s['computed']} computed, {s['reused']} reused, "
                     f"~{100 * s['estimated_saving']:.0f}% of the transformer's compute saved"
                     for b, s in stats.items())


def cache_report(model: Any) -> str:
    """One line per CFG branch of the current generation (and a count of finished ones)."""
    lines = []
    for state in cache_stats(model):
        if state["current"]:
            lines.append("current generation: " + _format_stats(state["current"]))
        for i, finished in enumerate(state["finished"]):
            lines.append(f"finished generation {i}: " + _format_stats(finished))
    return "\n".join(lines) or "no step-cache state (the model has not run through a cached ditaccel graph)"


def cache_stats(model: Any) -> list[dict]:
    """Per runtime state of `model`: the current generation's computed/reused steps per branch
    (with the per-call decision pattern) and the summaries of finished generations."""
    return pass_stats(model, "step_cache")
