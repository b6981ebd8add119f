"""8-bit attention planning pass: every `ditaccel::attention` plan gets `quant="int8"`.

Before:  out = ditaccel.attention(q, k, v, layout, scale, causal, '{"backend":"sdpa","quant":"none",...}')
After:   out = ditaccel.attention(q, k, v, layout, scale, causal, '{"backend":"triton","quant":"int8",...}')
         # q, k, v unchanged ([B, H, S, D] or [B, S, H, D], 16/32-bit); the op quantizes inside:
         # INT8 Q/K with per-block scales and K smoothing, FP8 P.V on sm89+ (SageAttention's recipe)

Dense and sparse plans alike (the block-sparse kernel has the same 8-bit path). Inputs the
kernel cannot run (causal, head dim > 128, ...) fall back to SDPA at run time, logged once.
"""
from __future__ import annotations

import dataclasses

import torch.fx as fx

from ..config import DitConfig
from ..plans import DENSE_MASK_NOTE
from .base import PLANNED, DitPass, PassContext, PassReport, SiteDecision, attention_nodes, set_plan


class AttentionQuantPass(DitPass):
    name = "attention_quant"
    config_section = "attention"

    @classmethod
    def enabled(cls, config: DitConfig) -> bool:
        return config.attention.enabled and config.attention.quant != "none"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassReport:
        report = self.report()
        for node, index, plan in attention_nodes(gm):
            plan = dataclasses.replace(plan, backend="triton", quant=self.config.attention.quant)
            set_plan(node, plan)
            report.decisions.append(SiteDecision(index, plan.site_path, PLANNED, plan=plan.describe(),
                                                 reason=DENSE_MASK_NOTE if plan.mask == "dense" else ""))
        return report


__all__ = ["AttentionQuantPass"]
