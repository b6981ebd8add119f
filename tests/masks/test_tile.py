"""Sliding tile attention (STA) against its definition: clamped 3-D window of tiles."""

from __future__ import annotations

import pytest
import torch

from ditcompile.geometry import TextSegment, TokenGrid
from ditcompile.kernels.attention.reference import sparse_attention_reference, token_mask
from ditcompile.masks import apply_permutation, generate_tile_mask, tile_permutation, undo_permutation

from ._defs import attention_from_support, layout, permute_square, rel_err, shrink_any, tile_rule, token_definition

GRID = TokenGrid(4, 8, 8, "test")  # tiles (1, 4, 4) = 16 tokens -> 4 x 2 x 2 tiles


def _video_only(definition, text_range):
    out = definition.clone()
    if text_range is not None:
        out[text_range[0] : text_range[1]] = False
        out[:, text_range[0] : text_range[1]] = False
    return out


@pytest.mark.parametrize(
    "grid, text, tile, window, bm, bn",
    [
        (GRID, None, (1, 4, 4), (3, 1, 1), 16, 16),
        (GRID, None, (1, 4, 4), (1, 3, 3), 16, 32),
        (GRID, TextSegment("after", 13, "t"), (2, 4, 4), (1, 1, 1), 32, 16),
        (GRID, TextSegment("before", 20, "t"), (1, 4, 4), (3, 3, 1), 16, 16),
        (TokenGrid(5, 6, 7, "t"), None, (2, 4, 4), (3, 1, 3), 16, 16),  # ragged tiles, ragged last block
        (TokenGrid(5, 6, 7, "t"), TextSegment("after", 9, "t"), (2, 3, 3), (2, 2, 4), 16, 16),  # even windows
    ],
)
def test_blocks_are_the_block_cover_of_the_definition(grid, text, tile, window, bm, bn):
    p = generate_tile_mask(grid, text, block_m=bm, block_n=bn, tile_size=tile, window=window)
    definition = token_definition(grid, text, tile_rule(grid, tile, window))  # original order
    text_range, _, _ = layout(grid, text)
    permuted = permute_square(_video_only(definition, text_range), p.permutation)
    assert p.name == "tile"
    assert torch.equal(p.mask.to_dense_block_mask()[0, 0], shrink_any(permuted, bm, bn))
    assert (token_mask(p.mask)[0, 0] | ~permute_square(definition, p.permutation)).all()
    assert p.mask.dense_q_range == text_range


def test_block_aligned_tiles_are_exact():
    # tile volume 16 == block size, no text: every computed token pair is allowed by STA.
    for window in [(3, 1, 1), (1, 3, 3), (3, 3, 3)]:
        p = generate_tile_mask(GRID, block_m=16, block_n=16, tile_size=(1, 4, 4), window=window)
        definition = token_definition(GRID, None, tile_rule(GRID, (1, 4, 4), window))
        assert torch.equal(token_mask(p.mask)[0, 0], permute_square(definition, p.permutation))
    # 4 x 2 x 2 tiles, window (3, 1, 1): each tile attends itself and (clamped) 2 frame-neighbours
    p = generate_tile_mask(GRID, block_m=16, block_n=16, tile_size=(1, 4, 4), window=(3, 1, 1))
    blocks = p.mask.to_dense_block_mask()[0, 0]
    assert blocks.sum(-1).tolist() == [3] * 16, "border tiles shift the window inwards, never shrink it"
    assert blocks[0].nonzero().flatten().tolist() == [0, 4, 8]  # tile (0,0,0) -> frames 0, 1, 2
    assert blocks[15].nonzero().flatten().tolist() == [7, 11, 15]  # tile (3,1,1) -> frames 1, 2, 3


def test_window_larger_than_grid_is_dense():
    p = generate_tile_mask(GRID, block_m=16, block_n=16, tile_size=(1, 4, 4), window=(9, 5, 7))
    assert p.mask.to_dense_block_mask().all()


@pytest.mark.parametrize("text", [None, TextSegment("before", 20, "t"), TextSegment("after", 13, "t")])
def test_tile_permutation_makes_tiles_contiguous(text):
    grid, tile = TokenGrid(5, 6, 7, "t"), (2, 4, 4)
    text_range, start, total = layout(grid, text)
    perm = tile_permutation(grid, text, tile_size=tile)
    assert sorted(perm.tolist()) == list(range(total))
    if text_range is not None:
        assert torch.equal(perm[text_range[0] : text_range[1]], torch.arange(*text_range))
    hw = grid.height * grid.width
    video = perm[start : start + grid.frames * hw] - start
    f, h, w = video // hw, (video % hw) // grid.width, video % grid.width
    tile_id = ((f // 2) * 2 + h // 4) * 2 + w // 4  # 3 x 2 x 2 tiles
    assert (tile_id[1:] >= tile_id[:-1]).all(), "tile-major: each tile's tokens contiguous, tiles in order"
    raster = f * hw + h * grid.width + w
    same = tile_id[1:] == tile_id[:-1]
    assert (raster[1:][same] > raster[:-1][same]).all(), "frame-major order inside a tile"
    p = generate_tile_mask(grid, text, block_m=16, block_n=16, tile_size=tile)
    assert torch.equal(p.permutation, perm)
    x = torch.randn(2, total, 3, 4)
    assert torch.equal(undo_permutation(apply_permutation(x, p, 1), p, 1), x)


def test_sparse_matches_dense_inside_support_and_not_outside():
    gen = torch.Generator().manual_seed(5)
    text = TextSegment("before", 20, "t")
    tile, window = (1, 4, 4), (1, 3, 1)
    p = generate_tile_mask(GRID, text, block_m=16, block_n=16, tile_size=tile, window=window)
    assert p.density < 0.75
    support = token_definition(GRID, text, tile_rule(GRID, tile, window))
    q, k, v = attention_from_support(support, 2, 1, gen=gen)
    dense = sparse_attention_reference(q, k, v)
    qp, kp, vp = (apply_permutation(t, p, 2) for t in (q, k, v))
    assert rel_err(undo_permutation(sparse_attention_reference(qp, kp, vp, p.mask), p, 2), dense) < 1e-6
    # attention across frames at the same position: outside a one-frame window
    across = token_definition(GRID, text, lambda q_, k_: (q_[1] == k_[1]) & (q_[2] == k_[2]))
    q, k, v = attention_from_support(across, 2, 1, gen=gen)
    dense = sparse_attention_reference(q, k, v)
    qp, kp, vp = (apply_permutation(t, p, 2) for t in (q, k, v))
    assert rel_err(undo_permutation(sparse_attention_reference(qp, kp, vp, p.mask), p, 2), dense) > 0.3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tile_size=(0, 4, 4)), "tile_size"),
        (dict(tile_size=(4, 4)), "tile_size"),
        (dict(window=(1, 1, 0)), "window"),
        (dict(window=(1, 1.5, 1)), "window"),
        (dict(block_m=0), "block_m"),
    ],
)
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_tile_mask(GRID, **kwargs)


def test_cached():
    a = generate_tile_mask(GRID, block_m=16, block_n=16, tile_size=(1, 4, 4))
    assert a is generate_tile_mask(TokenGrid(4, 8, 8, "x"), block_m=16, block_n=16, tile_size=[1, 4, 4])
