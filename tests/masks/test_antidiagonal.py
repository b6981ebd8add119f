"""XAttention antidiagonal block selection against a direct (looped) implementation of its rule."""

from __future__ import annotations

import math

import pytest
import torch

from ditcompile.geometry import TextSegment, TokenGrid
from ditcompile.kernels.attention.reference import sparse_attention_reference, token_mask
from ditcompile.masks import antidiagonal_block_mass, generate_antidiagonal_mask

from ._defs import rel_err

GRID = TokenGrid(4, 6, 8, "test")  # 192 video tokens


def naive_mass(q, k, bm, bn, stride):
    """Block mass [B, H, NQB, NKB] by explicit antidiagonal sums over zero-padded groups."""
    b, h, s, d = q.shape
    g = math.ceil(s / stride)
    qp = torch.zeros(b, h, g * stride, d, dtype=torch.float64)
    kp = torch.zeros_like(qp)
    qp[:, :, :s], kp[:, :, :s] = q.double(), k.double()
    scores = qp @ kp.transpose(-1, -2)  # [B, H, G*s, G*s] token scores
    est = torch.zeros(b, h, g, g, dtype=torch.float64)
    for t in range(stride):  # antidiagonal: query offset s-1-t with key offset t
        est += scores[:, :, stride - 1 - t :: stride, t::stride]
    probs = torch.softmax(est / math.sqrt(d) / stride, dim=-1)
    nqb, nkb = math.ceil(s / bm), math.ceil(s / bn)
    mass = torch.zeros(b, h, nqb, nkb, dtype=torch.float64)
    for r in range(g):
        for c in range(g):
            mass[:, :, (r * stride) // bm, (c * stride) // bn] += probs[:, :, r, c]
    return mass


def naive_select(mass, forced, tau):
    """Per row: forced blocks first, then by decreasing mass; keep while the mass before < tau."""
    keep = torch.zeros_like(mass, dtype=torch.bool)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in mass.shape[:-1]]):
        row = mass[tuple(idx)]
        share = row / row.sum()
        order = sorted(range(len(row)), key=lambda j: (not forced[idx[-1], j], -share[j].item()))
        acc = 0.0
        for j in order:
            if forced[idx[-1], j] or acc < tau:
                keep[tuple(idx) + (j,)] = True
            acc += share[j].item()
    return keep


def forced_blocks(seq, bm, bn, text_range):
    nqb, nkb = math.ceil(seq / bm), math.ceil(seq / bn)
    forced = torch.zeros(nqb, nkb, dtype=torch.bool)
    for i in range(nqb):
        for j in range(nkb):
            q_tokens = set(range(i * bm, min(seq, (i + 1) * bm)))
            k_tokens = set(range(j * bn, min(seq, (j + 1) * bn)))
            text = text_range is not None and all(text_range[0] <= t < text_range[1] for t in k_tokens)
            forced[i, j] = bool(q_tokens & k_tokens) or text
    return forced


@pytest.mark.parametrize(
    "text, bm, bn, stride, tau",
    [
        (None, 16, 16, 4, 0.9),
        (TextSegment("before", 20, "t"), 16, 16, 4, 0.8),  # ragged: 212 tokens
        (TextSegment("after", 37, "t"), 32, 16, 8, 0.95),
        (TextSegment("after", 5, "t"), 16, 32, 16, 0.5),
    ],
)
def test_matches_direct_rule(text, bm, bn, stride, tau):
    gen = torch.Generator().manual_seed(11)
    seq = 192 + (0 if text is None else text.length)
    q = torch.randn(2, 3, seq, 16, generator=gen, dtype=torch.float64) * 2
    k = torch.randn(2, 3, seq, 16, generator=gen, dtype=torch.float64) * 2
    mass = antidiagonal_block_mass(q, k, block_m=bm, block_n=bn, stride=stride)
    expected_mass = naive_mass(q, k, bm, bn, stride)
    torch.testing.assert_close(mass.double(), expected_mass, rtol=1e-5, atol=1e-6)
    p = generate_antidiagonal_mask(q, k, GRID, text, block_m=bm, block_n=bn, stride=stride, threshold=tau)
    text_range = None if text is None else text.token_range(seq)
    expected = naive_select(expected_mass, forced_blocks(seq, bm, bn, text_range), tau)
    assert torch.equal(p.mask.to_dense_block_mask(), expected)
    assert p.mask.dense_q_range == text_range == p.mask.dense_kv_range
    assert p.permutation is None and p.name == "antidiagonal"


