"""`ditaccel::attention`: the custom op every rewritten attention site calls.

    ditaccel::attention(Tensor q, Tensor k, Tensor v, str layout, float? scale,
                        bool is_causal, str plan, SymInt[]? grid=None,
                        Tensor? attn_mask=None) -> Tensor

q, k, v are [B, H, S, D] (layout "bhsd") or [B, S, H, D] (layout "bshd"); the output has q's
layout and is contiguous in it (the fake implementation promises exactly those strides, which
Inductor relies on). `plan` is an `AttentionPlan` as JSON (`plans`); `grid` is the run-time
(frames, height, width) of the video tokens for sparse plans of dynamic-shape graphs; `attn_mask`
is SDPA's mask as the model built it (bool: True attends; float: added to the scores;
broadcastable to [B, H, Sq, Skv]), carried by plans whose `plan.mask` names its kind
("key_padding": [B|1, 1, 1, Skv]; "dense": any other) and translated per call by
`impl/masks.CallMask` (the kernel's key bias; a block-sparse mask for uniform tiles). Inductor
treats the op as opaque; `run_plan` chooses the implementation at run time from the plan,
device and shapes:

    plan.sparse set   -> impl/sparse.py (patterns, warm-up, fidelity guard), its dense fallback
    dense plan        -> impl/dense.py (SDPA, the Triton kernel or its reference: select.py)

Gradients: dense attention recomputed with SDPA (exact for dense plans; for approximate plans
-- int8, sparse -- the gradient of the exact attention, a straight-through estimate, warned once
per site at the first backward).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..geometry import check_tensor_layout
from ..plans import AttentionPlan, parse_plan
from .impl.dense import dense_attention
from .impl.exact import sdpa
from .impl.masks import CallMask
from .impl.sparse import sparse_attention
from .select import warn_once


def _check(q: Tensor, k: Tensor, v: Tensor, layout: str) -> None:
    try:
        check_tensor_layout(layout)
    except ValueError as err:
        raise ValueError(f"ditaccel::attention: {err}") from None
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"ditaccel::attention: {name} must be 4-D ({layout}), got shape {tuple(t.shape)}")


def run_plan(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
             plan: AttentionPlan, grid: Optional[list[int]] = None, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Attention of q/k/v as `plan` says (see the module docstring).

    Raises:
        ValueError: a mask without a masked plan or the reverse (a graph rewritten wrongly).
    """
    if (attn_mask is not None) != (plan.mask != "none"):
        raise ValueError(f"ditaccel::attention at {plan.site_path or '?'}: plan mask {plan.mask!r} but attn_mask "
                         f"{'given' if attn_mask is not None else 'missing'}")
    call_mask = CallMask.of(plan.mask, attn_mask)
    if plan.sparse is not None:
        dense = plan.dense_fallback()
        return sparse_attention(q, k, v, layout, scale, plan,
                                lambda q, k, v: dense_attention(q, k, v, layout, scale, False, dense, call_mask),
                                grid, call_mask)
    return dense_attention(q, k, v, layout, scale, is_causal, plan, call_mask)


def host_sync_reason(plan: AttentionPlan) -> Optional[str]:
    """Why a call with `plan` reads tensor values on the host (a device sync, and a decision a
    replayed CUDA graph would not repeat), or None when it does not: the backend keeps CUDA
    graphs off for a graph with such a call. Sparse plans are not covered here: they depend on
    the denoising step (`AttentionPlan.depends_on_step`), which turns CUDA graphs off anyway."""
    if plan.mask == "dense" and plan.backend != "sdpa":
        return (f"attention at {plan.site_path or '?'} reads its dense mask's values on the host to find whole tiles "
                "for the kernel")
    return None


@torch.library.custom_op("ditaccel::attention", mutates_args=())
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: str,
    scale: Optional[float],
    is_causal: bool,
    plan: str,
    grid: Optional[list[int]] = None,
    attn_mask: Optional[Tensor] = None,
) -> Tensor:
    _check(q, k, v, layout)
    return run_plan(q, k, v, layout, scale, is_causal, parse_plan(plan), grid, attn_mask)


@attention.register_fake
def _attention_fake(q, k, v, layout, scale, is_causal, plan, grid=None, attn_mask=None):
    _check(q, k, v, layout)
    parse_plan(plan)
    # bhsd: [B, H, Sq, Dv]; bshd: [B, Sq, H, Dv] -- both are q's shape with v's last dim
    return q.new_empty([*q.shape[:-1], v.shape[-1]])


def _setup_context(ctx, inputs, output):
    q, k, v, layout, scale, is_causal, plan, grid, attn_mask = inputs
    ctx.save_for_backward(q, k, v, attn_mask)
    ctx.static = (layout, scale, is_causal)
    parsed = parse_plan(plan)
    ctx.approximate = approximate_kind(parsed)
    ctx.site = parsed.site_path


def approximate_kind(plan: AttentionPlan) -> Optional[str]:
    """What makes `plan`'s forward differ from exact attention ("sparse", "int8"), or None."""
    if plan.sparse is not None:
        return "sparse"
    return plan.quant if plan.quant != "none" else None


def _backward(ctx, grad_out):
    # Recompute dense attention under autograd: exact gradients for the dense plan; for an
    # approximate plan the gradient of exact attention (straight-through), said once per site.
    if ctx.approximate is not None:
        warn_once(("backward", ctx.site, ctx.approximate),
                  "ditaccel: backward through %s attention at %s: the gradient is that of exact dense attention "
                  "(straight-through), while the forward was approximate", ctx.approximate, ctx.site)
    q, k, v, attn_mask = ctx.saved_tensors
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    with torch.enable_grad():
        out = sdpa(q, k, v, *ctx.static, attn_mask)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
    return dq, dk, dv, None, None, None, None, None, None  # no gradient for the mask


attention.register_autograd(_backward, setup_context=_setup_context)

attention_op = torch.ops.ditaccel.attention.default
"""The op overload passes rewrite to and later passes find nodes by (never by a name string)."""
PLAN_ARG = 6  # position of `plan` in the op's arguments (q, k, v, layout, scale, is_causal, plan, grid, attn_mask)
GRID_ARG = 7  # position of `grid` (the run-time token grid of a dynamic-shape graph, or absent)
MASK_ARG = 8  # position of `attn_mask` (absent without a mask)

__all__ = ["attention", "attention_op", "run_plan", "host_sync_reason", "approximate_kind", "PLAN_ARG", "GRID_ARG", "MASK_ARG"]
