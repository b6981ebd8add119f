"""Attention rewrite pass: each supported attention site becomes one `ditaccel::attention` call.

Before (diffusers' dispatch, q/k/v in [B, S, H, D]):

    q_t = q.permute(0, 2, 1, 3); k_t = ...; v_t = ...                 # [B, H, S, D]
    out = F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=None, dropout_p=0.0,
                                         is_causal=False, scale=None)
    out_t = out.permute(0, 2, 1, 3)                                    # [B, S, H, D]

After (reads [B, S, H, D] directly, writes [B, S, H, D]):

    out_t = torch.ops.ditaccel.attention(q, k, v, layout="bshd", scale=None,
                                         is_causal=False, plan='{"backend":"sdpa",...}')

Hand-written attention (`softmax(q @ k.transpose(-2, -1) * s) @ v`, or baddbmm/bmm on
[B*H, S, D]) becomes the same op with the matched scale (3-D operands get a unit head dim).

Every rewritten site gets a *dense* plan (`attention.backend`); the sparse and 8-bit passes
that follow change only that plan. An SDPA `attn_mask` travels to the op unchanged (its
`attn_mask` argument) and the plan names its kind (`mask="key_padding"` for [B|1, 1, 1, Skv],
else `"dense"`); masked sites stay dense and unquantized for now (the sparse and 8-bit passes
say so in the report). In a graph compiled for dynamic shapes, video self/joint
sites also receive the token grid's run-time sizes (`grid=[F, H, W]`, read from the patch
embedding's output with `size(d)`), so that a sparse plan can build its mask for each call. Sites the analysis marked unsupported, or that
`attention.skip` names, keep their original computation and get a KEPT decision with the reason.
"""
from __future__ import annotations

import operator
import re
from typing import Optional

import torch.fx as fx

from ..geometry import BSHD
from ..graph.fx_edit import add_node
from ..graph.fx_utils import erase_if_unused, example_value, is_seq_head_swap
from ..graph.sites import JOINT, SELF, AttentionSite, DynamicGrid
from ..ops import attention_op
from ..plans import AttentionPlan
from .base import KEPT, REWRITTEN, SITE_INDEX, DitPass, PassContext, PassReport, SiteDecision


class AttentionRewritePass(DitPass):
    name = "attention"
    config_section = "attention"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassReport:
        report = self.report()
        skip = [re.compile(p) for p in self.config.attention.skip]
        for site in ctx.analysis.attention:
            if not site.supported:
                report.decisions.append(SiteDecision(site.index, site.module_path, KEPT, reason=site.reason))
                continue
            if any(p.fullmatch(site.module_path) for p in skip):
                report.decisions.append(SiteDecision(site.index, site.module_path, KEPT,
                                                     reason="matched attention.skip"))
                continue
            plan = AttentionPlan(site_path=site.module_path, backend=self.config.attention.backend,
                                 mask=site.mask_kind, autotune=self.config.autotune.mode,
                                 autotune_dir=self.config.autotune.cache_dir)
            grid = ctx.analysis.dynamic_grid if site.kind in (SELF, JOINT) and site.tokens != "other" else None
            rewrite_site(gm.graph, site, plan, grid)
            report.decisions.append(SiteDecision(site.index, site.module_path, REWRITTEN, plan=plan.describe()))
        return report


def rewrite_site(graph: fx.Graph, site: AttentionSite, plan: AttentionPlan,
                 grid: Optional[DynamicGrid] = None) -> fx.Node:
    """Replace the site's computation with one `ditaccel::attention` node carrying `plan` (and the
    run-time sizes of a dynamic `grid`); the node's meta records the site's index (`SITE_INDEX`).
    Returns the new node."""
    old = site.output
    fake_mode = getattr(example_value(site.q), "fake_mode", None)  # Dynamo's mode for this graph
    with graph.inserting_before(old):
        q, k, v = site.q, site.k, site.v
        if site.folded_heads:  # [B*H, S, D] -> [B*H, 1, S, D]
            q, k, v = (add_node(graph, old, "call_method", "unsqueeze", (t, 1), fake_mode) for t in (q, k, v))
        args = (q, k, v, site.layout, site.scale, site.is_causal, plan.to_json())
        if grid is not None:  # [F, H, W] sizes of the patch embedding's output, read at run time
            args += (_grid_sizes(graph, old, grid, fake_mode),)
        if site.mask is not None:  # SDPA's attn_mask as the model built it (MASK_ARG)
            args += (() if grid is not None else (None,)) + (site.mask,)
        op_node = add_node(graph, old, "call_function", attention_op, args, fake_mode)
        op_node.meta[SITE_INDEX] = site.index
        new = op_node
        if site.folded_heads:
            new = add_node(graph, old, "call_method", "squeeze", (new, 1), fake_mode)
    if site.layout == BSHD and site.output_layout != BSHD:
        _replace_bhsd_output(graph, old, new, fake_mode)
    else:
        old.replace_all_uses_with(new)
    erase_if_unused(graph, [old, *site.replaced, *old.all_input_nodes])
    return op_node


def _replace_bhsd_output(graph: fx.Graph, old: fx.Node, new: fx.Node, fake_mode) -> None:
    """`old` was [B,H,S,D]; `new` is [B,S,H,D]. Users that permuted back now read `new`."""
    bhsd_view: Optional[fx.Node] = None
    for user in list(old.users):
        if is_seq_head_swap(user):
            user.replace_all_uses_with(new)
            graph.erase_node(user)
            continue
        if bhsd_view is None:
            with graph.inserting_after(new):
                bhsd_view = add_node(graph, old, "call_method", "transpose", (new, 1, 2), fake_mode)
        user.replace_input_with(old, bhsd_view)


def _grid_sizes(graph: fx.Graph, like: fx.Node, grid: DynamicGrid, fake_mode) -> list:
    """The run-time [F, H, W] of a dynamic grid as size nodes (1 for a single frame; the frames
    of a per-frame patch embedding = its output's dim 0 // the main input's batch)."""
    sizes: list = []
    for axis, d in enumerate(grid.dims):
        if d is None:
            sizes.append(1)
            continue
        size = add_node(graph, like, "call_method", "size", (grid.node, d), fake_mode)
        if axis == 0 and grid.frames_from is not None:
            batch = add_node(graph, like, "call_method", "size", (grid.frames_from, 0), fake_mode)
            size = add_node(graph, like, "call_function", operator.floordiv, (size, batch), fake_mode)
        sizes.append(size)
    return sizes
