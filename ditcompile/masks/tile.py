"""Sliding tile attention (STA; Zhang et al., arXiv 2502.04507).

STA replaces a token-level 3-D sliding window with a *tile-level* one: the video is cut into
tiles of ``t_f x t_h x t_w`` tokens, tokens are reordered so each tile is contiguous, and
every query tile attends all key tiles inside a ``w_f x w_h x w_w``-tile window centred on
it.  With tile volume a multiple of the block size, every computed block is fully dense.

Definition (as the reference's mask_mod, hao-ai-lab/FastVideo ``flex_sta_ref.py``)
----------------------------------------------------------------------------------
Tile grid ``n_x = ceil(dim_x / t_x)`` per axis x in (f, h, w); a token's tile coordinate is
``c_x = coord_x // t_x``.  For each axis the window centre is the query tile clamped away from
the border, ``centre_x = clamp(c_x(q), w_x // 2, n_x - 1 - w_x // 2)``, and query q may attend
key k iff ``|centre_x - c_x(k)| <= w_x // 2`` on all three axes.  So the window always spans
``2 * (w_x // 2) + 1`` tiles (``w_x`` for odd windows) and is shifted inwards at borders
instead of shrinking; a window wider than the grid covers the whole axis.

Permutation (tile-major): video tokens are ordered by tile id
``(c_f * n_h + c_h) * n_w + c_w`` and, inside a tile, in frame-major (f, h, w) order; text
stays in place.  Blocks: a block is listed iff it holds an allowed token pair (exact when
tiles align with blocks).

Where we generalise the reference: it requires every grid dimension to be a multiple of the
tile size and the text after the video; here border tiles may be smaller (ragged) and text may
come first, in which case tiles are no longer block-aligned and partially used blocks are
computed.  Defaults are STA's HunyuanVideo setting: tile (6, 8, 8) = 384 tokens, window
(3, 3, 3) tiles.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..geometry import GridLike, TextSegment, TokenLayout, device_key
from ..kernels.block_mask import check_block_sizes
from .common import check_triple, shrink_classes
from .pattern import SparsePattern, self_attention_mask
from .policy import Policy

__all__ = ["TileParams", "TILE", "generate_tile_mask", "tile_permutation"]


@dataclass(frozen=True)
class TileParams:
    """tile_size: (t_f, t_h, t_w) tokens per tile, each an int >= 1.
    window: (w_f, w_h, w_w) in tiles, each an int >= 1 (odd values give exactly that many tiles).
    """

    tile_size: tuple[int, int, int] = (6, 8, 8)
    window: tuple[int, int, int] = (3, 3, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile_size", check_triple("tile_size", self.tile_size))
        object.__setattr__(self, "window", check_triple("window", self.window))


def generate_tile_mask(
    grid: GridLike,
    text: Optional[TextSegment] = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    tile_size: tuple[int, int, int] = (6, 8, 8),
    window: tuple[int, int, int] = (3, 3, 3),
    device: torch.device | str | None = None,
) -> SparsePattern:
    """STA pattern: tile-major permutation and a clamped 3-D window of tiles.

    tile_size: (t_f, t_h, t_w) tokens per tile, each >= 1.
    window: (w_f, w_h, w_w) in tiles, each >= 1 (odd values give exactly that many tiles).
    One mask for all batches/heads, cached per shape and params.
    """
    layout = TokenLayout.of(grid, text)
    check_block_sizes(block_m, block_n)
    p = TileParams(tile_size=tile_size, window=window)
    return _tile_cached(layout, block_m, block_n, p.tile_size, p.window, device_key(device))


def tile_permutation(
    grid: GridLike, text: Optional[TextSegment] = None, *, tile_size: tuple[int, int, int] = (6, 8, 8), device=None
) -> Tensor:
    """int64 [S]: the tile-major order (see module docstring); text stays in place."""
    layout = TokenLayout.of(grid, text)
    tile_size = check_triple("tile_size", tile_size)
    return _tile_ids_and_permutation(layout, tile_size, torch.device(device_key(device)))[1]


def _tile_grid(layout: TokenLayout, tile_size: tuple[int, int, int]) -> tuple[int, int, int]:
    dims = (layout.frames, layout.height, layout.width)
    return tuple(-(-d // t) for d, t in zip(dims, tile_size))


def _tile_ids_and_permutation(
    layout: TokenLayout, tile_size: tuple[int, int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """(tile id of every original token, -1 for text: int64 [S]; tile-major permutation [S])."""
    _, n_h, n_w = _tile_grid(layout, tile_size)
    f, h, w = layout.video_coords(device)  # [N] each, frame-major
    tid = ((f // tile_size[0]) * n_h + h // tile_size[1]) * n_w + w // tile_size[2]  # [N]
    start = layout.video_start
    tile_of = torch.full((layout.total,), -1, dtype=torch.int64, device=device)
    tile_of[start : start + layout.num_video] = tid
    perm = torch.arange(layout.total, device=device)
    # Stable sort by tile id keeps the frame-major (f, h, w) order inside each tile.
    perm[start : start + layout.num_video] = start + torch.argsort(tid, stable=True)
    return tile_of, perm


def _tile_window(n_tiles: tuple[int, int, int], window: tuple[int, int, int], device: torch.device) -> Tensor:
    """bool [NT, NT]: query tile -> key tile allowed (clamped-centre rule)."""
    n_f, n_h, n_w = n_tiles
    ids = torch.arange(n_f * n_h * n_w, device=device)
    coords = (ids // (n_h * n_w), (ids // n_w) % n_h, ids % n_w)
    allowed = torch.ones(ids.numel(), ids.numel(), dtype=torch.bool, device=device)
    for c, n, w in zip(coords, n_tiles, window):
        half = w // 2
        # clamp(c, half, n - 1 - half); when half > n - 1 - half the upper bound wins (torch.clamp)
        centre = torch.minimum(torch.maximum(c, torch.tensor(half, device=device)), torch.tensor(n - 1 - half, device=device))
        allowed &= (centre[:, None] - c[None, :]).abs() <= half
    return allowed


@functools.lru_cache(maxsize=32)
def _tile_cached(
    layout: TokenLayout, block_m: int, block_n: int, tile_size: tuple[int, int, int],
    window: tuple[int, int, int], device: str,
) -> SparsePattern:  # fmt: skip
    dev = torch.device(device)
    tile_of, perm = _tile_ids_and_permutation(layout, tile_size, dev)
    allowed = _tile_window(_tile_grid(layout, tile_size), window, dev)  # [NT, NT]
    tile_p = tile_of[perm]  # [S] tile of each permuted position
    blocks = shrink_classes(tile_p, tile_p, allowed, block_m, block_n)
    text = layout.text_range
    return SparsePattern(self_attention_mask(blocks, block_m, block_n, layout.total, text), perm, name="tile")


TILE = Policy(
    name="tile",
    params=TileParams,
    static_patterns=lambda tokens, block, p, device: (
        generate_tile_mask(tokens, block_m=block, block_n=block, tile_size=p.tile_size, window=p.window,
                           device=device),),
    paper="Sliding tile attention (Zhang et al., arXiv 2502.04507)",
    caches=(_tile_cached,),
)
