"""Sparse VideoGen spatial/temporal patterns and the online head classifier."""

from __future__ import annotations

import pytest
import torch

from ditcompile.geometry import TextSegment, TokenGrid
from ditcompile.kernels.attention.reference import sparse_attention_reference, token_mask
from ditcompile.masks import (
    apply_permutation,
    classify_heads,
    generate_spatial_mask,
    generate_temporal_mask,
    head_errors,
    temporal_permutation,
    undo_permutation,
)

from ._defs import (
    attention_from_support,
    layout,
    permute_square,
    rel_err,
    shrink_any,
    spatial_rule,
    temporal_rule,
    token_definition,
)

GRID = TokenGrid(4, 6, 8, "test")
TEXTS = [None, TextSegment("before", 20, "t"), TextSegment("after", 13, "t")]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("frame_window, sink, bm, bn", [(0, False, 16, 16), (1, False, 16, 32), (0, True, 32, 16)])
def test_spatial_is_the_block_cover_of_the_definition(text, frame_window, sink, bm, bn):
    p = generate_spatial_mask(GRID, text, block_m=bm, block_n=bn, frame_window=frame_window, sink=sink)
    definition = token_definition(GRID, text, spatial_rule(frame_window, sink))  # [S, S]
    text_range, _, _ = layout(GRID, text)
    video_only = definition.clone()
    if text_range is not None:
        video_only[text_range[0] : text_range[1]] = False
        video_only[:, text_range[0] : text_range[1]] = False
    assert p.permutation is None and p.name == "spatial"
    assert torch.equal(p.mask.to_dense_block_mask()[0, 0], shrink_any(video_only, bm, bn))
    tm = token_mask(p.mask)[0, 0]
    assert (tm | ~definition).all(), "every allowed token pair is computed"
    assert p.mask.dense_q_range == text_range == p.mask.dense_kv_range


def test_spatial_without_text_is_block_diagonal_over_frames():
    # 48 tokens per frame, block 16: frames are exactly 3 blocks, so the mask is exact.
    p = generate_spatial_mask(GRID, block_m=16, block_n=16)
    expected = torch.block_diag(*[torch.ones(3, 3, dtype=torch.bool)] * 4)
    assert torch.equal(p.mask.to_dense_block_mask()[0, 0], expected)
    assert p.density == pytest.approx(0.25)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("position_window, sink, bm, bn", [(0, False, 16, 16), (3, False, 16, 32), (0, True, 32, 16)])
def test_temporal_is_the_block_cover_of_the_definition_in_permuted_order(text, position_window, sink, bm, bn):
    p = generate_temporal_mask(GRID, text, block_m=bm, block_n=bn, position_window=position_window, sink=sink)
    definition = token_definition(GRID, text, temporal_rule(GRID.width, position_window, sink))
    text_range, _, _ = layout(GRID, text)
    video_only = definition.clone()
    if text_range is not None:
        video_only[text_range[0] : text_range[1]] = False
        video_only[:, text_range[0] : text_range[1]] = False
    assert p.permutation is not None and p.name == "temporal"
    permuted = permute_square(video_only, p.permutation)
    assert torch.equal(p.mask.to_dense_block_mask()[0, 0], shrink_any(permuted, bm, bn))
    tm = token_mask(p.mask)[0, 0]
    assert (tm | ~permute_square(definition, p.permutation)).all()


@pytest.mark.parametrize("text", TEXTS)
def test_temporal_permutation_makes_positions_contiguous(text):
    text_range, start, total = layout(GRID, text)
    perm = temporal_permutation(GRID, text)
    assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(total))
    if text_range is not None:
        assert torch.equal(perm[text_range[0] : text_range[1]], torch.arange(*text_range)), "text never moves"
    hw, frames = GRID.height * GRID.width, GRID.frames
    video = perm[start : start + frames * hw] - start  # original video indices, permuted order
    frame, pos = video // hw, video % hw
    # Position-major: the F tokens of one spatial position are contiguous, frames in order.
    assert torch.equal(pos.view(hw, frames), torch.arange(hw)[:, None].expand(hw, frames))
    assert torch.equal(frame.view(hw, frames), torch.arange(frames)[None, :].expand(hw, frames))
    # With 4 frames and 16-token blocks, a block holds exactly 4 positions x all frames.
    p = generate_temporal_mask(GRID, None, block_m=16, block_n=16)
    assert torch.equal(p.mask.to_dense_block_mask()[0, 0], torch.eye(12, dtype=torch.bool))


