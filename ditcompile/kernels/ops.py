"""`ditaccel::attention`: the custom op every rewritten attention site calls.

    ditaccel::attention(Tensor q, Tensor k, Tensor v, str layout, float? scale,
                        bool is_causal, str plan) -> Tensor

q, k, v are [B, H, S, D] (layout "bhsd") or [B, S, H, D] (layout "bshd"); the output has q's
layout and is contiguous in it (the fake implementation promises exactly those strides, which
Inductor relies on). `plan` is an `AttentionPlan` as JSON. Inductor treats the op as opaque;
the implementation chooses the kernel at run time from the plan, device and shapes.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..plan import parse_plan
from .dispatch import dense_sdpa, run_plan

LAYOUTS = ("bhsd", "bshd")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"ditaccel::attention: layout must be one of {LAYOUTS}, got {layout!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"ditaccel::attention: {name} must be 4-D ({layout}), got shape {tuple(t.shape)}")


def _output_shape(q: torch.Tensor, v: torch.Tensor) -> list:
    # bhsd: [B, H, Sq, Dv]; bshd: [B, Sq, H, Dv] -- both are q's shape with v's last dim
    return [*q.shape[:-1], v.shape[-1]]


@torch.library.custom_op("ditaccel::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: str,
    scale: Optional[float],
    is_causal: bool,
    plan: str,
) -> torch.Tensor:
    _check(q, k, v, layout)
    return run_plan(q, k, v, layout, scale, is_causal, parse_plan(plan))


@attention.register_fake
def _attention_fake(q, k, v, layout, scale, is_causal, plan):
    _check(q, k, v, layout)
    parse_plan(plan)
    return q.new_empty(_output_shape(q, v))


# Gradients: dense attention recomputed with SDPA (exact for dense plans; for approximate plans
# -- int8, sparse -- the gradient of the exact attention, a straight-through estimate).
def _setup_context(ctx, inputs, output):
    q, k, v, layout, scale, is_causal, plan = inputs
    ctx.save_for_backward(q, k, v)
    ctx.static = (layout, scale, is_causal)


def _backward(ctx, grad_out):
    # Recompute dense attention under autograd: exact gradients for the dense plan.
    q, k, v = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
    with torch.enable_grad():
        out = dense_sdpa(q, k, v, *ctx.static)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
    return dq, dk, dv, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)

attention_op = torch.ops.ditaccel.attention.default
