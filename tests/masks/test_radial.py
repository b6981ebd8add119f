"""Radial Attention mask against the paper's rule, computed independently at token level."""

from __future__ import annotations

import pytest
import torch

from ditcompile.geometry import TextSegment, TokenGrid
from ditcompile.kernels.attention.reference import sparse_attention_reference, token_mask
from ditcompile.masks import generate_radial_mask, pattern_token_rows
from ditcompile.masks.radial import radial_frame_rule

from ._defs import attention_from_support, layout, radial_blocks_reference, radial_rule, rel_err, token_definition

GRID = TokenGrid(8, 6, 8, "test")  # 48 tokens per frame, 384 video tokens


@pytest.mark.parametrize(
    "grid, text, bm, bn, params",
    [
        (GRID, None, 16, 16, dict(band=1, decay_factor=1.0, sink=True, min_window=16)),
        (GRID, TextSegment("before", 20, "t"), 16, 16, dict(band=1, decay_factor=1.0, sink=True, min_window=16)),
        (GRID, TextSegment("after", 13, "t"), 16, 32, dict(band=1, decay_factor=0.5, sink=False, min_window=8)),
        (GRID, None, 32, 16, dict(band=0, decay_factor=1.0, sink=False, min_window=4)),
        (GRID, TextSegment("before", 7, "t"), 16, 16, dict(band=2, decay_factor=2.0, sink=True, min_window=12)),
        (TokenGrid(4, 6, 8, "t"), TextSegment("after", 20, "t"), 16, 16, dict(band=1, decay_factor=1.0, sink=True, min_window=16)),
        (TokenGrid(7, 5, 7, "t"), None, 16, 16, dict(band=1, decay_factor=0.25, sink=True, min_window=4)),  # ragged
        # a block with dense/non-zero columns exactly 0.6 (the strict "> 0.6" drops it)
        (TokenGrid(6, 4, 5, "t"), TextSegment("before", 7, "t"), 16, 16, dict(band=1, decay_factor=0.5, sink=True, min_window=4)),
    ],
)
def test_blocks_are_the_reference_shrink_of_the_definition(grid, text, bm, bn, params):
    pattern = generate_radial_mask(grid, text, block_m=bm, block_n=bn, **params)
    expected = radial_blocks_reference(grid, text, bm=bm, bn=bn, **params).clone()
    text_range, _, total = layout(grid, text)
    for token in range(total):  # plus the diagonal: every video query attends at least its own key
        if text_range is None or not text_range[0] <= token < text_range[1]:
            expected[token // bm, token // bn] = True
    got = pattern.mask.to_dense_block_mask()[0, 0]
    assert got.shape == expected.shape
    assert torch.equal(got, expected), f"{(got != expected).sum().item()} blocks differ"
    text_range, _, total = layout(grid, text)
    assert pattern.permutation is None and pattern.name == "radial"
    assert pattern.mask.q_len == pattern.mask.kv_len == total
    assert pattern.mask.dense_q_range == text_range and pattern.mask.dense_kv_range == text_range
    if text_range is not None:  # text rows and columns are dense at token level
        tm = token_mask(pattern.mask)[0, 0]
        assert tm[text_range[0] : text_range[1]].all() and tm[:, text_range[0] : text_range[1]].all()


def test_frame_rule_halves_the_window_and_splits_frames():
    # N = 48 -> 2**bitlen = 64; d = 2, 3 -> base 16; d = 4..7 -> base 8; d = 8.. -> base 4
    kw = dict(band=1, decay_factor=1.0, min_window=4)
    assert radial_frame_rule(1, 48, **kw) == (True, float("inf"))
    assert radial_frame_rule(2, 48, **kw) == (True, 16.0)
    assert radial_frame_rule(3, 48, **kw) == (True, 16.0)
    assert radial_frame_rule(5, 48, **kw) == (True, 8.0)
    assert radial_frame_rule(9, 48, **kw) == (True, 4.0)
    # base below min_window: window floored at min_window, only every (min_window / base)-th frame
    kw = dict(band=1, decay_factor=1.0, min_window=16)
    assert radial_frame_rule(4, 48, **kw) == (True, 16.0)  # base 8: split 2, 4 % 2 == 0
    assert radial_frame_rule(5, 48, **kw)[0] is False
    assert radial_frame_rule(6, 48, **kw)[0] is True
    assert radial_frame_rule(9, 48, **kw)[0] is False  # base 4: split 4
    assert radial_frame_rule(12, 48, **kw)[0] is True
    # decay_factor scales the window but not the split
    assert radial_frame_rule(2, 48, band=1, decay_factor=0.5, min_window=4) == (True, 8.0)


def test_sink_and_band_are_dense_and_mask_is_subquadratic():
    grid = TokenGrid(16, 8, 16, "t")  # 128 tokens per frame, block 16
    p = generate_radial_mask(grid, block_m=16, block_n=16, band=1, sink=True)
    blocks = p.mask.to_dense_block_mask()[0, 0]
    per_frame = 128 // 16
    assert blocks[:, :per_frame].all(), "first frame (attention sink) attended by every query"
    for f in range(16):  # dense band: own frame and both neighbours
        rows = slice(f * per_frame, (f + 1) * per_frame)
        lo, hi = max(0, f - 1) * per_frame, min(16, f + 2) * per_frame
        assert blocks[rows, lo:hi].all()
    no_sink = generate_radial_mask(grid, block_m=16, block_n=16, band=1, sink=False)
    far = no_sink.mask.to_dense_block_mask()[0, 0, -per_frame:, :per_frame]  # frame 15 -> frame 0
    assert not far[0, 4:].any() and not far[-1, :4].any(), "window of 16 tokens around the same position"
    assert no_sink.density < p.density < 1
    densities = [generate_radial_mask(TokenGrid(f, 8, 16, "t"), block_m=16, block_n=16).density for f in (8, 16, 32)]
    assert densities[0] > densities[1] > densities[2], "density falls as the video gets longer"


def test_cached_per_shape_and_params():
    a = generate_radial_mask(TokenGrid(4, 6, 8, "conv3d"), block_m=16, block_n=16)
    b = generate_radial_mask(TokenGrid(4, 6, 8, "option"), block_m=16, block_n=16)  # source does not matter
    c = generate_radial_mask(TokenGrid(4, 6, 8, "x"), block_m=16, block_n=16, decay_factor=0.5)
    d = generate_radial_mask((4, 6, 8), block_m=16, block_n=16, device="cpu")
    assert a is b and a is d and a is not c


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(band=-1), "band"),
        (dict(band=1.5), "band"),
        (dict(decay_factor=0.0), "decay_factor"),
        (dict(decay_factor=float("nan")), "decay_factor"),
        (dict(min_window=0), "min_window"),
        (dict(sink=1), "sink"),
        (dict(block_m=8), "block_m"),
        (dict(block_n=24), "block_n"),
    ],
)
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_radial_mask(GRID, **kwargs)