def _head_inputs(grid: TokenGrid, kinds: list[str], gen: torch.Generator, *, layout_: str = "bhsd"):
    """q, k, v [1, H, S, D]: 'spatial' heads attend within their frame, 'temporal' heads the same
    spatial position across frames (one-hot frame / position codes times a large scale, plus noise)."""
    frames, hw = grid.frames, grid.height * grid.width
    idx = torch.arange(frames * hw)
    dim = frames + hw
    code_frame = torch.nn.functional.one_hot(idx // hw, dim).double()  # frame code in the first F dims
    code_pos = torch.nn.functional.one_hot(frames + idx % hw, dim).double()  # position code after them
    qs, ks = [], []
    for kind in kinds:
        code = code_frame if kind == "spatial" else code_pos
        qs.append(code * 10.0 + 0.1 * torch.randn(frames * hw, dim, generator=gen, dtype=torch.float64))
        ks.append(code * 10.0 + 0.1 * torch.randn(frames * hw, dim, generator=gen, dtype=torch.float64))
    q, k = torch.stack(qs)[None], torch.stack(ks)[None]  # [1, H, S, D]
    v = torch.randn(1, len(kinds), frames * hw, 8, generator=gen, dtype=torch.float64)
    if layout_ == "bshd":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return q, k, v


@pytest.mark.parametrize("use_v", [False, True])
@pytest.mark.parametrize("layout_", ["bhsd", "bshd"])
def test_classify_heads_picks_the_right_class(use_v, layout_):
    gen = torch.Generator().manual_seed(1)
    kinds = ["spatial", "temporal", "temporal", "spatial"]
    q, k, v = _head_inputs(GRID, kinds, gen, layout_=layout_)
    got = classify_heads(q, k, GRID, None, num_samples=16, layout=layout_, v=v if use_v else None)
    assert got.shape == (1, 4) and got.dtype == torch.bool
    assert got[0].tolist() == [kind == "spatial" for kind in kinds]
    # The same decision with the block patterns the kernel would run.
    spatial = generate_spatial_mask(GRID, block_m=16, block_n=16)
    temporal = generate_temporal_mask(GRID, block_m=16, block_n=16)
    got = classify_heads(q, k, GRID, None, layout=layout_, spatial=spatial, temporal=temporal)
    assert got[0].tolist() == [kind == "spatial" for kind in kinds]


def test_head_errors_measure_dropped_mass():
    gen = torch.Generator().manual_seed(2)
    q, k, _ = _head_inputs(GRID, ["spatial", "temporal"], gen)
    err = head_errors(q, k, GRID, None, num_samples=8)
    assert err.shape == (2, 1, 2)
    assert err[0, 0, 0] < 0.05 and err[1, 0, 0] > 0.5  # spatial head: spatial mask keeps its mass
    assert err[1, 0, 1] < 0.05 and err[0, 0, 1] > 0.5  # temporal head: the reverse


def test_classify_heads_with_text_and_grouped_kv():
    gen = torch.Generator().manual_seed(3)
    text = TextSegment("before", 10, "t")
    q, k, v = _head_inputs(GRID, ["temporal", "spatial"], gen)
    # text tokens with small random q/k, prepended; k/v shared by both heads' group of 2 -> use
    # 2 kv heads for 4 query heads (each kv head serves two query heads)
    pad = lambda t: torch.cat([0.1 * torch.randn(1, t.shape[1], 10, t.shape[-1], generator=gen, dtype=t.dtype), t], 2)
    q, k, v = pad(q), pad(k), pad(v)
    q4 = q.repeat_interleave(2, dim=1)  # [1, 4, S, D]: heads t, t, s, s
    got = classify_heads(q4, k, GRID, text, v=v, num_samples=12)
    assert got[0].tolist() == [False, False, True, True]


def test_sparse_matches_dense_inside_support_and_not_outside():
    gen = torch.Generator().manual_seed(4)
    text = TextSegment("after", 13, "t")
    for factory, rule, other_rule in (
        (generate_spatial_mask, spatial_rule(0, False), temporal_rule(GRID.width, 0, False)),
        (generate_temporal_mask, temporal_rule(GRID.width, 0, False), spatial_rule(0, False)),
    ):
        p = factory(GRID, text, block_m=16, block_n=16)
        inside = token_definition(GRID, text, rule)
        q, k, v = attention_from_support(inside, 1, 2, gen=gen)
        dense = sparse_attention_reference(q, k, v)
        qp, kp, vp = (apply_permutation(t, p, 2) for t in (q, k, v))
        out = undo_permutation(sparse_attention_reference(qp, kp, vp, p.mask), p, 2)
        assert rel_err(out, dense) < 1e-6, p.name
        # Attention on the other head kind's support: large error.
        q, k, v = attention_from_support(token_definition(GRID, text, other_rule), 1, 2, gen=gen)
        dense = sparse_attention_reference(q, k, v)
        qp, kp, vp = (apply_permutation(t, p, 2) for t in (q, k, v))
        out = undo_permutation(sparse_attention_reference(qp, kp, vp, p.mask), p, 2)
        assert rel_err(out, dense) > 0.3, p.name


def test_cached_and_bad_parameters():
    assert generate_temporal_mask(GRID, block_m=16, block_n=16) is generate_temporal_mask(
        TokenGrid(4, 6, 8, "other source"), block_m=16, block_n=16
    )
    assert generate_spatial_mask(GRID, block_m=16, block_n=16) is not generate_spatial_mask(
        GRID, block_m=16, block_n=16, frame_window=1
    )
    with pytest.raises(ValueError, match="frame_window"):
        generate_spatial_mask(GRID, frame_window=-1)
    with pytest.raises(ValueError, match="position_window"):
        generate_temporal_mask(GRID, position_window=2.0)
    with pytest.raises(ValueError, match="sink"):
        generate_spatial_mask(GRID, sink="yes")
    q = torch.randn(1, 2, 192, 8)
    with pytest.raises(ValueError, match="num_samples"):
        classify_heads(q, q, GRID, num_samples=0)
    with pytest.raises(ValueError, match="layout"):
        classify_heads(q, q, GRID, layout="sbhd")
    with pytest.raises(ValueError, match="tokens"):
        classify_heads(q[:, :, :100], q[:, :, :100], GRID)
