"""Dense attention and the kernel runner shared with the sparse executor.

    run_kernel(impl, q, k, v, mask, layout, scale, plan,     a kernel plan's attention, dense
               call_mask, key_bias)                          (mask None) or block-sparse
    dense_attention(q, k, v, layout, scale, is_causal, plan, a dense plan, end to end, with the
                    call_mask)                               call's mask (impl/masks.py)

Both run the candidate the autotuner picks (`ops/tunables.py`: the tuning cache in offline mode,
tuned on first use in online mode); without a tuning result, what `select_impl` chose: SDPA,
the Triton kernel, or its reference on the CPU.

q, k, v are [B, H, S, D] ("bhsd") or [B, S, H, D] ("bshd"); outputs have q's layout.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ...geometry import seq_dim
from ...kernels.block_mask import BlockSparseMask
from ...plans import AttentionPlan
from .. import tunables
from ..select import SDPA, TRITON, ImplChoice, select_impl, warn_fallback, warn_once
from .masks import CallMask, largest_uniform_block


def default_candidate(impl: ImplChoice) -> str:
    """The tuning candidate that runs what `select_impl` chose, without a tuning result."""
    return {SDPA: tunables.SDPA, TRITON: tunables.TRITON}.get(impl.impl, tunables.REFERENCE)


def run_kernel(impl: ImplChoice, q: Tensor, k: Tensor, v: Tensor, mask: Optional[BlockSparseMask], layout: str,
               scale: Optional[float], plan: AttentionPlan, call_mask: CallMask = CallMask(),
               key_bias: Optional[Tensor] = None) -> Tensor:
    """A kernel plan's attention (dense: mask None; block-sparse: a BlockSparseMask) with the
    candidate the autotuner picks (`ops/tunables.run_tuned`); without a tuning result, what
    `impl` names: the Triton kernel (TRITON) or its pure-torch reference (REFERENCE).
    key_bias: float32 [B|1, Skv] overriding the call mask's (the sparse executor's permuted
    bias), or None. Returns q's dtype and layout."""
    problem = tunables.AttentionProblem(q, k, v, layout, scale, False, plan.quant, call_mask, mask, key_bias,
                                        default_candidate(impl), sparse=mask is not None)
    return tunables.run_tuned(problem, plan)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], is_causal: bool,
                    plan: AttentionPlan, call_mask: CallMask = CallMask()) -> Tensor:
    """A dense plan: SDPA, the Triton kernel (16-bit or int8) or its reference, as `select_impl` says.

    call_mask: the call's attn_mask (`impl/masks.py`). SDPA takes it as it is; the kernel takes a
    key-padding mask as its key bias and a dense mask as a block-sparse mask when the mask's tiles
    are uniform; any other dense mask runs SDPA (exact; said once per site)."""
    impl = select_impl(q, k, v, is_causal=is_causal, backend=plan.backend, block_sparse=False)
    warn_fallback(plan.site_path, impl)
    blocks = None
    if impl.impl != SDPA and call_mask.kind == "dense":
        blocks = largest_uniform_block(call_mask, q.shape[seq_dim(layout)], k.shape[seq_dim(layout)])
        if blocks is None:
            warn_once((plan.site_path, "mask tiles"), "ditaccel: attention at %s runs SDPA with its mask (exact): "
                      "the mask is not made of whole 16x16 (or larger) attended/masked tiles, which the kernel "
                      "needs", plan.site_path or "?")
            impl = ImplChoice(SDPA, "mask tiles")
    quant = plan.quant if impl.impl != SDPA else "none"  # a fallback to SDPA is exact attention
    problem = tunables.AttentionProblem(q, k, v, layout, scale, is_causal, quant, call_mask, blocks, None,
                                        default_candidate(impl))
    return tunables.run_tuned(problem, plan).contiguous()


__all__ = ["run_kernel", "dense_attention", "default_candidate"]
