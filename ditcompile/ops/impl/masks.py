"""An SDPA ``attn_mask`` in the forms the kernels read (the op's mask translation).

    CallMask.of(plan.mask, attn_mask)        the mask of one call of `ditaccel::attention`
      .attn_mask                             as the model built it (SDPA semantics; exact paths)
      .key_bias                              "key_padding": float32 [B|1, Skv] added to the scores
      .block_mask(q_len, kv_len, block)      "dense": a BlockSparseMask when the mask is made of
                                             whole block x block tiles (block-causal frames,
                                             SkyReels-V2 diffusion forcing), else None

A key-padding mask ([B|1, 1, 1, Skv], text padding in HunyuanVideo / Qwen-Image joint attention)
composes with every plan: the kernel adds the bias in every tile. A dense mask composes with the
kernel when its tiles are uniform at the kernel's block size: each tile is all allowed or all
masked, which block-causal masks over frames are when a frame spans whole blocks. Any other mask
runs exactly with SDPA (the caller says so once per site).

The block conversion reads the mask's values (a device sync on a GPU), so its result is kept per
mask tensor (weakly: a freed mask drops its entry) and version (an in-place change is seen): a
model that builds its block-causal mask once pays the conversion once.
"""
from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...kernels.attention.reference import key_bias_from_mask
from ...kernels.block_mask import BlockSparseMask

BLOCK_SIZES = (128, 64, 32, 16)  # tried largest first: the kernel's preferred tiles


@dataclass(frozen=True)
class CallMask:
    """The mask of one attention call (see the module docstring); kind "none" carries nothing."""

    kind: str = "none"                     # "none", "key_padding" or "dense" (AttentionPlan.mask)
    attn_mask: Optional[Tensor] = None     # bool or float, broadcastable to [B, H, Sq, Skv]

    @classmethod
    def of(cls, kind: str, attn_mask: Optional[Tensor]) -> "CallMask":
        return cls() if attn_mask is None else cls(kind, attn_mask)

    @functools.cached_property
    def key_bias(self) -> Optional[Tensor]:
        """float32 [B|1, Skv] for kind "key_padding" (else None); built on first use only, so
        calls that run SDPA with the mask as it is never build it."""
        return key_bias_from_mask(self.attn_mask) if self.kind == "key_padding" else None

    def block_mask(self, q_len: int, kv_len: int, block: int) -> Optional[BlockSparseMask]:
        """The dense mask as a BlockSparseMask with `block` x `block` blocks, or None when a tile
        is partly masked, the mask is not 0/-inf, or the kind is not "dense"."""
        if self.kind != "dense" or self.attn_mask is None:
            return None
        return _block_cache.get(self.attn_mask, q_len, kv_len, block)

    def rows(self, index: Tensor) -> Optional[Tensor]:
        """attn_mask restricted to the query rows `index` (int64 [R]), for the exact check of a
        sample of rows; None without a mask."""
        if self.attn_mask is None:
            return None
        mask = self.attn_mask
        if mask.dim() >= 2 and mask.shape[-2] > 1:
            mask = mask.index_select(mask.dim() - 2, index.to(mask.device))
        return mask


def uniform_tiles(attn_mask: Tensor, q_len: int, kv_len: int, block: int) -> Optional[Tensor]:
    """bool [B|1, H|1, NQB, NKB]: which `block` x `block` tiles are attended, when every tile of
    `attn_mask` (broadcastable to [B, H, q_len, kv_len]) is all attended or all masked; else None.
    Float masks count only as 0 (attend) / -inf (masked)."""
    mask = attn_mask
    if mask.is_floating_point():
        if not bool(((mask == 0) | torch.isneginf(mask)).all()):
            return None
        mask = mask == 0
    elif mask.dtype != torch.bool:
        return None
    mask = mask.reshape([1] * (4 - mask.dim()) + list(mask.shape)).expand(-1, -1, q_len, kv_len)  # [B|1,H|1,Sq,Skv]
    nqb, nkb = -(-q_len // block), -(-kv_len // block)
    pad = (0, nkb * block - kv_len, 0, nqb * block - q_len)
    b, h = mask.shape[:2]
    tiles_any = F.pad(mask, pad, value=False).reshape(b, h, nqb, block, nkb, block).any(5).any(3)
    tiles_all = F.pad(mask, pad, value=True).reshape(b, h, nqb, block, nkb, block).all(5).all(3)
    return tiles_any if bool((tiles_any == tiles_all).all()) else None


class _BlockMaskCache:
    """uniform_tiles -> BlockSparseMask per (mask tensor, its version, lengths, block); weak on
    the tensor, bounded, thread-safe."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._entries: dict = {}
        self._lock = threading.Lock()

    def get(self, attn_mask: Tensor, q_len: int, kv_len: int, block: int) -> Optional[BlockSparseMask]:
        key = (id(attn_mask), attn_mask._version, q_len, kv_len, block)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0]() is attn_mask:
            return entry[1]
        tiles = uniform_tiles(attn_mask, q_len, kv_len, block)
        result = None if tiles is None else BlockSparseMask.from_dense_block_mask(tiles, block, block, q_len, kv_len)
        with self._lock:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[key] = (weakref.ref(attn_mask), result)
        return result

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_block_cache = _BlockMaskCache()


def largest_uniform_block(mask: CallMask, q_len: int, kv_len: int) -> Optional[BlockSparseMask]:
    """The dense mask as a BlockSparseMask with the largest block in BLOCK_SIZES whose tiles are
    uniform, or None. The smallest block is checked first: a tile uniform at a larger block is
    uniform at every smaller one, so a mask that fails there is converted once, not per size."""
    if mask.block_mask(q_len, kv_len, BLOCK_SIZES[-1]) is None:
        return None
    for block in BLOCK_SIZES:
        converted = mask.block_mask(q_len, kv_len, block)
        if converted is not None:
            return converted
    return None  # unreachable: the smallest block converted above


__all__ = ["CallMask", "uniform_tiles", "largest_uniform_block", "BLOCK_SIZES"]