def test_bad_grid_and_text():
    with pytest.raises(ValueError, match="grid.frames"):
        generate_radial_mask(TokenGrid(0, 6, 8, "t"))
    with pytest.raises(ValueError, match="text.length"):
        generate_radial_mask(GRID, TextSegment("before", None, "t"))
    with pytest.raises(ValueError, match="text.position"):
        generate_radial_mask(GRID, TextSegment("middle", 4, "t"))


def test_sparse_attention_inside_and_outside_support():
    grid, text = TokenGrid(12, 4, 8, "t"), TextSegment("before", 12, "t")
    p = generate_radial_mask(grid, text, block_m=16, block_n=16, min_window=16)
    assert p.density < 0.9
    gen = torch.Generator().manual_seed(0)
    _, _, total = layout(grid, text)
    # Inside: attention concentrated on the radial token rule restricted to the computed blocks.
    rule = radial_rule(4, 8, band=1, decay_factor=1.0, sink=True, min_window=16)
    support = token_definition(grid, text, rule) & pattern_token_rows(p, torch.arange(total))[0, 0]
    q, k, v = attention_from_support(support, 1, 2, gen=gen)
    dense = sparse_attention_reference(q, k, v)
    assert rel_err(sparse_attention_reference(q, k, v, p.mask), dense) < 1e-6
    # Outside: attention on far-away frames at distant positions, which the mask drops.
    outside = ~pattern_token_rows(p, torch.arange(total))[0, 0]
    q, k, v = attention_from_support(outside | torch.eye(total, dtype=torch.bool), 1, 2, gen=gen)
    assert rel_err(sparse_attention_reference(q, k, v, p.mask), sparse_attention_reference(q, k, v)) > 0.3
