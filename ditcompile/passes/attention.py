"""Attention rewrite pass: each supported attention site becomes one `ditaccel::attention` call.

Before (diffusers' dispatch, q/k/v in [B, S, H, D]):

    q_t = q.permute(0, 2, 1, 3); k_t = ...; v_t = ...                 # [B, H, S, D]
    out = F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=None, dropout_p=0.0,
                                         is_causal=False, scale=None)
    out_t = out.permute(0, 2, 1, 3)                                    # [B, S, H, D]

After (reads [B, S, H, D] directly, writes [B, S, H, D]):

    out_t = torch.ops.ditaccel.attention(q, k, v, layout="bshd", scale=None,
                                         is_causal=False, plan='{"method":"dense",...}')

Hand-written attention (`softmax(q @ k.transpose(-2, -1) * s) @ v`, or baddbmm/bmm on
[B*H, S, D]) becomes the same op with the matched scale (3-D operands get a unit head dim).

The plan is built here, in one place, so later planners (sparse masks, 8-bit attention) only
add fields to it. Sites the analysis marked unsupported, or that `attention.skip` names, keep
their original computation and get a KEPT decision with the reason.
"""
from __future__ import annotations

import json
import re
from typing import Optional

import torch.fx as fx

from ..graph.fx_utils import erase_if_unused, example_value, is_seq_head_swap
from ..graph.sites import BSHD, JOINT, SELF, AttentionSite, GraphAnalysis
from ..kernels.ops import attention_op
from ..config import ConfigError
from ..plan import AttentionPlan
from ..runtime.sparse import check_params, plan_density
from .base import KEPT, REWRITTEN, DitPass, PassContext, PassReport, SiteDecision


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
            plan, note = self.plan_for(site, ctx.analysis)
            ctx.needs_step |= plan.method == "sparse"
            _rewrite(gm.graph, site, plan)
            report.decisions.append(SiteDecision(site.index, site.module_path, REWRITTEN, plan=plan.describe(),
                                                 reason=note))
        return report

    def plan_for(self, site: AttentionSite, analysis: GraphAnalysis) -> tuple[AttentionPlan, Optional[str]]:
        """The site's plan and a note for the report (why it is not sparse, or its density)."""
        cfg = self.config.attention
        backend = "triton" if cfg.quant != "none" else cfg.backend
        dense = AttentionPlan(method="dense", backend=backend, quant=cfg.quant, site=site.module_path)
        if not self.config.sparse.enabled:
            return dense, None
        why_not = sparse_ineligible(site, analysis, self.config.sparse)
        if why_not is not None:
            return dense, f"dense: {why_not}"
        plan = sparse_plan(site, analysis, self.config)
        try:
            check_params(plan.policy, plan.policy_params)
            density = plan_density(plan)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        return plan, (f"density {density:.3f}" if density is not None else "density data-dependent")


def sparse_ineligible(site: AttentionSite, analysis: GraphAnalysis, cfg) -> Optional[str]:
    """Why a site keeps dense attention under an enabled sparse config (None: it goes sparse)."""
    grid = analysis.grid
    if site.kind not in (SELF, JOINT) or site.tokens not in ("video", "video+text"):
        return f"{site.kind} attention over {site.tokens} tokens (sparse plans cover video self/joint attention)"
    if grid is None:
        return "token grid unknown (set graph.token_grid)"
    if site.is_causal:
        return "causal attention"
    if site.block_index is not None and site.block_index in cfg.dense_blocks:
        return f"block {site.block_index} is in sparse.dense_blocks"
    if grid.num_tokens < cfg.min_tokens:
        return f"{grid.num_tokens} video tokens < sparse.min_tokens={cfg.min_tokens}"
    text = site.text.length if site.text is not None else 0
    if site.text is not None and site.text.length is None:
        return "text length varies at run time"
    if site.q_len != grid.num_tokens + text:
        return f"sequence length {site.q_len_expr} is not the grid's {grid.num_tokens} tokens + {text} text"
    if site.head_dim is not None and site.head_dim > 128:
        return f"head dim {site.head_dim} > 128 (kernel limit)"
    return None


def sparse_plan(site: AttentionSite, analysis: GraphAnalysis, config) -> AttentionPlan:
    cfg, grid = config.sparse, analysis.grid
    return AttentionPlan(
        method="sparse", backend="triton", quant=config.attention.quant, site=site.module_path,
        policy=cfg.policy, params=json.dumps(cfg.params_for(cfg.policy), sort_keys=True),
        grid=(grid.frames, grid.height, grid.width),
        text_position=site.text.position if site.text is not None else "",
        text_length=site.text.length if site.text is not None else 0,
        block_size=cfg.block_size, dense_steps=cfg.dense_steps, guard_every=cfg.guard_every,
        guard_budget=cfg.guard_budget, guard_rows=cfg.guard_rows,
    )


def _rewrite(graph: fx.Graph, site: AttentionSite, plan: AttentionPlan) -> None:
    old = site.output
    fake_mode = getattr(example_value(site.q), "fake_mode", None)  # Dynamo's mode for this graph
    with graph.inserting_before(old):
        q, k, v = site.q, site.k, site.v
        if site.folded_heads:  # [B*H, S, D] -> [B*H, 1, S, D]
            q, k, v = (_add_node(graph, old, "call_method", "unsqueeze", (t, 1), fake_mode) for t in (q, k, v))
        new = _add_node(graph, old, "call_function", attention_op,
                        (q, k, v, site.layout, site.scale, site.is_causal, plan.to_json()), fake_mode)
        if site.folded_heads:
            new = _add_node(graph, old, "call_method", "squeeze", (new, 1), fake_mode)
    if site.layout == BSHD:
        _replace_bhsd_output(graph, old, new, fake_mode)
    else:
        old.replace_all_uses_with(new)
    erase_if_unused(graph, [old, *site.replaced, *old.all_input_nodes])
    site.output = new


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
                bhsd_view = _add_node(graph, old, "call_method", "transpose", (new, 1, 2), fake_mode)
        user.replace_input_with(old, bhsd_view)


def _add_node(graph: fx.Graph, like: fx.Node, op: str, target, args: tuple, fake_mode) -> fx.Node:
    """A new node with `like`'s module stack (later passes read it) and a fake example value."""
    node = graph.create_node(op, target, args)
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    if fake_mode is not None:
        values = [example_value(a) if isinstance(a, fx.Node) else a for a in args]
        if all(v is not None for v in values):
            with fake_mode:
                if op == "call_method":
                    node.meta["example_value"] = getattr(values[0], target)(*values[1:])
                else:
                    node.meta["example_value"] = target(*values)
    return node
