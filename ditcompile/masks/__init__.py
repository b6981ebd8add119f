"""Sparse-attention policies: small factories producing block masks (as `SparsePattern`).

One family per module, each with a ``generate_<family>_mask(...)`` factory:

* :mod:`.radial` -- Radial Attention's static O(n log n) energy-decay mask;
* :mod:`.spatial_temporal` -- Sparse VideoGen's spatial / temporal head patterns and the
  online head classifier;
* :mod:`.antidiagonal` -- XAttention's data-dependent antidiagonal block selection;
* :mod:`.tile` -- sliding tile attention (STA).

Data-independent factories are cached per (grid, text, block sizes, params, device).
:mod:`.pattern` holds `SparsePattern`, the permutation helpers and union/intersection;
:mod:`.draw` writes a PNG of a pattern (needs pillow).
"""

from .antidiagonal import antidiagonal_block_mass, generate_antidiagonal_mask
from .draw import draw_pattern
from .pattern import (
    SparsePattern,
    apply_permutation,
    intersection,
    pattern_token_rows,
    undo_permutation,
    union,
)
from .radial import generate_radial_mask
from .spatial_temporal import (
    classify_heads,
    generate_spatial_mask,
    generate_temporal_mask,
    head_errors,
    temporal_permutation,
)
from .tile import generate_tile_mask, tile_permutation

__all__ = [
    "SparsePattern",
    "apply_permutation",
    "undo_permutation",
    "union",
    "intersection",
    "pattern_token_rows",
    "generate_radial_mask",
    "generate_spatial_mask",
    "generate_temporal_mask",
    "temporal_permutation",
    "classify_heads",
    "head_errors",
    "generate_antidiagonal_mask",
    "antidiagonal_block_mass",
    "generate_tile_mask",
    "tile_permutation",
    "draw_pattern",
    "clear_mask_cache",
]


def clear_mask_cache() -> None:
    """Drop every cached data-independent pattern (e.g. to free device memory)."""
    from . import radial, spatial_temporal, tile

    for fn in (radial._radial_cached, spatial_temporal._spatial_cached, spatial_temporal._temporal_cached,
               tile._tile_cached):
        fn.cache_clear()
