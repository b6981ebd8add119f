"""Attention that reaches the graph as another library's op: flash-attn and xformers.

Dynamo keeps these as opaque custom-op nodes (flash-attn >= 2.7 and xformers >= 0.0.27 register
them with `torch.library.custom_op`; under inference Dynamo inlines their `autograd.Function`
and the graph holds the op itself). The node returns a tuple; the attention output is item 0:

    flash_attn.flash_attn_func(q, k, v, dropout_p, softmax_scale, causal)    # q/k/v [B, S, H, D]
      -> r = torch.ops.flash_attn._flash_attn_forward(q, k, v, dropout_p, softmax_scale, causal=,
                 window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
                 return_softmax=False)                # (out, softmax_lse, S_dmask, rng_state)
         out = r[0]                                   # [B, Sq, H, D] (then sliced if D was padded)

    xformers.ops.memory_efficient_attention(q, k, v, attn_bias=None | LowerTriangularMask(), p, scale)
      -> r = torch.ops.xformers_flash.flash_fwd(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None,
                 seqused_k=None, max_seqlen_q, max_seqlen_k, p, softmax_scale, is_causal,
                 window_left=-1, window_right=-1, return_softmax=False, block_tables=None)  # (out, lse, rng)
         out = r[0]                                   # [B, Mq, H, K]

Such a site is described like an SDPA site in the BSHD layout (`site_describe`), its output
already [B, S, H, D] (`output_layout`), and the rewrite replaces `r[0]` with `ditaccel::attention`
(the foreign op is then dead and erased). Calls the op cannot express exactly keep their original
op, with the reason in the report: packed variable-length sequences (`flash_attn_varlen_func`,
xformers' `BlockDiagonalMask`: cu_seqlens), dropout, sliding windows, softcap, ALiBi, grouped-query
k/v heads, causal attention with Sq != Skv (flash-attn aligns it bottom-right, SDPA top-left), or
a use of the softmax LSE. xformers' FA3 op (`xformers_flash3::flash_fwd`) and its cutlass path
(`aten._efficient_attention_forward`, for fp32 or tensor biases) are listed as kept.

Sources read for the call forms: Dao-AILab/flash-attention `flash_attn/flash_attn_interface.py`
(v2.7.0 - v2.8.3) and facebookresearch/xformers `xformers/ops/fmha/flash.py` (v0.0.32).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
import torch.fx as fx

from ..geometry import BSHD
from .fx_utils import node_arg
from .site_describe import describe_site
from .sites import AttentionSite

FLASH_FORWARD = "flash_attn::_flash_attn_forward"
FLASH_VARLEN_FORWARD = "flash_attn::_flash_attn_varlen_forward"
XFORMERS_FLASH = "xformers_flash::flash_fwd"
XFORMERS_FLASH3 = "xformers_flash3::flash_fwd"
EFFICIENT_ATTENTION = "aten::_efficient_attention_forward"
FOREIGN_OPS = (FLASH_FORWARD, FLASH_VARLEN_FORWARD, XFORMERS_FLASH, XFORMERS_FLASH3, EFFICIENT_ATTENTION)
PATTERNS = {FLASH_FORWARD: "flash_attn", FLASH_VARLEN_FORWARD: "flash_attn_varlen", XFORMERS_FLASH: "xformers",
            XFORMERS_FLASH3: "xformers_fa3", EFFICIENT_ATTENTION: "efficient_attention"}


def op_qualname(node: fx.Node) -> Optional[str]:
    """"namespace::name" of a call to a torch.library op (packet or overload), else None."""
    if node.op != "call_function":
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name
    return None


def match_foreign(node: fx.Node, index: int) -> Optional[AttentionSite]:
    """The attention site of a flash-attn / xformers op node, or None for any other node."""
    name = op_qualname(node)
    if name not in FOREIGN_OPS:
        return None
    outputs = _tuple_outputs(node)
    out = outputs.get(0)
    q, k, v = node.args[0], node.args[1], node.args[2]
    site, reasons = describe_site(node, index, PATTERNS[name], q, k, v, out if out is not None else node, BSHD)
    dead = tuple(u for u in node.users if not u.users)  # unread items: erased with the op
    site = dataclasses.replace(site, output_layout=BSHD, replaced=(*dead, node))
    if name == FLASH_FORWARD:
        fields = dict(dropout=node_arg(node, 3, "dropout_p", 0.0), scale=node_arg(node, 4, "softmax_scale"),
                      causal=node_arg(node, 5, "causal", False),
                      window=(node_arg(node, 6, "window_size_left", -1), node_arg(node, 7, "window_size_right", -1)),
                      softcap=node_arg(node, 8, "softcap", 0.0), alibi=node_arg(node, 9, "alibi_slopes"), packed=None)
    elif name == XFORMERS_FLASH:
        fields = dict(dropout=node_arg(node, 8, "p", 0.0), scale=node_arg(node, 9, "softmax_scale"),
                      causal=node_arg(node, 10, "is_causal", False),
                      window=(node_arg(node, 11, "window_left", -1), node_arg(node, 12, "window_right", -1)),
                      softcap=0.0, alibi=None, packed=node_arg(node, 3, "cu_seqlens_q") is not None
                      or node_arg(node, 4, "cu_seqlens_k") is not None or node_arg(node, 5, "seqused_k") is not None
                      or node_arg(node, 14, "block_tables") is not None)
    else:
        why = {FLASH_VARLEN_FORWARD: "packed variable-length sequences (flash_attn_varlen_func, cu_seqlens)",
               XFORMERS_FLASH3: "xformers' FA3 op (its schema is not matched yet)",
               EFFICIENT_ATTENTION: "aten._efficient_attention_forward (xformers' cutlass path: fp32 or a tensor "
                                    "bias) is not matched yet"}[name]
        return site.with_reasons([why])
    return _with_call_reasons(site, fields, outputs, reasons)


def _with_call_reasons(site: AttentionSite, f: dict, outputs: dict, reasons: list[str]) -> AttentionSite:
    """The site with the call's scale / causality, unsupported for the first reason that applies."""
    scale, causal, dropout = f["scale"], f["causal"], f["dropout"]
    site = dataclasses.replace(site, scale=float(scale) if isinstance(scale, (int, float)) else None,
                               is_causal=causal if isinstance(causal, bool) else False,
                               dropout_p=float(dropout) if isinstance(dropout, (int, float)) else float("nan"))
    why = []
    if f["packed"]:
        why.append("packed variable-length sequences (xformers BlockDiagonalMask: cu_seqlens)")
    if 0 not in outputs:
        why.append("its attention output (item 0) is not read")
    if set(outputs) - {0}:
        why.append("the softmax LSE (or another output of the op) is used")
    if scale is not None and not isinstance(scale, (int, float)):
        why.append("softmax_scale is a run-time value (computed in the graph, or symbolic under dynamic shapes)")
    if not isinstance(dropout, (int, float)):
        why.append("dropout_p is a run-time value (symbolic under dynamic shapes): dropout cannot be ruled out")
    elif dropout != 0:
        why.append(f"dropout_p={dropout} (training-time dropout is not supported)")
    if not isinstance(causal, bool):
        why.append("causal is computed at run time")
    elif causal and site.q_len_expr != site.kv_len_expr:
        why.append("causal attention with Sq != Skv (aligned bottom-right by this op, top-left by SDPA)")
    if tuple(f["window"]) != (-1, -1):
        why.append(f"sliding-window attention (window {tuple(f['window'])})")
    if f["softcap"] not in (0, 0.0):
        why.append(f"softcap={f['softcap']}")
    if f["alibi"] is not None:
        why.append("ALiBi slopes")
    if site.heads is None or site.kv_heads is None:  # symbolic (dynamic shapes): GQA cannot be ruled out
        why.append("the head counts are symbolic (dynamic shapes): grouped-query attention cannot be ruled out")
    elif site.heads != site.kv_heads:
        why.append(f"grouped-query attention ({site.kv_heads} k/v heads for {site.heads} query heads)")
    return site.with_reasons(why + reasons)


def _tuple_outputs(node: fx.Node) -> dict[int, fx.Node]:
    """{item index: getitem node} for the items of the op's result that the graph reads."""
    items = {}
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
            if user.users:
                items[user.args[1]] = user
        else:
            items[-1] = user  # the tuple itself is used: not only its output
    return items


__all__ = ["match_foreign", "op_qualname", "FOREIGN_OPS", "FLASH_FORWARD", "FLASH_VARLEN_FORWARD",
           "XFORMERS_FLASH"]
