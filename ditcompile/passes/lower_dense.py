"""Dense lowering: a site whose final plan is plain dense SDPA becomes aten SDPA again.

A dense SDPA plan computes exactly what `torch.nn.functional.scaled_dot_product_attention`
computes. Left as the opaque `ditaccel::attention`, it would cost a Python call per attention
call (the custom-op dispatch and the plan's run-time choice: about 100 us on a CPU) and hide the
attention from Inductor, which handles aten SDPA itself (its own kernel choice, the layouts of
its inputs and output, CUDA graphs). So after every plan is final, this pass turns each such
site back into SDPA (runs before the step cache's split, which then sees the lowered graph).

Before (layout "bshd", q/k/v [B, S, H, D]):

    out = torch.ops.ditaccel.attention(q, k, v, "bshd", scale, is_causal, '{"backend":"sdpa",...}',
                                       grid?, attn_mask?)                       # [B, S, H, D]

After:

    q_t = q.transpose(1, 2); k_t = k.transpose(1, 2); v_t = v.transpose(1, 2)  # [B, H, S, D] views
    o = F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask, is_causal=is_causal, scale=scale)
    out = o.transpose(1, 2)                                                     # [B, S, H, D] view

(layout "bhsd": SDPA on q/k/v as they are; a user of the op that swapped back to [B, H, S, D]
reads `o` directly). For a site Dynamo traced as SDPA this is the graph the model had: Inductor
compiles what plain `torch.compile` compiles. A hand-written site (matmul-softmax-matmul) gains
SDPA's fused kernel.

Sites that keep the op (the report says why): sparse, 8-bit or `attention.backend="triton"`
plans (they need our kernels); a dense plan whose autotune setup may choose another kernel than
SDPA at run time (`ops.tunables.sdpa_override`: a cached winner such as `sdpa.cudnn` or a
Triton config, `autotune.mode="online"`, `ditaccel autotune` recording the calls). Option
`attention.lower_dense=false` keeps the op everywhere (debugging, or measuring its cost).
"""
from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F

from ..geometry import BSHD
from ..graph.fx_edit import add_node
from ..graph.fx_utils import erase_if_unused, example_value, is_seq_head_swap
from ..ops.attention import GRID_ARG, MASK_ARG
from ..ops.tunables import SdpaCheck, sdpa_override
from ..plans import AttentionPlan
from .base import LOWERED, PLANNED, DitPass, PassContext, PassReport, SiteDecision, attention_nodes

LOWERED_KERNEL = "aten SDPA (lowered)"
"""What the explain report's kernel column says for a lowered site."""
LOWERED_KERNEL_CACHED = "aten SDPA (lowered; cache: sdpa)"
"""... and for one whose tuning-cache entry names SDPA the winner."""


def lowerable(plan: AttentionPlan) -> bool:
    """The plan computes exactly SDPA: dense, not 8-bit, SDPA backend (with or without a mask)."""
    return plan.sparse is None and plan.quant == "none" and plan.backend == "sdpa"


class DenseLoweringPass(DitPass):
    name = "lower_dense"
    config_section = "attention"

    @classmethod
    def enabled(cls, config) -> bool:
        return config.attention.enabled and config.attention.lower_dense

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassReport:
        report = self.report()
        site_paths = {s.index: s.module_path for s in ctx.analysis.attention}
        for node, index, plan in attention_nodes(gm):
            if not lowerable(plan):
                continue
            q, k, v, layout, _scale, is_causal = node.args[:6]
            values = [example_value(t) for t in (q, k, v)]
            check = SdpaCheck(None) if None in values else sdpa_override(*values, layout, is_causal, plan.mask, plan)
            path = site_paths.get(index, plan.site_path)
            if check.keep is not None:
                report.decisions.append(SiteDecision(index, path, PLANNED, reason=f"kept as ditaccel::attention: {check.keep}"))
                continue
            lower_node(gm.graph, node)
            report.decisions.append(SiteDecision(index, path, LOWERED, kernel_from_cache=check.cached,
                                                 kernel=LOWERED_KERNEL_CACHED if check.cached else LOWERED_KERNEL))
        return report


def lower_node(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """Replace one dense-SDPA `ditaccel::attention` node by aten SDPA in the node's layout (see
    the module docstring); returns the node that now produces the op's output."""
    q, k, v, layout, scale, is_causal = node.args[:6]
    attn_mask = node.args[MASK_ARG] if len(node.args) > MASK_ARG else None
    grid = node.args[GRID_ARG] if len(node.args) > GRID_ARG else None
    fake_mode = getattr(example_value(q), "fake_mode", None)
    bshd = layout == BSHD
    with graph.inserting_before(node):
        if bshd:  # [B, S, H, D] -> [B, H, S, D] views, as diffusers' SDPA dispatch has them
            q, k, v = (add_node(graph, node, "call_method", "transpose", (t, 1, 2), fake_mode) for t in (q, k, v))
        sdpa = add_node(graph, node, "call_function", F.scaled_dot_product_attention, (q, k, v, attn_mask),
                        fake_mode, {"is_causal": is_causal, "scale": scale})
        out = add_node(graph, node, "call_method", "transpose", (sdpa, 1, 2), fake_mode) if bshd else sdpa
    for user in list(node.users):
        if bshd and is_seq_head_swap(user):  # it wanted [B, H, S, D]: SDPA's own output
            user.replace_all_uses_with(sdpa)
            graph.erase_node(user)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    erase_if_unused(graph, list(grid) if isinstance(grid, (list, tuple)) else [])  # the grid's size() reads
    if bshd and not out.users:
        graph.erase_node(out)
    return out
