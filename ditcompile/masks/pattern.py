"""`SparsePattern`: a block mask over the joint sequence plus the token permutation it assumes.

A sparse-attention policy answers two questions: in which order the kernel sees the tokens
(some patterns only become block-contiguous after a reordering: Sparse VideoGen's temporal
heads, sliding-tile attention's tiles) and which (query block, kv block) tiles it computes.
`SparsePattern` holds both::

    mask         BlockSparseMask over the *permuted* sequence (q_len == kv_len == S);
                 listed blocks [B|1, H|1, NQB, NKB], text rows/columns dense via its ranges
    permutation  int64 [S] or None (identity): position i of the permuted sequence holds
                 original token permutation[i]; text tokens never move

Running a pattern::

    qp, kp, vp = (apply_permutation(t, pattern, seq_dim) for t in (q, k, v))
    out = undo_permutation(attention(qp, kp, vp, pattern.mask), pattern, seq_dim)

Patterns combine with :func:`union` / :func:`intersection` (same permutation, block sizes,
lengths and text ranges required).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..kernels.block_mask import BlockSparseMask

__all__ = [
    "SparsePattern",
    "PatternInvariantError",
    "self_attention_mask",
    "apply_permutation",
    "undo_permutation",
    "union",
    "intersection",
    "pattern_token_rows",
]


class PatternInvariantError(ValueError):
    """A pattern breaks an invariant every plan keeps (each query attends at least one key).
    The sparse pass and the executor answer it with dense attention and a reason in the report."""


@dataclass(frozen=True, eq=False)
class SparsePattern:
    """A block-sparse attention pattern, possibly over a token permutation (see module doc)."""

    mask: BlockSparseMask
    permutation: Optional[Tensor] = None  # int64 [S]; None = identity
    name: str = "pattern"
    inverse_permutation: Optional[Tensor] = field(init=False, repr=False)  # int64 [S]; None = identity

    def __post_init__(self) -> None:
        if not isinstance(self.mask, BlockSparseMask):
            raise ValueError(f"mask must be a BlockSparseMask, got {type(self.mask).__name__}")
        if self.mask.q_len != self.mask.kv_len:
            raise ValueError(
                f"a SparsePattern is over one (self-attention) sequence: mask has q_len={self.mask.q_len} "
                f"!= kv_len={self.mask.kv_len}"
            )
        _check_every_query_attends(self.mask, self.name)
        inverse = None
        perm = self.permutation
        if perm is not None:
            seq = self.mask.q_len
            if not isinstance(perm, Tensor) or perm.dtype != torch.int64 or perm.shape != (seq,):
                raise ValueError(f"permutation must be an int64 tensor of shape [{seq}] (the mask's sequence length)")
            if perm.device != self.mask.device:
                raise ValueError(f"permutation is on {perm.device} but the mask is on {self.mask.device}")
            in_range = seq == 0 or (int(perm.min()) >= 0 and int(perm.max()) < seq)
            if not in_range or not bool((torch.bincount(perm, minlength=seq) == 1).all()):
                raise ValueError(f"permutation must hold every index 0..{seq - 1} exactly once")
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(seq, device=perm.device)
            for rng in {self.mask.dense_q_range, self.mask.dense_kv_range} - {None}:
                ids = torch.arange(*rng, device=perm.device)
                if not torch.equal(perm[ids], ids):
                    raise ValueError(f"permutation moves text tokens (dense range {rng}); text tokens never move")
        object.__setattr__(self, "inverse_permutation", inverse)

    @property
    def seq_len(self) -> int:
        return self.mask.q_len

    @property
    def density(self) -> float:
        """Fraction of tiles the kernel computes (text rows/columns included)."""
        return self.mask.density()

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def to(self, device: torch.device | str) -> SparsePattern:
        """The same pattern with its mask and permutation on ``device``."""
        perm = None if self.permutation is None else self.permutation.to(device)
        return SparsePattern(self.mask.to(device), perm, name=self.name)

    def __repr__(self) -> str:
        b, h, _, _ = self.mask.shape
        perm = "identity" if self.permutation is None else "permuted"
        return (
            f"SparsePattern({self.name!r}, S={self.seq_len}, blocks={self.mask.block_m}x{self.mask.block_n}, "
            f"B|1={b}, H|1={h}, {perm}, density={self.density:.3f})"
        )


# ---------------------------------------------------------------------- permutation


def _permute(x: Tensor, index: Optional[Tensor], seq_dim: int, seq_len: int) -> Tensor:
    if index is None:
        return x
    if x.shape[seq_dim] != seq_len:
        raise ValueError(f"x has {x.shape[seq_dim]} tokens along dim {seq_dim}, the pattern expects {seq_len}")
    return x.index_select(seq_dim, index.to(x.device))


def apply_permutation(x: Tensor, pattern: SparsePattern, seq_dim: int) -> Tensor:
    """Original token order -> the pattern's order: ``out[..., i, ...] = x[..., perm[i], ...]``."""
    return _permute(x, pattern.permutation, seq_dim, pattern.seq_len)


def undo_permutation(x: Tensor, pattern: SparsePattern, seq_dim: int) -> Tensor:
    """The pattern's order -> original token order (inverse of :func:`apply_permutation`)."""
    return _permute(x, pattern.inverse_permutation, seq_dim, pattern.seq_len)


# ---------------------------------------------------------------------- combination


