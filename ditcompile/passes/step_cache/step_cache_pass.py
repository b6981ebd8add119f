"""Step-cache pass: split the graph into head / body / tail so the body can be skipped per step.

Before (one graph):

    x = patch_embed(latents); temb = time_embed(t)
    x = blocks[0](x, temb) ... x = blocks[N-1](x, temb)
    out = proj_out(norm_out(x, temb))

After (three graphs and a runtime that decides per call, see runtime/step_cache.py; the split
is `split.py` beside this file):

    head: x0 = patch_embed(latents); temb = ...; x1 = blocks[0](x0)      -> x1, x0, temb
    body: x = blocks[1..N-1](x1, temb)                                   -> x      (skipped when
          the first block's residual x1 - x0 changed less than the threshold; then
          x = x1 + (x - x1) from the last computed step)
    tail: out = proj_out(norm_out(x, temb))

The pass only plans the split and hands the backend a runner factory; the attention rewrite
has already run, so each piece carries the rewritten attention ops.
"""
from __future__ import annotations

import dataclasses

import torch.fx as fx

from ...runtime.step_cache import StepCacheRunner
from ...step_cache_policies import CACHE_POLICIES, MODULATED_INPUT
from ..base import DitPass, PassContext, PassReport
from .split import SplitError, split_graph


class StepCachePass(DitPass):
    name = "step_cache"
    config_section = "cache"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassReport:
        report = self.report()
        cfg = self.config.cache
        analysis = ctx.analysis
        if analysis.timestep_input is None:
            report.notes.append("step cache off: no timestep input found (needed to count steps; a regionally "
                                "compiled block has none: the step cache needs the whole model in one compiled "
                                "graph)")
            return report
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        timestep_node = placeholders[analysis.timestep_input].name
        wants_modulated = CACHE_POLICIES[cfg.policy].signal == MODULATED_INPUT
        try:
            split = split_graph(gm, cfg.compute_first, cfg.compute_last, analysis.num_video_tokens, timestep_node,
                                cfg.teacache_signal if wants_modulated else "")
        except SplitError as err:
            report.notes.append(f"step cache off: {err}")
            return report
        policy = cfg.policy
        if wants_modulated and split.modulated_input is None:
            policy = CACHE_POLICIES[cfg.policy].fallback
            report.notes.append(f"{cfg.policy}: no timestep-modulated input found in the first block; "
                                f"using {policy} (signal: {CACHE_POLICIES[policy].signal}) instead")
        elif wants_modulated:
            report.notes.append(f"{cfg.policy} signal: {split.modulated_input}"
                                + (f" (output of {cfg.teacache_signal})" if cfg.teacache_signal else ""))
        note = CACHE_POLICIES[policy].note(cfg)
        if note:
            report.notes.append(note)
        effective = dataclasses.replace(cfg, policy=policy)
        report.notes.append(
            f"step cache {policy} (threshold {cfg.threshold}, warm-up {cfg.warmup_steps}, "
            f"taylor order {cfg.taylor_order}): {split.describe()}")
        ctx.runner_factory = lambda compile_piece: StepCacheRunner(split, effective, compile_piece,
                                                                   ctx.call_observer())
        return report


__all__ = ["StepCachePass"]
