"""Dense attention and the kernel runner shared with the sparse executor.

    sdpa(q, k, v, layout, scale, is_causal, attn_mask)       exact, torch SDPA (optional mask)
    run_kernel(choice, q, k, v, mask, layout, scale, quant,  the Triton kernel or its reference,
               key_bias)                                     dense (mask None) or block-sparse,
                                                             optional key padding
    dense_attention(q, k, v, layout, scale, is_causal, plan, a dense plan, end to end, with the
                    call_mask)                               call's mask (impl/masks.py)

q, k, v are [B, H, S, D] ("bhsd") or [B, S, H, D] ("bshd"); outputs have q's layout.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from ...geometry import from_bhsd, seq_dim, to_bhsd
from ...kernels.attention.flash_fwd import sparse_flash_attention
from ...kernels.attention.reference import int8_attention_reference, sparse_attention_reference
from ...kernels.block_mask import BlockSparseMask
from ...plans import AttentionPlan
from ..select import SDPA, TRITON, ImplChoice, select_impl, warn_fallback, warn_once
from .masks import CallMask, largest_uniform_block


def sdpa(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
         attn_mask: Optional[Tensor] = None) -> Tensor:
    """Exact attention with torch SDPA, in and out of `layout` (contiguous in that layout);
    `attn_mask` as SDPA takes it (broadcastable to [B, H, Sq, Skv] whatever the layout)."""
    q, k, v = (to_bhsd(t, layout) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                         scale=scale)  # [B, H, Sq, Dv]
    return from_bhsd(out, layout).contiguous()


def run_kernel(impl: ImplChoice, q: Tensor, k: Tensor, v: Tensor, mask: Optional[BlockSparseMask], layout: str,
               scale: Optional[float], quant: str, key_bias: Optional[Tensor] = None) -> Tensor:
    """The Triton kernel (impl TRITON) or its pure-torch reference (REFERENCE), q's dtype and layout.
    key_bias: float32 [B|1, Skv] added to the scores (key padding), or None."""
    if impl.impl == TRITON:
        return sparse_flash_attention(q, k, v, mask, scale=scale, layout=layout, quant=quant, key_bias=key_bias)
    if quant == "int8":
        return int8_attention_reference(q, k, v, mask, scale=scale, layout=layout, key_bias=key_bias)
    return sparse_attention_reference(q, k, v, mask, scale=scale, layout=layout, key_bias=key_bias).to(q.dtype)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
                    plan: AttentionPlan, call_mask: CallMask = CallMask()) -> Tensor:
    """A dense plan: SDPA, the Triton kernel (16-bit or int8) or its reference, as `select_impl` says.

    call_mask: the call's attn_mask (`impl/masks.py`). SDPA takes it as it is; the kernel takes a
    key-padding mask as its key bias and a dense mask as a block-sparse mask when the mask's tiles
    are uniform; any other dense mask runs SDPA (exact; said once per site)."""
    impl = select_impl(q, k, v, is_causal=is_causal, backend=plan.backend, block_sparse=False)
    warn_fallback(plan.site_path, impl)
    if impl.impl == SDPA:
        return sdpa(q, k, v, layout, scale, is_causal, call_mask.attn_mask)
    blocks = None
    if call_mask.kind == "dense":
        blocks = largest_uniform_block(call_mask, q.shape[seq_dim(layout)], k.shape[seq_dim(layout)])
        if blocks is None:
            warn_once((plan.site_path, "mask tiles"), "ditaccel: attention at %s runs SDPA with its mask (exact): "
                      "the mask is not made of whole 16x16 (or larger) attended/masked tiles, which the kernel "
                      "needs", plan.site_path or "?")
            return sdpa(q, k, v, layout, scale, is_causal, call_mask.attn_mask)
    return run_kernel(impl, q, k, v, blocks, layout, scale, plan.quant, call_mask.key_bias).contiguous()


__all__ = ["sdpa", "run_kernel", "dense_attention"]
