"""Dense attention and the kernel runner shared with the sparse executor.

    sdpa(q, k, v, layout, scale, is_causal, attn_mask)       exact, torch SDPA (optional mask)
    run_kernel(choice, q, k, v, mask, layout, scale, quant)  the Triton kernel or its reference,
                                                             dense (mask None) or block-sparse
    dense_attention(q, k, v, layout, scale, is_causal, plan) a dense plan, end to end

q, k, v are [B, H, S, D] ("bhsd") or [B, S, H, D] ("bshd"); outputs have q's layout.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from ...geometry import from_bhsd, to_bhsd
from ...kernels.attention.flash_fwd import sparse_flash_attention
from ...kernels.attention.reference import int8_attention_reference, sparse_attention_reference
from ...kernels.block_mask import BlockSparseMask
from ...plans import AttentionPlan
from ..select import SDPA, TRITON, ImplChoice, select_impl, warn_fallback


def sdpa(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
         attn_mask: Optional[Tensor] = None) -> Tensor:
    """Exact attention with torch SDPA, in and out of `layout` (contiguous in that layout);
    `attn_mask` as SDPA takes it (broadcastable to [B, H, Sq, Skv] whatever the layout)."""
    q, k, v = (to_bhsd(t, layout) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                         scale=scale)  # [B, H, Sq, Dv]
    return from_bhsd(out, layout).contiguous()


def run_kernel(impl: ImplChoice, q: Tensor, k: Tensor, v: Tensor, mask: Optional[BlockSparseMask], layout: str,
               scale: Optional[float], quant: str) -> Tensor:
    """The Triton kernel (impl TRITON) or its pure-torch reference (REFERENCE), q's dtype and layout."""
    if impl.impl == TRITON:
        return sparse_flash_attention(q, k, v, mask, scale=scale, layout=layout, quant=quant)
    if quant == "int8":
        return int8_attention_reference(q, k, v, mask, scale=scale, layout=layout)
    return sparse_attention_reference(q, k, v, mask, scale=scale, layout=layout).to(q.dtype)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
                    plan: AttentionPlan) -> Tensor:
    """A dense plan: SDPA, the Triton kernel (16-bit or int8) or its reference, as `select_impl` says."""
    impl = select_impl(q, k, v, is_causal=is_causal, backend=plan.backend, block_sparse=False)
    warn_fallback(plan.site_path, impl)
    if impl.impl == SDPA:
        return sdpa(q, k, v, layout, scale, is_causal)
    return run_kernel(impl, q, k, v, None, layout, scale, plan.quant).contiguous()


__all__ = ["sdpa", "run_kernel", "dense_attention"]
