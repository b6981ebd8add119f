"""SparsePattern: permutation round trips, validation, union / intersection."""

from __future__ import annotations

import pytest
import torch

from ditcompile.geometry import TextSegment, TokenGrid
from ditcompile.kernels.block_mask import BlockSparseMask
from ditcompile.kernels.attention.reference import token_mask
from ditcompile.masks import (
    SparsePattern,
    apply_permutation,
    generate_radial_mask,
    generate_spatial_mask,
    generate_temporal_mask,
    generate_tile_mask,
    intersection,
    pattern_token_rows,
    undo_permutation,
    union,
)

GRID = TokenGrid(4, 6, 8, "test")
TEXT = TextSegment("before", 20, "t")


def _patterns(text):
    kw = dict(block_m=16, block_n=16)
    return [
        generate_radial_mask(GRID, text, **kw),
        generate_spatial_mask(GRID, text, **kw),
        generate_temporal_mask(GRID, text, **kw),
        generate_tile_mask(GRID, text, tile_size=(2, 3, 4), window=(1, 1, 3), **kw),
    ]


@pytest.mark.parametrize("text", [None, TEXT, TextSegment("after", 13, "t")])
def test_permutation_round_trip(text):
    gen = torch.Generator().manual_seed(0)
    for p in _patterns(text):
        s = p.seq_len
        for seq_dim, shape in ((2, (2, 3, s, 5)), (1, (2, s, 3, 5))):
            x = torch.randn(*shape, generator=gen)
            assert torch.equal(undo_permutation(apply_permutation(x, p, seq_dim), p, seq_dim), x)
            assert torch.equal(apply_permutation(undo_permutation(x, p, seq_dim), p, seq_dim), x)
        if p.permutation is None:
            assert p.inverse_permutation is None
        else:
            assert torch.equal(p.permutation[p.inverse_permutation], torch.arange(s))
            ids = torch.arange(s, dtype=torch.float64)[None, :, None]
            moved = apply_permutation(ids, p, 1)[0, :, 0].long()
            assert torch.equal(moved, p.permutation), "position i holds original token permutation[i]"


def test_pattern_token_rows_is_the_unpermuted_token_mask():
    for p in _patterns(TEXT):
        s = p.seq_len
        full = token_mask(p.mask)[0, 0]  # [S, S] in the pattern's order
        inv = torch.arange(s) if p.inverse_permutation is None else p.inverse_permutation
        original = full[inv][:, inv]  # original order
        rows = torch.tensor([0, 5, 19, 20, 21, 100, s - 1])
        assert torch.equal(pattern_token_rows(p, rows)[0, 0], original[rows])
        assert p.density == p.mask.density()


def test_validation():
    mask = BlockSparseMask.full(212, 212, 16, 16)
    with pytest.raises(ValueError, match="permutation"):
        SparsePattern(mask, torch.zeros(212, dtype=torch.int64))  # not a permutation
    with pytest.raises(ValueError, match="permutation"):
        SparsePattern(mask, torch.arange(212, dtype=torch.int32))  # wrong dtype
    with pytest.raises(ValueError, match="permutation"):
        SparsePattern(mask, torch.arange(100))  # wrong length
    text_mask = BlockSparseMask.from_dense_block_mask(
        torch.ones(14, 14, dtype=torch.bool), 16, 16, 212, 212, dense_q_range=(0, 20), dense_kv_range=(0, 20)
    )
    with pytest.raises(ValueError, match="text"):
        SparsePattern(text_mask, torch.arange(212).flip(0))  # moves text tokens
    with pytest.raises(ValueError, match="q_len"):
        SparsePattern(BlockSparseMask.full(64, 32, 16, 16))
    with pytest.raises(ValueError, match="tokens"):
        apply_permutation(torch.randn(1, 100, 2), generate_temporal_mask(GRID, block_m=16, block_n=16), 1)


def test_union_and_intersection():
    kw = dict(block_m=16, block_n=16)
    radial = generate_radial_mask(GRID, TEXT, min_window=4, **kw)
    spatial = generate_spatial_mask(GRID, TEXT, frame_window=0, **kw)
    wide = generate_spatial_mask(GRID, TEXT, frame_window=1, sink=True, **kw)
    a, b = radial.mask.to_dense_block_mask(), spatial.mask.to_dense_block_mask()
    u, i = union(radial, spatial), intersection(radial, wide)
    assert torch.equal(u.mask.to_dense_block_mask(), a | b)
    assert torch.equal(i.mask.to_dense_block_mask(), a & wide.mask.to_dense_block_mask())
    assert torch.equal(token_mask(u.mask), token_mask(radial.mask) | token_mask(spatial.mask))
    assert torch.equal(token_mask(i.mask), token_mask(radial.mask) & token_mask(wide.mask))
    assert u.name == "(radial|spatial)" and i.name == "(radial&spatial)"
    assert i.mask.dense_q_range == (0, 20) == u.mask.dense_kv_range, "text stays dense"
    assert i.density <= min(radial.density, wide.density) and u.density >= max(radial.density, spatial.density)
    # per-head masks broadcast against a shared one
    per_head = BlockSparseMask.from_dense_block_mask(
        torch.rand(1, 3, 14, 14, generator=torch.Generator().manual_seed(0)) < 0.5, 16, 16, 212, 212,
        dense_q_range=(0, 20), dense_kv_range=(0, 20),
    )
    ph = SparsePattern(per_head, None, name="random")
    assert union(ph, spatial).mask.to_dense_block_mask().shape == (1, 3, 14, 14)
    # permuted patterns combine with the same permutation
    t1 = generate_temporal_mask(GRID, TEXT, **kw)
    t2 = generate_temporal_mask(GRID, TEXT, position_window=2, **kw)
    assert torch.equal(union(t1, t2).permutation, t1.permutation)


def test_combining_needs_the_same_permutation_and_geometry():
    kw = dict(block_m=16, block_n=16)
    with pytest.raises(ValueError, match="permutation"):
        union(generate_spatial_mask(GRID, TEXT, **kw), generate_temporal_mask(GRID, TEXT, **kw))
    with pytest.raises(ValueError, match="permutation"):
        intersection(generate_temporal_mask(GRID, TEXT, **kw), generate_tile_mask(GRID, TEXT, **kw))
    with pytest.raises(ValueError, match="block sizes"):
        union(generate_spatial_mask(GRID, TEXT, **kw), generate_spatial_mask(GRID, TEXT, block_m=32, block_n=16))
    with pytest.raises(ValueError, match="text ranges"):
        union(generate_spatial_mask(GRID, TEXT, **kw), generate_spatial_mask(GRID, TextSegment("after", 20, "t"), **kw))
