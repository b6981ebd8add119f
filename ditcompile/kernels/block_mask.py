"""Block-sparse attention masks in the form FlexAttention's ``BlockMask`` uses.

A :class:`BlockSparseMask` tiles the ``q_len x kv_len`` score matrix into blocks of
``block_m`` query rows by ``block_n`` key columns (the last row/column of blocks may be
ragged).  For every query block it lists the key blocks that are attended::

    kv_num_blocks  int32 [B|1, H|1, NQB]          number of listed kv blocks per query block
    kv_indices     int32 [B|1, H|1, NQB, MAXKB]   listed kv-block indices, sorted ascending;
                                                   entries past ``kv_num_blocks`` are padding

where ``NQB = ceil(q_len / block_m)`` and ``NKB = ceil(kv_len / block_n)``.  A leading
dimension of size 1 broadcasts over the batch / heads.

On top of the block lists, two optional *token-level* ranges describe the text tokens of a
DiT's joint sequence (they need not be aligned to blocks):

* ``dense_q_range=(start, end)``: query tokens ``start <= i < end`` attend every key;
* ``dense_kv_range=(start, end)``: every query attends keys ``start <= j < end``.

Token-level semantics (exact, also for ragged blocks and unaligned ranges)::

    allowed(i, j) = listed(i // block_m, j // block_n)
                    or start_q <= i < end_q
                    or start_kv <= j < end_kv

A query row with no allowed key produces a zero output row (see ``reference.py``).

Kernel schedule
---------------
At construction the mask folds the dense ranges into a *schedule* the Triton kernel walks
(computed once, on the mask's device):

* ``full_kv_num_blocks / full_kv_indices``: tiles where every in-bounds (i, j) is allowed;
  the kernel visits them with no per-element masking at all.
* ``partial_kv_num_blocks / partial_kv_indices / partial_kv_flags``: tiles that need
  per-element masking: the ragged last kv block, and blocks visited only because of a dense
  range.  ``flag == 1`` means "listed block, mask only the kv bounds"; ``flag == 0`` means
  "allowed only where the query is in ``dense_q_range`` or the key is in ``dense_kv_range``".

Both lists are sorted ascending and trimmed to the longest row (at least 1 column).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..geometry import cdiv

__all__ = ["BlockSparseMask", "MIN_BLOCK", "check_block_sizes"]

Range = tuple[int, int]


@dataclass(frozen=True, eq=False)
class BlockSparseMask:
    """Block-sparse mask (FlexAttention ``BlockMask`` layout) plus dense text rows/columns.

    Build it with :meth:`from_dense_block_mask` or :meth:`full`; the fields below are
    validated in ``__post_init__`` and the kernel schedule is derived there.
    """

    kv_num_blocks: Tensor  # int32 [B|1, H|1, NQB]
    kv_indices: Tensor  # int32 [B|1, H|1, NQB, MAXKB], sorted ascending, padding after count
    block_m: int  # query rows per block
    block_n: int  # key columns per block
    q_len: int
    kv_len: int
    dense_q_range: Range | None = None  # query tokens that attend every key
    dense_kv_range: Range | None = None  # key tokens every query attends

    # Derived kernel schedule (see module docstring); filled in __post_init__.
    full_kv_num_blocks: Tensor = field(init=False, repr=False)  # int32 [B|1, H|1, NQB]
    full_kv_indices: Tensor = field(init=False, repr=False)  # int32 [B|1, H|1, NQB, WF]
    partial_kv_num_blocks: Tensor = field(init=False, repr=False)  # int32 [B|1, H|1, NQB]
    partial_kv_indices: Tensor = field(init=False, repr=False)  # int32 [B|1, H|1, NQB, WP]
    partial_kv_flags: Tensor = field(init=False, repr=False)  # int32 [B|1, H|1, NQB, WP]

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        self._validate()
        dense = self.to_dense_block_mask()  # also validates the index contents
        for name, value in _build_schedule(self, dense).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dense_block_mask(
        cls,
        block_mask: Tensor,
        block_m: int,
        block_n: int,
        q_len: int,
        kv_len: int,
        *,
        dense_q_range: Range | None = None,
        dense_kv_range: Range | None = None,
    ) -> "BlockSparseMask":
        """From a bool block mask ``[B|1, H|1, NQB, NKB]`` (or ``[NQB, NKB]``)."""
        if not isinstance(block_mask, Tensor) or block_mask.dtype != torch.bool:
            raise ValueError("block_mask must be a torch.bool tensor of shape [B|1, H|1, NQB, NKB] or [NQB, NKB]")
        if block_mask.dim() == 2:
            block_mask = block_mask[None, None]
        if block_mask.dim() != 4:
            raise ValueError(f"block_mask must have 2 or 4 dims, got shape {tuple(block_mask.shape)}")
        check_block_sizes(block_m, block_n)
        nqb, nkb = cdiv(q_len, block_m), cdiv(kv_len, block_n)
        if tuple(block_mask.shape[-2:]) != (nqb, nkb):
            raise ValueError(
                f"block_mask has {tuple(block_mask.shape[-2:])} blocks, but q_len={q_len}, kv_len={kv_len} with "
                f"block_m={block_m}, block_n={block_n} need (NQB, NKB) = ({nqb}, {nkb})"
            )
        kv_num_blocks, kv_indices = _dense_to_lists(block_mask)
        return cls(
            kv_num_blocks, kv_indices, block_m, block_n, q_len, kv_len,
            dense_q_range=dense_q_range, dense_kv_range=dense_kv_range,
        )  # fmt: skip

    @classmethod
    def full(
        cls,
        q_len: int,
        kv_len: int,
        block_m: int = 128,
        block_n: int = 128,
        *,
        device: torch.device | str | None = None,
    ) -> "BlockSparseMask":
        """Every query block attends every kv block (dense attention as a mask)."""
        check_block_sizes(block_m, block_n)
        nqb, nkb = cdiv(q_len, block_m), cdiv(kv_len, block_n)
        return cls.from_dense_block_mask(
            torch.ones(1, 1, nqb, nkb, dtype=torch.bool, device=device), block_m, block_n, q_len, kv_len
        )

    # ------------------------------------------------------------------ queries
    @property
    def num_q_blocks(self) -> int:
        return cdiv(self.q_len, self.block_m)

    @property
    def num_kv_blocks(self) -> int:
        return cdiv(self.kv_len, self.block_n)

    @property
    def device(self) -> torch.device:
        return self.kv_num_blocks.device

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B|1, H|1, q_len, kv_len)``: the token-level shape the mask describes."""
        return (self.kv_num_blocks.shape[0], self.kv_num_blocks.shape[1], self.q_len, self.kv_len)

    def to_dense_block_mask(self) -> Tensor:
        """The listed blocks as bool ``[B|1, H|1, NQB, NKB]`` (without the dense ranges)."""
        nkb = self.num_kv_blocks
        count = self.kv_num_blocks.long()  # [B, H, NQB]
        width = self.kv_indices.shape[-1]
        listed = torch.arange(width, device=self.device) < count[..., None]  # [B, H, NQB, MAXKB]
        idx = self.kv_indices.long()
        if bool(((idx < 0) | (idx >= nkb))[listed].any()):
            raise ValueError(f"kv_indices has entries outside [0, {nkb}) among the first kv_num_blocks per row")
        if width > 1 and bool(((idx[..., 1:] <= idx[..., :-1]) & listed[..., 1:]).any()):
            raise ValueError("kv_indices must be strictly increasing (sorted, no duplicates) within kv_num_blocks")
        dense = torch.zeros(*count.shape, nkb + 1, dtype=torch.bool, device=self.device)
        dense.scatter_(-1, torch.where(listed, idx, nkb), True)  # padding goes to column nkb
        return dense[..., :nkb]

    def allowed(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Token-level mask: bool ``[B|1, H|1, R, C]``, true where query token ``rows[r]`` may
        attend key token ``cols[c]`` (int64 positions in the mask's token order; listed blocks,
        ragged last blocks and the dense text ranges included). Costs O(R * C)."""
        rows, cols = rows.to(self.device), cols.to(self.device)
        blocks = self.to_dense_block_mask()  # [B, H, NQB, NKB]
        allowed = blocks[:, :, rows // self.block_m][..., cols // self.block_n]  # [B, H, R, C]
        if self.dense_q_range is not None:
            start, end = self.dense_q_range
            allowed = allowed | ((rows >= start) & (rows < end))[:, None]
        if self.dense_kv_range is not None:
            start, end = self.dense_kv_range
            allowed = allowed | ((cols >= start) & (cols < end))[None, :]
        return allowed

    def schedule_block_mask(self) -> Tensor:
        """Blocks the kernel computes (listed + added by dense ranges), bool ``[B|1,H|1,NQB,NKB]``."""
        full = _lists_to_dense(self.full_kv_num_blocks, self.full_kv_indices, self.num_kv_blocks)
        partial = _lists_to_dense(self.partial_kv_num_blocks, self.partial_kv_indices, self.num_kv_blocks)
        return full | partial

    def density(self) -> float:
        """Fraction of (query block, kv block) tiles the kernel computes, dense ranges included.

        This is the cost relative to dense attention; averaged over the mask's B|1 x H|1.
        """
        return float(self.schedule_block_mask().float().mean())

    def to(self, device: torch.device | str) -> "BlockSparseMask":
        """The same mask with its tensors on ``device``."""
        return dataclasses.replace(
            self, kv_num_blocks=self.kv_num_blocks.to(device), kv_indices=self.kv_indices.to(device)
        )

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        check_block_sizes(self.block_m, self.block_n)
        for name in ("q_len", "kv_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        num, idx = self.kv_num_blocks, self.kv_indices
        if not isinstance(num, Tensor) or num.dtype != torch.int32 or num.dim() != 3:
            raise ValueError("kv_num_blocks must be an int32 tensor of shape [B|1, H|1, NQB]")
        if not isinstance(idx, Tensor) or idx.dtype != torch.int32 or idx.dim() != 4:
            raise ValueError("kv_indices must be an int32 tensor of shape [B|1, H|1, NQB, MAXKB]")
        if idx.shape[:3] != num.shape or idx.device != num.device:
            raise ValueError(
                f"kv_indices {tuple(idx.shape)} must share its first 3 dims and device with kv_num_blocks {tuple(num.shape)}"
            )
        if num.shape[2] != self.num_q_blocks:
            raise ValueError(
                f"kv_num_blocks has {num.shape[2]} query blocks, but q_len={self.q_len} with block_m={self.block_m} "
                f"needs {self.num_q_blocks}"
            )
        if num.numel() and (int(num.min()) < 0 or int(num.max()) > min(idx.shape[-1], self.num_kv_blocks)):
            raise ValueError(
                f"kv_num_blocks must lie in [0, min(MAXKB={idx.shape[-1]}, NKB={self.num_kv_blocks})]"
            )
        for name, length in (("dense_q_range", self.q_len), ("dense_kv_range", self.kv_len)):
            rng = getattr(self, name)
            if rng is None:
                continue
            if len(rng) != 2 or not all(isinstance(x, int) for x in rng) or not 0 <= rng[0] <= rng[1] <= length:
                raise ValueError(f"{name} must be (start, end) with 0 <= start <= end <= {length}, got {rng!r}")
            object.__setattr__(self, name, (int(rng[0]), int(rng[1])))


# ---------------------------------------------------------------------- helpers


MIN_BLOCK = 16  # the kernel's smallest tile: mask blocks are positive multiples of it


def check_block_sizes(block_m: int, block_n: int) -> None:
    """Mask block sizes must be positive multiples of MIN_BLOCK; ValueError naming the bad one."""
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % MIN_BLOCK:
            raise ValueError(f"{name} must be a positive multiple of {MIN_BLOCK} (the kernel's smallest tile), "
                             f"got {value!r}")


def _dense_to_lists(block_mask: Tensor, min_width: int | None = None) -> tuple[Tensor, Tensor]:
    """bool [..., NKB] -> (int32 counts [...], int32 sorted indices [..., W]).

    W is NKB unless ``min_width`` is given, in which case the lists are trimmed to
    ``max(min_width, longest row)``.
    """
    counts = block_mask.sum(-1, dtype=torch.int32)
    # Stable sort of "not listed" puts listed columns first, in ascending order.
    order = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    if min_width is not None:
        width = max(min_width, int(counts.max()) if counts.numel() else 0)
        order = order[..., :width]
    return counts, order.contiguous()


def _lists_to_dense(counts: Tensor, indices: Tensor, nkb: int) -> Tensor:
    listed = torch.arange(indices.shape[-1], device=indices.device) < counts[..., None].long()
    dense = torch.zeros(*counts.shape, nkb + 1, dtype=torch.bool, device=indices.device)
    dense.scatter_(-1, torch.where(listed, indices.long(), nkb), True)
    return dense[..., :nkb]


def _range_blocks(rng: Range | None, block: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For a token range, which blocks it touches and which it covers (all in-bounds tokens).

    Returns two bool tensors [NB].
    """
    nb = cdiv(length, block)
    if rng is None or rng[0] >= rng[1]:
        none = torch.zeros(nb, dtype=torch.bool, device=device)
        return none, none
    starts = torch.arange(nb, device=device) * block
    ends = torch.clamp(starts + block, max=length)  # ragged last block
    touch = (starts < rng[1]) & (ends > rng[0])
    cover = (starts >= rng[0]) & (ends <= rng[1])
    return touch, cover


def _build_schedule(mask: BlockSparseMask, listed: Tensor) -> dict[str, Tensor]:
    """Fold the dense ranges into full/partial tile lists for the kernel."""
    dev = listed.device
    q_touch, q_cover = _range_blocks(mask.dense_q_range, mask.block_m, mask.q_len, dev)  # [NQB]
    k_touch, k_cover = _range_blocks(mask.dense_kv_range, mask.block_n, mask.kv_len, dev)  # [NKB]
    visit = listed | q_touch[:, None] | k_touch[None, :]  # tiles with at least one allowed pair
    exact = listed | q_cover[:, None] | k_cover[None, :]  # tiles where every in-bounds pair is allowed
    ragged = torch.zeros_like(k_touch)
    if mask.kv_len % mask.block_n:
        ragged[-1] = True  # the ragged last kv block always needs kv-bounds masking
    full = visit & exact & ~ragged
    partial = visit & ~full
    full_num, full_idx = _dense_to_lists(full, min_width=1)
    part_num, part_idx = _dense_to_lists(partial, min_width=1)
    flags = torch.gather(exact.expand_as(partial).to(torch.int32), -1, part_idx.long())
    return {
        "full_kv_num_blocks": full_num,
        "full_kv_indices": full_idx,
        "partial_kv_num_blocks": part_num,
        "partial_kv_indices": part_idx,
        "partial_kv_flags": flags.contiguous(),
    }
