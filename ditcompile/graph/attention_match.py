"""Find attention calls in a Dynamo FX graph and describe each as an `AttentionSite`.

Three shapes of attention are recognised (the third in `foreign_attention`: flash-attn and
xformers ops):

    SDPA:    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                                 is_causal=False, scale=None)
    manual:  s = matmul(q, k.transpose(-2, -1)) [* scale | / d]      (or baddbmm(_, q, kT,
             p = softmax(s[.float()], dim=-1)[.to(dtype)]                 beta=0, alpha=scale))
             out = matmul(p, v)                                         (or bmm)

q/k/v reached through `permute(0, 2, 1, 3)` / `transpose(1, 2)` of a [B, S, H, D] tensor make the
site BSHD: the op then reads the [B, S, H, D] tensors directly. Manual attention on [B*H, S, D]
(heads folded into the batch, as diffusers' legacy processors do) is described with
`folded_heads=True` and the head count recovered from the reshape that folded it.

Matching only reads the graph; a site that a pass must not replace is still returned, with
`supported=False` and the reason, so the explain report can list it.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from .fx_utils import (
    call_name,
    example_value,
    is_function,
    is_method,
    is_seq_head_swap,
    node_arg,
    normalize_dim,
    permutation_of,
)
from ..geometry import BSHD
from .foreign_attention import match_foreign
from .site_describe import describe_site
from .sites import AttentionSite

SDPA_TARGETS = {F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention}
SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax, torch.Tensor.softmax}
MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm}
BADDBMM_FUNCTIONS = {torch.baddbmm, torch.Tensor.baddbmm}
CAST_METHODS = ("to", "float", "half", "bfloat16", "type_as", "type", "contiguous")
DROPOUT_FUNCTIONS = {F.dropout, torch.dropout}


def find_attention_sites(graph: fx.Graph) -> list[AttentionSite]:
    """All attention calls in graph order (supported or not)."""
    sites: list[AttentionSite] = []
    for node in graph.nodes:
        site = None
        if is_function(node, *SDPA_TARGETS):
            site = _match_sdpa(node, len(sites))
        elif _is_softmax(node):
            site = _match_manual(node, len(sites))
        else:
            site = match_foreign(node, len(sites))  # flash-attn / xformers ops (None for other nodes)
        if site is not None:
            sites.append(site)
    return sites


def unmatched_softmax(graph: fx.Graph, sites: list[AttentionSite]) -> int:
    """How many softmax calls of `graph` are not part of a recognised attention site (attention
    written another way, e.g. with einsum: kept as written, and the report says so)."""
    inside = {id(n) for site in sites for n in (site.replaced or ())}
    return sum(1 for node in graph.nodes if _is_softmax(node) and id(node) not in inside)


# ----------------------------------------------------------------------------- SDPA


def _match_sdpa(node: fx.Node, index: int) -> AttentionSite:
    q = node_arg(node, 0, "query")
    k = node_arg(node, 1, "key")
    v = node_arg(node, 2, "value")
    mask = node_arg(node, 3, "attn_mask")
    dropout_p = node_arg(node, 4, "dropout_p", 0.0)
    is_causal = node_arg(node, 5, "is_causal", False)
    scale = node_arg(node, 6, "scale")
    enable_gqa = node_arg(node, 7, "enable_gqa", False)

    site, reasons = describe_site(node, index, "sdpa", q, k, v, node)
    site = dataclasses.replace(
        site, has_mask=mask is not None, is_causal=bool(is_causal) if isinstance(is_causal, bool) else False,
        scale=float(scale) if isinstance(scale, (int, float)) else None,
        dropout_p=float(dropout_p) if isinstance(dropout_p, (int, float)) else float("nan"))
    if mask is not None:
        kind, why = classify_mask(mask)
        if why is not None:
            reasons.append(why)
        else:
            site = dataclasses.replace(site, mask=mask, mask_kind=kind)
    if not isinstance(is_causal, bool):
        reasons.append("is_causal is computed at run time")
    if scale is not None and not isinstance(scale, (int, float)):
        reasons.append("scale is a tensor computed at run time")
    if not isinstance(dropout_p, (int, float)):
        reasons.append("dropout_p is computed at run time")
    elif dropout_p > 0:
        reasons.append(f"dropout_p={dropout_p} (training-time dropout is not supported)")
    if enable_gqa is True:
        reasons.append("enable_gqa=True (grouped-query attention)")
    return _as_bshd(site) if site.supported and not reasons else site.with_reasons(reasons)


def classify_mask(mask: object) -> tuple[str, Optional[str]]:
    """(kind, None) for an SDPA ``attn_mask`` the op can carry, else ("", why not).

    kind "key_padding": a bool or float mask of shape [B|1, 1, 1, Skv] (the same keys masked for
    every head and query: text padding, as HunyuanVideo builds it); "dense": any other mask of up
    to 4 dims (passed through exactly, SDPA semantics: bool True = attend, float = added to the
    scores).
    """
    if not isinstance(mask, fx.Node):
        return "", "attn_mask is not a tensor of the graph"
    value = example_value(mask)
    if not isinstance(value, torch.Tensor):
        return "", "attn_mask has no example value"
    if value.dtype != torch.bool and not value.is_floating_point():
        return "", f"attn_mask of dtype {value.dtype} (SDPA takes bool or float masks)"
    if value.dim() > 4:
        return "", f"attn_mask with {value.dim()} dims"
    if value.requires_grad:  # the op gives a mask no gradient: a trained bias must stay with SDPA
        return "", "attn_mask requires grad (a trained attention bias: kept as SDPA, which differentiates it)"
    shape = [1] * (4 - value.dim()) + list(value.shape)
    if shape[1] == 1 and shape[2] == 1:
        return "key_padding", None
    return "dense", None


def _as_bshd(site: AttentionSite) -> AttentionSite:
    """The site reading q/k/v before their permute to [B,H,S,D] when all three come from
    [B,S,H,D] tensors (the op then needs no copy); else the site as it is."""
    sources = [_bshd_source(n) for n in (site.q, site.k, site.v)]
    if all(s is not None for s in sources):
        return dataclasses.replace(site, q=sources[0], k=sources[1], v=sources[2], layout=BSHD)
    return site


def _bshd_source(node: fx.Node) -> Optional[fx.Node]:
    """x when `node` is x.transpose(1, 2) / x.permute(0, 2, 1, 3) of a 4-D x, else None."""
    return node.args[0] if is_seq_head_swap(node) else None


# ----------------------------------------------------------------------------- manual


def _is_softmax(node: fx.Node) -> bool:
    return is_method(node, "softmax") or is_function(node, *SOFTMAX_FUNCTIONS)


def _skip_casts_back(node: fx.Node) -> fx.Node:
    while isinstance(node, fx.Node) and is_method(node, *CAST_METHODS) and len(node.users) == 1:
        node = node.args[0]
    return node


def _single_chain_forward(node: fx.Node) -> tuple[Optional[fx.Node], list[fx.Node]]:
    """Follow single-user casts/no-op dropouts after softmax to the P.V matmul."""
    chain: list[fx.Node] = []
    while True:
        if len(node.users) != 1:
            return None, chain
        user = next(iter(node.users))
        if is_method(user, *CAST_METHODS) or _is_noop_dropout(user):
            chain.append(user)
            node = user
            continue
        return user, chain


def _is_noop_dropout(node: fx.Node) -> bool:
    if not is_function(node, *DROPOUT_FUNCTIONS):
        return False
    p = node_arg(node, 1, "p", 0.5)
    training = node_arg(node, 2, "training", True)
    return (isinstance(p, (int, float)) and p == 0) or training is False


def _is_matmul(node: fx.Node) -> bool:
    return is_function(node, *MATMUL_FUNCTIONS) or is_method(node, "matmul", "bmm")


def _is_baddbmm(node: fx.Node) -> bool:
    return is_function(node, *BADDBMM_FUNCTIONS) or is_method(node, "baddbmm")


def _key_from_transpose(kt: fx.Node) -> Optional[fx.Node]:
    """k when kt is k.transpose(-2, -1) (any spelling of swapping the last two dims)."""
    perm = permutation_of(kt) if isinstance(kt, fx.Node) else None
    if perm is None:
        return None
    rank = len(perm)
    return kt.args[0] if perm == tuple(range(rank - 2)) + (rank - 1, rank - 2) else None


def _match_manual(softmax: fx.Node, index: int) -> Optional[AttentionSite]:
    """Describe softmax(q @ k^T * scale) @ v around a softmax node; None if it is not attention."""
    dim = node_arg(softmax, 1, "dim")
    value = example_value(softmax)
    if value is None or normalize_dim(dim, value.dim()) != value.dim() - 1:
        return None

    # backwards: softmax input -> [mask add] -> [scale] -> matmul(q, kT) / baddbmm
    scores = _skip_casts_back(softmax.args[0])
    has_mask = False
    if (is_function(scores, operator.add, torch.add) or is_method(scores, "add")) and len(scores.users) == 1:
        has_mask = True
        scores = scores.args[0]
    scale: Optional[float] = None
    if (is_function(scores, operator.mul) or is_method(scores, "mul")) and len(scores.users) == 1:
        a, b = scores.args[0], scores.args[1]
        if isinstance(b, (int, float)) and isinstance(a, fx.Node):
            scale, scores = float(b), a
        elif isinstance(a, (int, float)) and isinstance(b, fx.Node):
            scale, scores = float(a), b
    elif (is_function(scores, operator.truediv) or is_method(scores, "div")) and len(scores.users) == 1:
        if isinstance(scores.args[1], (int, float)) and isinstance(scores.args[0], fx.Node):
            scale, scores = 1.0 / float(scores.args[1]), scores.args[0]
    if not isinstance(scores, fx.Node):
        return None

    if _is_matmul(scores):
        pattern, q, kt = "matmul-softmax-matmul", scores.args[0], scores.args[1]
    elif _is_baddbmm(scores):
        pattern, q, kt = "baddbmm-softmax-bmm", node_arg(scores, 1, "batch1"), node_arg(scores, 2, "batch2")
        beta = scores.kwargs.get("beta", 1)
        alpha = scores.kwargs.get("alpha", 1)
        if not (isinstance(beta, (int, float)) and beta == 0):
            has_mask = True  # baddbmm adds its first operand: an additive mask
        if isinstance(alpha, (int, float)):
            scale = float(alpha) * (scale if scale is not None else 1.0)
        else:
            return None
    else:
        return None
    k = _key_from_transpose(kt)
    pv, chain = _single_chain_forward(softmax)
    if k is None or pv is None or not _is_matmul(pv) or pv.args[0] is not (chain[-1] if chain else softmax):
        return None  # a softmax, but not the attention pattern we can describe
    v = pv.args[1]

    site, reasons = describe_site(pv, index, pattern, q, k, v, pv)
    # replaced: softmax back to the scores (casts, scale), the scores and k^T, forward to P.V
    site = dataclasses.replace(site, scale=scale if scale is not None else 1.0, has_mask=has_mask,
                               replaced=(*_between(scores, softmax), scores, kt, *chain, pv))
    if has_mask:
        reasons.append("additive attention mask (kept as written)")
    if len(scores.users) != 1:
        reasons.append("attention scores are used elsewhere")
    if example_value(q) is None or example_value(q).dim() not in (3, 4):
        reasons.append("q is not a 3-D or 4-D tensor")
    return site.with_reasons(reasons)


def _between(start: fx.Node, end: fx.Node) -> list[fx.Node]:
    """Nodes on the single-input chain from end back to start (exclusive of start)."""
    out, node = [], end
    while isinstance(node, fx.Node) and node is not start and node.args:
        out.append(node)
        node = node.args[0]
    return out


# ----------------------------------------------------------------------------- shared


def projection_input(node: fx.Node, limit: int = 80) -> Optional[fx.Node]:
    """The tensor a q/k/v was projected from: the input of the nearest `linear` upstream.

    Follows the first tensor argument (views, norms, rotary embeddings) and stops at a linear
    layer or a concatenation. Two sites' q and k with the same projection input attend within
    one stream (self/joint); different inputs mean cross-attention.
    """
    current = node
    for _ in range(limit):
        if not isinstance(current, fx.Node):
            return None
        if call_name(current) == "linear":
            return current.args[0] if isinstance(current.args[0], fx.Node) else None
        if call_name(current) == "cat":
            return current
        nxt = None
        for arg in current.args:
            if isinstance(arg, fx.Node) and example_value(arg) is not None:
                nxt = arg
                break
        current = nxt
    return None


__all__ = ["find_attention_sites", "unmatched_softmax", "projection_input", "SDPA_TARGETS"]
