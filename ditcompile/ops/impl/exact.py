"""Exact attention with torch SDPA in either tensor layout: the dense plans' default, the
backward's recomputation and the SDPA tuning candidates (one backend forced, or the dispatch's own)."""
from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from ...geometry import from_bhsd, to_bhsd


def sdpa(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
         attn_mask: Optional[Tensor] = None, backend: Optional[Any] = None) -> Tensor:
    """Exact attention with torch SDPA, in and out of `layout` (contiguous in that layout);
    `attn_mask` as SDPA takes it (broadcastable to [B, H, Sq, Skv] whatever the layout);
    `backend`: a `torch.nn.attention.SDPBackend` to force (None: SDPA's own dispatch).

    Raises RuntimeError (from SDPA) when a forced backend cannot run these inputs."""
    q, k, v = (to_bhsd(t, layout) for t in (q, k, v))  # [B, H, S, D] views
    if backend is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    else:
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return from_bhsd(out, layout).contiguous()  # [B, H, Sq, Dv] -> q's layout


__all__ = ["sdpa"]
