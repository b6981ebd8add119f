"""Sparse-attention planning pass: video self/joint attention gets a sparse plan.

Before (from the attention pass; dense plan):

    out = ditaccel.attention(q, k, v, "bshd", None, False, '{"backend":"sdpa","sparse":null,...}')
    # q, k, v: [B, S, H, D], S = F*H*W video tokens (+ T text tokens for joint attention)

After (same node, only the plan argument changes):

    out = ditaccel.attention(q, k, v, "bshd", None, False,
                             '{"backend":"triton","sparse":{"policy":"radial","grid":[F,H,W],...}}')

The spec carries what the executor needs at run time: the policy and its parameters (from the
`[sparse.<policy>]` table), the token grid and text segment, the block size, the dense warm-up
steps and the fidelity guard. A site that stays dense gets a decision saying why (cross or
factorized attention, unknown grid, dense block, text length varying at run time, head dim over
the kernel's limit, a pattern that would leave a query attending no key); a sparse site's note
gives its block density (data-independent policies).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch.fx as fx

from ..config import ConfigError, DitConfig, SparseConfig
from ..graph.sites import JOINT, SELF, AttentionSite, GraphAnalysis
from ..kernels.attention.flash_fwd import MAX_HEAD_DIM
from ..masks import PatternInvariantError, get_policy, params_json
from ..plans import SPARSE_MASK_NOTE, SparseSpec
from ..ops.attention import GRID_ARG
from .base import PLANNED, DitPass, PassContext, PassReport, SiteDecision, attention_nodes, set_plan


class SparseAttentionPass(DitPass):
    name = "sparse"
    config_section = "sparse"

    @classmethod
    def enabled(cls, config: DitConfig) -> bool:
        return config.attention.enabled and config.sparse.enabled

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassReport:
        report = self.report()
        cfg = self.config.sparse
        for node, index, plan in attention_nodes(gm):
            site = ctx.analysis.site(index)
            grid_args = len(node.args) > GRID_ARG and node.args[GRID_ARG] is not None
            why_not = sparse_ineligible(site, ctx.analysis, cfg, grid_args)
            if why_not is not None:
                report.decisions.append(SiteDecision(index, site.module_path, PLANNED, plan=plan.describe(),
                                                     reason=f"dense: {why_not}"))
                continue
            sparse_plan = dataclasses.replace(plan, backend="triton", sparse=sparse_spec(site, ctx.analysis, cfg))
            try:
                density = plan_density(sparse_plan.sparse)
            except PatternInvariantError as err:  # the pattern would leave queries attending nothing
                report.decisions.append(SiteDecision(index, site.module_path, PLANNED, plan=plan.describe(),
                                                     reason=f"dense: no valid sparse pattern ({err})"))
                continue
            except ValueError as err:  # the policy cannot build a pattern for these settings
                raise ConfigError(f"sparse.{cfg.policy} at {site.module_path}: {err}") from err
            plan = sparse_plan
            set_plan(node, plan)
            if from_parent_call(ctx.analysis):
                unknown = ("step, token grid and block from the model call at run time (needs "
                           "ditcompile.track_steps(model); dense without it)")
            elif plan.sparse.dynamic_grid:
                unknown = "density known at run time (dynamic grid)"
            else:
                unknown = "density data-dependent"
            note = f"density {density:.3f}" if density is not None else unknown
            report.decisions.append(SiteDecision(index, site.module_path, PLANNED, plan=plan.describe(),
                                                 reason=f"{note}; {SPARSE_MASK_NOTE[plan.mask]}" if plan.mask != "none"
                                                 else note))
        return report


def sparse_ineligible(site: AttentionSite, analysis: GraphAnalysis, cfg: SparseConfig,
                      grid_args: bool = False) -> Optional[str]:
    """Why a site keeps dense attention under an enabled sparse config (None: it goes sparse).
    `grid_args`: the site's op receives the run-time grid (a dynamic-shape graph)."""
    grid, dynamic = analysis.grid, analysis.dynamic_grid
    if site.kind not in (SELF, JOINT) or site.tokens not in ("video", "video+text"):
        return f"{site.kind} attention over {site.tokens} tokens (sparse plans cover video self/joint attention)"
    if grid is None and not (dynamic is not None and grid_args) and not from_parent_call(analysis):
        return "token grid unknown (set graph.token_grid)"
    if site.is_causal:
        return "causal attention"
    if site.block_index is not None and site.block_index in cfg.dense_blocks:
        return f"block {site.block_index} is in sparse.dense_blocks"
    text = site.text.length if site.text is not None else 0
    if site.text is not None and site.text.length is None:
        return "text length varies at run time"
    if grid is None:  # dynamic: sizes known at run time; the op checks the grid against q's length
        if cfg.min_tokens:
            return f"sparse.min_tokens={cfg.min_tokens} needs a static token grid (this graph has dynamic shapes)"
    elif grid.num_tokens < cfg.min_tokens:
        return f"{grid.num_tokens} video tokens < sparse.min_tokens={cfg.min_tokens}"
    elif site.q_len != grid.num_tokens + text:
        return f"sequence length {site.q_len_expr} is not the grid's {grid.num_tokens} tokens + {text} text"
    if site.head_dim is not None and site.head_dim > MAX_HEAD_DIM:
        return f"head dim {site.head_dim} > {MAX_HEAD_DIM} (kernel limit)"
    return None


def from_parent_call(analysis: GraphAnalysis) -> bool:
    """True for a graph that takes its step and token grid from the enclosing model call at run
    time: no timestep input and no latents input (a regionally compiled block, followed by
    `ditcompile.track_steps(model)`; without it the step is unknown and the site runs dense)."""
    return analysis.timestep_input is None and analysis.dynamic_grid is None and analysis.grid is None


def sparse_spec(site: AttentionSite, analysis: GraphAnalysis, cfg: SparseConfig) -> SparseSpec:
    """The site's sparse spec under `cfg` (an eligible site: see `sparse_ineligible`); without a
    static grid, the grid is read at run time (`dynamic_grid`)."""
    grid = analysis.grid
    try:
        return SparseSpec(
            policy=cfg.policy, params_json=params_json(cfg.params_for(cfg.policy)),
            grid=grid.dims if grid is not None else (), dynamic_grid=grid is None,
            text_position=site.text.position if site.text is not None else "",
            text_length=site.text.length if site.text is not None else 0,
            block_size=cfg.block_size, dense_steps=cfg.dense_steps, guard_every=cfg.guard_every,
            guard_budget=cfg.guard_budget, guard_rows=cfg.guard_rows,
            dense_blocks=cfg.dense_blocks if site.block_index is None and from_parent_call(analysis) else (),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def plan_density(spec: SparseSpec) -> Optional[float]:
    """Block density of a data-independent spec (patterns built on the CPU, cached); None when
    the policy chooses blocks from the data or the grid is known only at run time."""
    policy = get_policy(spec.policy)
    if policy.data_dependent or spec.dynamic_grid:
        return None
    return policy.static_choice(spec.token_layout, spec.block_size, spec.policy_params, "cpu").density


__all__ = ["SparseAttentionPass", "sparse_ineligible", "from_parent_call", "sparse_spec", "plan_density"]