def _check_compatible(a: SparsePattern, b: SparsePattern, op: str) -> None:
    ma, mb = a.mask, b.mask
    if (ma.block_m, ma.block_n, ma.q_len, ma.kv_len) != (mb.block_m, mb.block_n, mb.q_len, mb.kv_len):
        raise ValueError(
            f"cannot {op} patterns {a.name!r} and {b.name!r}: block sizes / lengths differ "
            f"({ma.block_m}x{ma.block_n}, S={ma.q_len}) vs ({mb.block_m}x{mb.block_n}, S={mb.q_len})"
        )
    if (ma.dense_q_range, ma.dense_kv_range) != (mb.dense_q_range, mb.dense_kv_range):
        raise ValueError(
            f"cannot {op} patterns {a.name!r} and {b.name!r}: their text ranges differ "
            f"({ma.dense_q_range}, {ma.dense_kv_range}) vs ({mb.dense_q_range}, {mb.dense_kv_range})"
        )
    pa, pb = a.permutation, b.permutation
    same = (pa is None and pb is None) or (
        pa is not None and pb is not None and torch.equal(pa, pb.to(pa.device))
    )
    if not same:
        raise ValueError(
            f"cannot {op} patterns {a.name!r} and {b.name!r}: they use different token permutations "
            f"({'identity' if pa is None else 'permuted'} vs {'identity' if pb is None else 'permuted'}); "
            "a block mask only combines with another over the same token order"
        )
    if ma.device != mb.device:
        raise ValueError(f"cannot {op} patterns on different devices ({ma.device} vs {mb.device})")


def self_attention_mask(blocks: Tensor, block_m: int, block_n: int, length: int,
                        text: Optional[tuple[int, int]] = None) -> BlockSparseMask:
    """The mask of a self-attention pattern over `length` tokens from its bool block mask
    `blocks` ([B|1, H|1, NQB, NKB] or [NQB, NKB]), with the blocks that hold each token's own key
    added (the diagonal, as the papers' masks have it: every query attends at least itself) and
    the text rows/columns `text` dense. Every policy builds its masks here."""
    if blocks.dim() == 2:
        blocks = blocks[None, None]
    pos = torch.arange(length, device=blocks.device)
    if text is not None:
        pos = pos[(pos < text[0]) | (pos >= text[1])]  # text rows and columns are dense anyway
    own = torch.zeros(blocks.shape[-2:], dtype=torch.bool, device=blocks.device)
    own[pos // block_m, pos // block_n] = True  # [NQB, NKB]: block (i, j) holds a token's own key
    return BlockSparseMask.from_dense_block_mask(
        (blocks | own).contiguous(), block_m, block_n, length, length, dense_q_range=text, dense_kv_range=text)


def _check_every_query_attends(mask: BlockSparseMask, name: str) -> None:
    """PatternInvariantError when a query block of `mask` attends no key at all (its output would be 0)."""
    kv = mask.dense_kv_range
    if kv is not None and kv[1] > kv[0]:
        return  # every query attends the dense text keys
    empty = (mask.kv_num_blocks == 0).nonzero()
    if len(empty):
        b, h, block = (int(x) for x in empty[0])
        raise PatternInvariantError(f"sparse pattern {name!r}: query block {block} (batch {b}, head {h}) attends no key block; "
                         f"its tokens' attention output would be 0 ({len(empty)} such blocks)")


def _combine(a: SparsePattern, b: SparsePattern, op: str, fn, sep: str) -> SparsePattern:
    _check_compatible(a, b, op)
    blocks = fn(a.mask.to_dense_block_mask(), b.mask.to_dense_block_mask())  # broadcast [B|1, H|1, NQB, NKB]
    m = a.mask
    mask = BlockSparseMask.from_dense_block_mask(
        blocks.contiguous(), m.block_m, m.block_n, m.q_len, m.kv_len,
        dense_q_range=m.dense_q_range, dense_kv_range=m.dense_kv_range,
    )  # fmt: skip
    return SparsePattern(mask, a.permutation, name=f"({a.name}{sep}{b.name})")


def union(a: SparsePattern, b: SparsePattern) -> SparsePattern:
    """Blocks listed by either pattern (text rows/columns stay dense)."""
    return _combine(a, b, "union", torch.logical_or, "|")


def intersection(a: SparsePattern, b: SparsePattern) -> SparsePattern:
    """Blocks listed by both patterns (text rows/columns stay dense)."""
    return _combine(a, b, "intersect", torch.logical_and, "&")


# ---------------------------------------------------------------------- token-level view


def pattern_token_rows(pattern: SparsePattern, rows: Tensor) -> Tensor:
    """Which keys the original-order query tokens ``rows`` may attend, in original order.

    rows: int64 [R] original token indices.  Returns bool [B|1, H|1, R, S] with
    ``out[..., r, j]`` true iff original token rows[r] attends original token j under the
    pattern (block lists, ragged blocks and text ranges included).  Costs O(R * S).
    """
    dev = pattern.device
    rows = rows.to(dev)
    inv = pattern.inverse_permutation
    prow = rows if inv is None else inv[rows]  # [R] positions in the permuted sequence
    pcol = torch.arange(pattern.seq_len, device=dev) if inv is None else inv  # [S] permuted position of key j
    return pattern.mask.allowed(prow, pcol)  # [B|1, H|1, R, S]