def _block_structured(seq, bm, targets, gen, *, strength=30.0, heads=2):
    """q, k [1, heads, S, D]: tokens of query block I attend (only) the tokens of block targets[I]."""
    nb = math.ceil(seq / bm)
    block = torch.arange(seq) // bm
    dim = nb + 4
    code_k = torch.nn.functional.one_hot(block, dim).double()  # key: its own block
    code_q = torch.nn.functional.one_hot(torch.tensor(targets)[block], dim).double()  # query: its target
    factor = math.sqrt(strength * math.sqrt(dim))
    q = (code_q * factor).expand(1, heads, seq, dim) + 0.01 * torch.randn(1, heads, seq, dim, generator=gen, dtype=torch.float64)
    k = (code_k * factor).expand(1, heads, seq, dim) + 0.01 * torch.randn(1, heads, seq, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(1, heads, seq, 8, generator=gen, dtype=torch.float64)
    return q, k, v


def test_keeps_the_blocks_that_carry_the_mass():
    gen = torch.Generator().manual_seed(12)
    seq, bm = 192, 16
    targets = [(3 * i + 5) % 12 for i in range(12)]  # a permutation of the 12 blocks
    q, k, v = _block_structured(seq, bm, targets, gen)
    p = generate_antidiagonal_mask(q, k, GRID, block_m=bm, block_n=bm, stride=4, threshold=0.9)
    blocks = p.mask.to_dense_block_mask()  # [1, 2, 12, 12]
    expected = torch.eye(12, dtype=torch.bool)
    expected[torch.arange(12), torch.tensor(targets)] = True  # target + diagonal, nothing else
    assert torch.equal(blocks, expected.expand(1, 2, 12, 12))
    # the kept blocks reach the threshold of the estimated mass
    mass = antidiagonal_block_mass(q, k, block_m=bm, block_n=bm, stride=4).double()
    kept_share = (mass * blocks).sum(-1) / mass.sum(-1)
    assert (kept_share >= 0.9).all()
    # sparse attention on this mask matches dense attention
    dense = sparse_attention_reference(q, k, v)
    assert rel_err(sparse_attention_reference(q, k, v, p.mask), dense) < 1e-6


def test_threshold_is_reached_and_diagonal_always_kept():
    gen = torch.Generator().manual_seed(13)
    text = TextSegment("after", 20, "t")
    q = torch.randn(1, 4, 212, 32, generator=gen) * 3
    k = torch.randn(1, 4, 212, 32, generator=gen) * 3
    for tau in (0.3, 0.7, 0.95, 1.0):
        p = generate_antidiagonal_mask(q, k, GRID, text, block_m=16, block_n=16, stride=8, threshold=tau)
        blocks = p.mask.to_dense_block_mask()
        mass = antidiagonal_block_mass(q, k, block_m=16, block_n=16, stride=8).double()
        share = (mass * blocks).sum(-1) / mass.sum(-1)
        assert (share >= tau - 1e-6).all()
        assert blocks[..., torch.arange(14), torch.arange(14)].all(), "diagonal blocks always kept"
        tm = token_mask(p.mask)
        assert tm[..., 192:, :].all() and tm[..., :, 192:].all(), "text rows and columns dense"
    # tau = 1 keeps all blocks; a small tau keeps fewer
    low = generate_antidiagonal_mask(q, k, GRID, text, block_m=16, block_n=16, threshold=0.2)
    assert low.density < p.density


def test_sparse_error_large_when_mass_is_dropped():
    # Attention spread over many blocks; a low threshold drops real mass -> large error.
    gen = torch.Generator().manual_seed(14)
    seq = 192
    q, k, v = _block_structured(seq, 16, list(range(12)), gen, strength=0.0)
    q, k = torch.randn_like(q) * 0.1, torch.randn_like(k) * 0.1  # near-uniform attention
    v = v + torch.arange(seq, dtype=torch.float64)[None, None, :, None] / 20  # v varies across blocks
    p = generate_antidiagonal_mask(q, k, GRID, block_m=16, block_n=16, stride=4, threshold=0.05)
    dense = sparse_attention_reference(q, k, v)
    assert rel_err(sparse_attention_reference(q, k, v, p.mask), dense) > 0.3


def test_threshold_is_strict_on_ties():
    # Uniform attention over 4 blocks: each holds exactly 1/4 of the mass.  With tau = 0.5 the
    # diagonal and one more block reach it; a third block (mass before it == tau) is not kept.
    q = torch.zeros(1, 1, 64, 8, dtype=torch.float64)
    p = generate_antidiagonal_mask(q, q, TokenGrid(1, 8, 8, "t"), block_m=16, block_n=16, stride=4, threshold=0.5)
    blocks = p.mask.to_dense_block_mask()[0, 0]
    assert blocks.sum(-1).tolist() == [2, 2, 2, 2] and blocks.diagonal().all()


def test_bshd_layout_and_grouped_kv():
    gen = torch.Generator().manual_seed(15)
    q = torch.randn(1, 4, 192, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 192, 16, generator=gen, dtype=torch.float64)
    ref = generate_antidiagonal_mask(q, k.repeat_interleave(2, 1), GRID, block_m=16, block_n=16, stride=4)
    got = generate_antidiagonal_mask(
        q.transpose(1, 2), k.transpose(1, 2), GRID, block_m=16, block_n=16, stride=4, layout="bshd"
    )
    assert torch.equal(got.mask.to_dense_block_mask(), ref.mask.to_dense_block_mask())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(stride=3), "stride"),
        (dict(stride=0), "stride"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(block_n=20), "block_n"),
        (dict(layout="bsdh"), "layout"),
    ],
)
def test_bad_parameters(kwargs, name):
    q = torch.randn(1, 1, 192, 8)
    with pytest.raises(ValueError, match=name):
        generate_antidiagonal_mask(q, q, GRID, **({"block_m": 16, "block_n": 16} | kwargs))


def test_sequence_length_must_match_grid():
    q = torch.randn(1, 1, 200, 8)
    with pytest.raises(ValueError, match="tokens"):
        generate_antidiagonal_mask(q, q, GRID, block_m=16, block_n=16)
