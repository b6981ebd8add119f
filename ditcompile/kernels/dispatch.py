"""Which implementation runs a plan, chosen at run time from the plan, the device and the inputs.

    plan backend "sdpa", no quant          -> torch SDPA (every device)
    plan backend "triton" on CUDA          -> Triton flash kernel (flash_attention.py), dense or
                                              int8; unsupported inputs fall back to SDPA (logged once)
    plan backend "triton" on CPU           -> the kernel's pure-torch reference (same math, same
                                              int8 emulation), so CPU runs show what the GPU computes
    plan method "sparse"                   -> runtime/sparse.py (patterns, warm-up, fidelity guard)

Kept out of the custom op's body so that the op stays a thin, testable shell.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ..plan import AttentionPlan

log = logging.getLogger("ditcompile")

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 128


def dense_sdpa(q, k, v, layout: str, scale: Optional[float], is_causal: bool) -> torch.Tensor:
    """Exact attention with torch SDPA, in and out of `layout` (contiguous in that layout)."""
    if layout == "bshd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    if layout == "bshd":
        out = out.transpose(1, 2)
    return out.contiguous()


def triton_unsupported(q, k, v, is_causal: bool) -> Optional[str]:
    """Why the Triton kernel cannot run these inputs (None when it can)."""
    if is_causal:
        return "causal attention"
    if q.dtype not in TRITON_DTYPES:
        return f"dtype {q.dtype}"
    if q.shape[-1] > TRITON_MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {TRITON_MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return f"value head dim {v.shape[-1]} != {q.shape[-1]}"
    if q.is_cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
    return None


@functools.lru_cache(maxsize=None)
def _log_fallback_once(site: str, reason: str) -> None:
    log.warning("ditaccel: attention at %s runs SDPA instead of the Triton kernel: %s", site or "?", reason)


def run_plan(q, k, v, layout: str, scale: Optional[float], is_causal: bool, plan: AttentionPlan) -> torch.Tensor:
    if plan.method == "sparse":
        from ..runtime.sparse import run_sparse

        dense_plan = AttentionPlan(backend="triton" if plan.quant != "none" else "sdpa", quant=plan.quant,
                                   site=plan.site)
        return run_sparse(q, k, v, layout, scale, plan,
                          lambda q, k, v: run_plan(q, k, v, layout, scale, False, dense_plan))
    if plan.backend == "sdpa":
        return dense_sdpa(q, k, v, layout, scale, is_causal)
    reason = triton_unsupported(q, k, v, is_causal)
    if reason is not None:
        _log_fallback_once(plan.site, reason)
        return dense_sdpa(q, k, v, layout, scale, is_causal)
    if not q.is_cuda:
        return _reference(q, k, v, layout, scale, plan)
    from .flash_attention import sparse_flash_attention

    return sparse_flash_attention(q, k, v, None, scale=scale, layout=layout, quant=plan.quant)


def _reference(q, k, v, layout: str, scale: Optional[float], plan: AttentionPlan) -> torch.Tensor:
    """The kernel's pure-torch reference (CPU): same function, same int8 emulation."""
    from .reference import int8_attention_reference, sparse_attention_reference

    if plan.quant == "int8":
        return int8_attention_reference(q, k, v, None, scale=scale, layout=layout).contiguous()
    return sparse_attention_reference(q, k, v, None, scale=scale, layout=layout).to(q.dtype).contiguous()
