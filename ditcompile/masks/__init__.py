"""Sparse-attention policies: small factories producing block masks (as `SparsePattern`).

One family per module, each with a ``generate_<family>_mask(...)`` factory:

* :mod:`.radial` -- Radial Attention's static O(n log n) energy-decay mask;
* :mod:`.spatial_temporal` -- Sparse VideoGen's spatial / temporal head patterns and the
  online head classifier;
* :mod:`.antidiagonal` -- XAttention's data-dependent antidiagonal block selection;
* :mod:`.tile` -- sliding tile attention (STA).

Each family also defines its parameter dataclass and its :class:`~.policy.Policy`;
:mod:`.registry` lists the policies (``POLICIES``) -- the only place that does.
Data-independent factories are cached per (grid, text, block sizes, params, device)
(``clear_mask_cache()`` drops them). :mod:`.pattern` holds `SparsePattern`, the permutation
helpers and union/intersection; :mod:`.draw` writes a PNG of a pattern (needs pillow).
"""

from .antidiagonal import AntidiagonalParams, antidiagonal_block_mass, generate_antidiagonal_mask
from .draw import draw_pattern
from .pattern import (
    PatternInvariantError,
    SparsePattern,
    apply_permutation,
    intersection,
    pattern_token_rows,
    undo_permutation,
    union,
)
from .policy import ChoiceInputs, PatternChoice, Policy, parse_params, params_json
from .radial import RadialParams, generate_radial_mask
from .registry import POLICIES, clear_mask_cache, get_policy
from .spatial_temporal import (
    SpatialTemporalParams,
    classify_heads,
    generate_spatial_mask,
    generate_temporal_mask,
    head_errors,
    temporal_permutation,
)
from .tile import TileParams, generate_tile_mask, tile_permutation

__all__ = [
    "SparsePattern",
    "apply_permutation",
    "undo_permutation",
    "union",
    "intersection",
    "pattern_token_rows",
    "PatternInvariantError",
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
    "POLICIES",
    "get_policy",
    "Policy",
    "PatternChoice",
    "ChoiceInputs",
    "parse_params",
    "params_json",
    "RadialParams",
    "SpatialTemporalParams",
    "AntidiagonalParams",
    "TileParams",
]

