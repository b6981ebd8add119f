"""XAttention: block selection by strided antidiagonal scoring (Xu et al., arXiv 2503.16428).

XAttention estimates each block's attention mass cheaply: inside every ``stride x stride``
sub-square of the score matrix it sums one antidiagonal, softmaxes those estimates per
(strided) query row, sums them per block, and keeps, per query block, the highest-mass
blocks until their cumulative share reaches a threshold ``tau``.  Data-dependent: one mask
per (batch, head), recomputed from q and k.

Definition (the reference's non-causal "inverse" estimate, mit-han-lab/x-attention
``xattn_estimate`` + ``find_blocks_chunked``)
---------------------------------------------------------------------------------
With ``s = stride``, query group ``r`` = tokens ``[r*s, r*s + s)`` and key group ``c`` likewise
(tokens past the sequence end count as zero vectors)::

    A[r, c] = sum_{t=0}^{s-1} q[r*s + s-1-t] . k[c*s + t]         (antidiagonal of the sub-square)
    P[r, :] = softmax_c( A[r, c] * scale / s )                       (scale = 1/sqrt(D) by default)
    M[I, J] = sum_{r in query block I} sum_{c in kv block J} P[r, c]  (block mass)

Per query block ``I`` the candidate blocks are ordered: *forced* blocks first (the diagonal
blocks -- kv blocks overlapping the query block's tokens -- and kv blocks made of text tokens
only, which the kernel computes anyway), then the others by decreasing mass; a block is kept
iff it is forced or the mass of the blocks before it is ``< tau * sum_J M[I, J]``.  So the
kept mass reaches ``tau`` with the fewest blocks in that order.  Text rows and columns are
dense through the mask's ranges.

Where we differ from the reference: it forces the diagonal (and first) block only in causal
mode -- we always keep the diagonal, as asked by the design; its non-causal path pads keys to
its chunk size with zeros and lets those padded columns take softmax mass -- we only score key
groups holding at least one real token.  ``stride`` must divide both block sizes so that
groups never straddle blocks.  The reference's video setting (HunyuanVideo) is stride 8 and
tau 0.9 -- 0.95.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import BHSD, GridLike, TextSegment, TokenLayout, check_tensor_layout, seq_dim, to_bhsd
from ..kernels.block_mask import check_block_sizes
from .common import check_float, check_int
from .pattern import SparsePattern, self_attention_mask
from .policy import ChoiceInputs, PatternChoice, Policy

__all__ = ["AntidiagonalParams", "ANTIDIAGONAL", "generate_antidiagonal_mask", "antidiagonal_block_mass",
           "select_blocks"]


@dataclass(frozen=True)
class AntidiagonalParams:
    """stride: antidiagonal stride in tokens (int >= 1, dividing the block size).
    threshold: cumulative block-mass share to keep per query block, in (0, 1].
    """

    stride: int = 8
    threshold: float = 0.9

    def __post_init__(self) -> None:
        check_int("stride", self.stride, 1)
        check_float("threshold", self.threshold, 0.0, 1.0, lo_open=True)


_BUDGET = 1 << 24  # elements of one [B, H, rows, groups] score chunk


def antidiagonal_block_mass(
    q: Tensor,
    k: Tensor,
    *,
    block_m: int = 128,
    block_n: int = 128,
    stride: int = 8,
    scale: Optional[float] = None,
    layout: str = BHSD,
) -> Tensor:
    """Estimated block mass ``M``: float32 [B, H, NQB, NKB] (each strided row sums to 1).

    q: [B, H, Sq, D] (``"bhsd"``) or [B, Sq, H, D] (``"bshd"``); k likewise, with H or a
    divisor of H heads (grouped-query).  See the module docstring for the definition.
    """
    check_block_sizes(block_m, block_n)
    check_int("stride", stride, 1)
    if block_m % stride or block_n % stride:
        raise ValueError(f"stride must divide block_m={block_m} and block_n={block_n}, got {stride}")
    check_tensor_layout(layout)
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor ({layout})")
    qb = to_bhsd(q, layout)  # [B, H, Sq, D]
    kb = to_bhsd(k, layout)  # [B, Hk, Skv, D]
    batch, heads, q_len, dim = qb.shape
    if kb.shape[1] != heads:
        if heads % kb.shape[1]:
            raise ValueError(f"k has {kb.shape[1]} heads, which does not divide q's {heads}")
        kb = kb.repeat_interleave(heads // kb.shape[1], dim=1)
    kv_len = kb.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    compute = torch.float64 if qb.dtype == torch.float64 else torch.float32

    # Strided views: concatenate the s tokens of a group along features; queries reversed
    # inside the group, so the dot product of group rows is the antidiagonal sum.
    gq, gk = -(-q_len // stride), -(-kv_len // stride)
    qp = F.pad(qb.to(compute), (0, 0, 0, gq * stride - q_len)).view(batch, heads, gq, stride, dim)
    kp = F.pad(kb.to(compute), (0, 0, 0, gk * stride - kv_len)).view(batch, heads, gk, stride, dim)
    q_groups = qp.flip(3).reshape(batch, heads, gq, stride * dim)  # [B, H, Gq, s*D]
    k_groups = kp.reshape(batch, heads, gk, stride * dim)  # [B, H, Gk, s*D]

    nqb, nkb = -(-q_len // block_m), -(-kv_len // block_n)
    qg_per_block, kg_per_block = block_m // stride, block_n // stride
    k_block_of = torch.arange(gk, device=qb.device) // kg_per_block  # [Gk]
    mass = torch.zeros(batch, heads, nqb, nkb, dtype=compute, device=qb.device)
    # Chunk over whole query blocks so one score chunk stays ~_BUDGET elements.
    blocks_per_chunk = max(1, _BUDGET // max(1, batch * heads * gk * qg_per_block))
    for b0 in range(0, nqb, blocks_per_chunk):
        b1 = min(nqb, b0 + blocks_per_chunk)
        r0, r1 = b0 * qg_per_block, min(gq, b1 * qg_per_block)
        logits = torch.matmul(q_groups[:, :, r0:r1], k_groups.transpose(-1, -2)) * (scale / stride)  # [B,H,R,Gk]
        probs = torch.softmax(logits, dim=-1)
        q_block_of = torch.arange(r0, r1, device=qb.device) // qg_per_block - b0  # [R]
        per_row = torch.zeros(batch, heads, r1 - r0, nkb, dtype=compute, device=qb.device)
        per_row.index_add_(3, k_block_of, probs)  # [B, H, R, NKB]
        mass[:, :, b0:b1].index_add_(2, q_block_of, per_row)
    return mass.to(torch.float32)


def generate_antidiagonal_mask(
    q: Tensor,
    k: Tensor,
    grid: Optional[GridLike] = None,
    text: Optional[TextSegment] = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    stride: int = 8,
    threshold: float = 0.9,
    scale: Optional[float] = None,
    layout: str = BHSD,
) -> SparsePattern:
    """XAttention pattern for these q/k: one block mask per (batch, head), identity permutation.

    grid/text: the joint sequence's token grid and text segment (text rows/columns dense; with
    a grid the sequence length is checked).  stride: antidiagonal stride, dividing both block
    sizes.  threshold: cumulative block-mass share to keep, in (0, 1].  Not cached (depends on
    the data).
    """
    check_block_sizes(block_m, block_n)
    tau = AntidiagonalParams(stride=stride, threshold=threshold).threshold
    dim = seq_dim(layout)
    q_len, kv_len = q.shape[dim], k.shape[dim]
    if q_len != kv_len:
        raise ValueError(f"antidiagonal masks are for self-attention: q has {q_len} tokens, k has {kv_len}")
    text_range = None
    if grid is not None:
        seq_layout = TokenLayout.of(grid, text)
        if seq_layout.total != q_len:
            raise ValueError(f"q/k have {q_len} tokens but the grid and text describe {seq_layout.total}")
        text_range = seq_layout.text_range
    elif text is not None:
        if text.length is None or text.position not in ("before", "after"):
            raise ValueError("text needs a concrete length and position 'before'/'after'")
        text_range = text.token_range(q_len) if text.length else None

    mass = antidiagonal_block_mass(q, k, block_m=block_m, block_n=block_n, stride=stride, scale=scale, layout=layout)
    blocks = select_blocks(mass, _forced_blocks(q_len, block_m, block_n, text_range, mass.device), tau)
    return SparsePattern(self_attention_mask(blocks, block_m, block_n, q_len, text_range), None, name="antidiagonal")


def _forced_blocks(seq: int, block_m: int, block_n: int, text_range, device) -> Tensor:
    """bool [NQB, NKB]: diagonal blocks and kv blocks entirely made of text tokens."""
    nqb, nkb = -(-seq // block_m), -(-seq // block_n)
    qb = torch.arange(nqb, device=device)
    kb = torch.arange(nkb, device=device)
    q_lo, q_hi = qb * block_m, torch.clamp((qb + 1) * block_m, max=seq)  # [NQB] token range
    k_lo, k_hi = kb * block_n, torch.clamp((kb + 1) * block_n, max=seq)  # [NKB]
    forced = (q_lo[:, None] < k_hi[None, :]) & (k_lo[None, :] < q_hi[:, None])  # overlapping tokens
    if text_range is not None and text_range[0] < text_range[1]:
        text_cols = (k_lo >= text_range[0]) & (k_hi <= text_range[1])  # [NKB]
        forced |= text_cols[None, :]
    return forced


def select_blocks(mass: Tensor, forced: Tensor, threshold: float) -> Tensor:
    """Threshold selection: bool like ``mass`` [..., NQB, NKB] (see module docstring).

    forced: bool broadcastable to ``mass``; those blocks come first and are always kept.
    """
    mass = mass.to(torch.float64)
    total = mass.sum(-1, keepdim=True)  # [..., NQB, 1]
    share = mass / torch.where(total > 0, total, torch.ones_like(total))  # in [0, 1]
    forced = forced.expand_as(share)
    key = torch.where(forced, share + 2.0, share)  # forced first, then by decreasing mass
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    sorted_share = torch.gather(share, -1, order)
    before = F.pad(torch.cumsum(sorted_share, dim=-1)[..., :-1], (1, 0))  # mass of the blocks before each
    keep_sorted = (before < threshold) | torch.gather(forced, -1, order)
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(-1, order, keep_sorted)
    return keep


def _choose_blocks(inputs: ChoiceInputs, tokens: TokenLayout, block: int, p: AntidiagonalParams,
                   statics: tuple[SparsePattern, ...]) -> PatternChoice:
    """XAttention: a fresh mask per (batch, head) from this call's q and k."""
    pattern = generate_antidiagonal_mask(inputs.q, inputs.k, tokens, block_m=block, block_n=block, stride=p.stride,
                                         threshold=p.threshold, scale=inputs.scale, layout=inputs.tensor_layout)
    return PatternChoice((pattern,))


def _check_stride(p: AntidiagonalParams, block: int) -> None:
    if block % p.stride:
        raise ValueError(f"stride={p.stride} must divide the block size {block} (antidiagonal groups never "
                         "straddle blocks)")


ANTIDIAGONAL = Policy(
    name="antidiagonal",
    params=AntidiagonalParams,
    static_patterns=lambda tokens, block, p, device: (),
    choose=_choose_blocks,
    refresh_steps=lambda p: 0,
    check_block=_check_stride,
    paper="XAttention (Xu et al., arXiv 2503.16428)",
)
