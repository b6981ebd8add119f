"""Step-cache runtime: per call, run the head, decide, run the body or reuse its residual, run the tail.

    head(inputs) -> streams entering the body, signal
    if decide(...):   body(...) -> streams; residual_k = out_k - in_k (stored)
    else:             out_k = in_k + residual_k   (or TaylorSeer's extrapolation)
    tail(...) -> model outputs

The decision is the policy's (`step_cache_policies.CACHE_POLICIES`), made outside every compiled
region. State belongs to this runner (`CallObserver`: per model instance and caller), and within
it to one CFG branch and one input shape (a call at a new resolution starts fresh state); it
restarts with each generation. When the step is unknown every call computes the body (the safe
path). The step cache is for inference: a call that autograd records (grad mode on and an input
or parameter requiring grad) also computes the body, stores nothing and warns once, so
gradients are exact and no call's graph is kept alive by the cache; such a call runs the pieces
without Inductor (the backward of Inductor-compiled pieces chained by hand was wrong on a second
`backward(retain_graph=True)` on torch 2.13). The runner receives the pieces as plain data (`GraphSplit`, built by
`passes.step_cache.split`); it never imports the passes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from ..config import CacheConfig
from ..step_cache_policies import CACHE_POLICIES, MODULATED_INPUT, BranchState, extrapolate
from .cache_state import StepCacheState, format_cache_stats
from .state import step_scope
from .steps import warn_once
from .wrapper import CallObserver

log = logging.getLogger("ditcompile")

_AUTOGRAD_WARNED: set = set()  # frames (or runners) already told that autograd turns caching off (one per frame)


@dataclass
class Piece:
    gm: fx.GraphModule
    inputs: list[str]   # names of the original nodes this piece reads (in its placeholder order)
    outputs: list[str]  # names of the original nodes it returns


@dataclass
class GraphSplit:
    """A graph cut into head, body and tail at block boundaries (see passes/step_cache/split.py)."""

    placeholders: list[str]
    head: Piece
    body: Piece
    tail: Piece
    streams: list[tuple[str, str]]   # (body input, body output) pairs: output = input + residual
    stream_before_blocks: str        # main stream entering the first block ...
    stream_after_head_blocks: str    # ... and leaving the head's last block: their difference is
                                     # the residual First-Block Cache / DBCache compare
    modulated_input: Optional[str]   # first block's timestep-modulated input (TeaCache), if found
    head_blocks: list[str] = field(default_factory=list)
    body_blocks: list[str] = field(default_factory=list)
    tail_blocks: list[str] = field(default_factory=list)

    def describe(self) -> str:
        def rng(blocks: list[str]) -> str:
            return f"{blocks[0]}..{blocks[-1]}" if len(blocks) > 1 else (blocks[0] if blocks else "-")
        return (f"head {rng(self.head_blocks)}, body {rng(self.body_blocks)} ({len(self.body_blocks)} blocks), "
                f"tail {rng(self.tail_blocks)}; {len(self.streams)} cached stream(s)")


def decide(cfg: CacheConfig, state: BranchState, signal: torch.Tensor, step: int) -> bool:
    """True: run the body this step. The rules every policy shares -- the warm-up steps and a
    branch's first call always compute, at most `cfg.max_cached_steps` consecutive reuses --
    around the policy's own decision; a computed step is passed to the policy's `on_compute`."""
    policy = CACHE_POLICIES[cfg.policy]
    must_compute = step < cfg.warmup_steps or not state.history
    compute = policy.decide(cfg, state, signal, must_compute)
    if not compute and cfg.max_cached_steps and state.consecutive_cached >= cfg.max_cached_steps:
        compute = True
    if compute:
        policy.on_compute(state, signal)
    return compute


class StepCacheRunner:
    """The callable handed to Dynamo for a graph split into head, body and tail."""

    def __init__(self, split: GraphSplit, cfg: CacheConfig, compile_piece: Callable, observer: CallObserver):
        self.split, self.cfg = split, cfg
        self.head = compile_piece(split.head.gm)
        self.body = compile_piece(split.body.gm)
        self.tail = compile_piece(split.tail.gm)
        self.observer = observer
        blocks = len(split.head_blocks) + len(split.body_blocks) + len(split.tail_blocks)
        self.body_share = len(split.body_blocks) / blocks
        self.signal = CACHE_POLICIES[cfg.policy].signal

    def __call__(self, *args: Any) -> Any:
        runtime, info, shape = self.observer.observe(args)
        state = runtime.step_cache
        state.body_share = state.body_share or self.body_share
        if info.generation != state.generation and state.data and state.generation >= 0 and log.isEnabledFor(
                logging.INFO):
            log.info("ditaccel step cache: generation %d: %s", state.generation, format_cache_stats(state.summary()))
        branch = state.branch(info, shape)
        split = self.split
        env = dict(zip(split.placeholders, args))
        # autograd recording: the pieces run as they are (not compiled): Inductor's backward of
        # chained pieces gave wrong gradients on a second backward(retain_graph=True) (torch 2.13)
        recording = _autograd_recording(args)
        head, body, tail = ((split.head.gm, split.body.gm, split.tail.gm) if recording
                            else (self.head, self.body, self.tail))
        with step_scope(info, runtime):
            env.update(zip(split.head.outputs, head(*[env[k] for k in split.head.inputs])))
            if self.signal == MODULATED_INPUT and split.modulated_input is not None:
                signal = env[split.modulated_input]
            else:
                signal = env[split.stream_after_head_blocks] - env[split.stream_before_blocks]
            # unknown step, or autograd recording: the safe path computes every call and keeps no
            # history (stored residuals would hold this call's autograd graph)
            if recording:
                self._warn_autograd()
            history = list(branch.history)  # this call's view, whatever a reset elsewhere does
            compute = (info.step is None or recording or decide(self.cfg, branch, signal, info.step)
                       or not history)
            if compute:
                env.update(zip(split.body.outputs, body(*[env[k] for k in split.body.inputs])))
                if info.step is not None and not recording:
                    residuals = [env[o] - env[i] for i, o in split.streams]
                    # a second evaluation of a step (Heun) replaces that step's residuals
                    kept = [(s, r) for s, r in history if s != info.step]
                    branch.history = (kept + [(info.step, residuals)])[-(self.cfg.taylor_order + 1):]
                branch.consecutive_cached = 0
            else:
                residuals = extrapolate(history, info.step, self.cfg.taylor_order)
                for (i, o), r in zip(split.streams, residuals):
                    env[o] = env[i] + r
                branch.consecutive_cached += 1
            StepCacheState.record(branch, compute)
            outputs = tail(*[env[k] for k in split.tail.inputs])
        self.observer.record_output(runtime, info, outputs)
        return outputs

    def _warn_autograd(self) -> None:
        frame = self.observer.frame if self.observer.frame is not None else id(self)
        warn_once(_AUTOGRAD_WARNED, f"frame {frame}", "ditaccel step cache: autograd is recording this call (grad "
                  "mode on and an input or parameter requires grad), so every step is computed, uncompiled, and "
                  "gradients are exact; the step cache is for inference: run under torch.no_grad() or "
                  "torch.inference_mode()")


def _autograd_recording(args: tuple) -> bool:
    """True when this call builds an autograd graph: grad mode on and a tensor input (the compiled
    graph's inputs include the parameters) requires grad."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


__all__ = ["GraphSplit", "Piece", "StepCacheRunner", "decide"]
