"""The shared description of one attention call: shapes, module path, block, dtype checks.

    describe_site(node, index, pattern, q, k, v, output, layout) -> (AttentionSite, reasons)

Used by every matcher (SDPA and hand-written attention in `attention_match`, flash-attn and
xformers ops in `foreign_attention`), so that all sites are described the same way.
"""
from __future__ import annotations

from typing import Optional

import torch.fx as fx

from ..geometry import BHSD, BSHD
from .fx_utils import dim_text, dtype_of, example_value, shape_of, static_int
from .module_path import block_of, module_class, module_path
from .sites import AttentionSite


def describe_site(node, index, pattern, q, k, v, output, layout: str = BHSD) -> tuple[AttentionSite, list[str]]:
    """The site's shapes, module path and block from the example values of q/k/v, and the
    reasons (if any) it cannot be rewritten that the shapes alone show. `layout`: how the call
    reads 4-D q/k/v ([B, H, S, D], or [B, S, H, D] for calls that take that layout natively)."""
    path = module_path(node)
    block = block_of(path)
    qv, kv, vv = example_value(q), example_value(k), example_value(v)
    base = dict(
        index=index, pattern=pattern, module_path=path, module_class=module_class(node),
        block=block.path if block else None, block_index=block.index if block else None,
        layout=BHSD, batch=None, heads=None, kv_heads=None, head_dim=None, value_dim=None,
        q_len=None, kv_len=None, q_len_expr="?", kv_len_expr="?", shape_text="?", scale=None, is_causal=False,
        has_mask=False, dropout_p=0.0, dtype=str(dtype_of(q)).replace("torch.", ""), q=q, k=k, v=v, output=output,
    )
    if qv is None or kv is None or vv is None:
        return AttentionSite(**base), ["q, k or v has no example value (not a tensor?)"]
    if qv.dim() == 3 and layout == BSHD:  # packed variable-length [total, H, D] (flash varlen, xformers)
        (tq, h, d), tk = qv.shape, kv.shape[0]
        base.update(layout=BSHD, heads=static_int(h), kv_heads=static_int(kv.shape[1]), head_dim=static_int(d),
                    value_dim=static_int(vv.shape[-1]), q_len_expr=dim_text(tq), kv_len_expr=dim_text(tk),
                    shape_text=f"packed Tq={dim_text(tq)} Tkv={dim_text(tk)} H={dim_text(h)} D={dim_text(d)}")
        return AttentionSite(**base), []
    if qv.dim() == 4 and layout == BSHD:  # the call itself reads [B, S, H, D] (flash-attn, xformers)
        b, sq, h, d = qv.shape
        base.update(layout=BSHD, batch=static_int(b), heads=static_int(h), kv_heads=static_int(kv.shape[2]))
        heads_text = dim_text(h)
    elif qv.dim() == 4:
        b, h, sq, d = qv.shape
        base.update(batch=static_int(b), heads=static_int(h), kv_heads=static_int(kv.shape[1]))
        heads_text = dim_text(h)
    elif qv.dim() == 3:
        (b, sq, d), h = qv.shape, None
        heads = _folded_heads(q, qv.shape)
        base.update(folded_heads=True, heads=heads,
                    batch=static_int(b) // heads if heads and static_int(b) else None)
        heads_text = str(heads) if heads else "?"
    else:
        return AttentionSite(**base), [f"q has rank {qv.dim()} (expected 4-D [B,H,S,D] or 3-D [B*H,S,D])"]
    skv, dv = kv.shape[1 if layout == BSHD else -2], vv.shape[-1]
    base.update(head_dim=static_int(d), value_dim=static_int(dv), q_len=static_int(sq), kv_len=static_int(skv),
                q_len_expr=dim_text(sq), kv_len_expr=dim_text(skv),
                shape_text=(f"B={dim_text(b)}{'(xH)' if base.get('folded_heads') else ''} H={heads_text} "
                            f"Sq={dim_text(sq)} Skv={dim_text(skv)} D={dim_text(d)}"))
    reasons = ["head dim is symbolic"] if qv.dim() == 4 and static_int(d) is None else []
    reasons += _dtype_reasons(qv, kv, vv, example_value(output))
    return AttentionSite(**base), reasons


def _dtype_reasons(qv, kv, vv, out) -> list[str]:
    """Why the op cannot be a drop-in replacement for these dtypes: it computes in q's dtype and
    returns q's dtype, so q, k, v and the original output must share one dtype (an attention that
    upcasts q and k but keeps v is computed exactly only as written)."""
    dtypes = [t.dtype for t in (qv, kv, vv)]
    name = lambda d: str(d).replace("torch.", "")  # noqa: E731
    if len(set(dtypes)) > 1:
        return [f"q, k and v have different dtypes ({', '.join(map(name, dtypes))}): kept as written"]
    if out is not None and out.dtype != dtypes[0]:
        return [f"the attention returns {name(out.dtype)} from {name(dtypes[0])} inputs: kept as written"]
    return []


def _folded_heads(q: fx.Node, shape) -> Optional[int]:
    """Heads of a [B*H, S, D] tensor, read from the 4-D [B, H, S, D] tensor it was reshaped from."""
    bh, s, d = (static_int(x) for x in shape)
    node = q
    for _ in range(6):
        if not isinstance(node, fx.Node) or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
        src = shape_of(node)
        if src is not None and len(src) == 4:
            b4, h4, s4, d4 = (static_int(x) for x in src)
            if None not in (b4, h4, bh) and b4 * h4 == bh and s4 == s and d4 == d:
                return h4
    return None



__all__ = ["describe_site"]
