"""Independent token-level definitions of the papers' masks and block shrinks, for the tests.

Written from the papers' rules directly (explicit loops / padded reshapes), not from the
implementation's closed forms.  All masks are bool [S, S] over the *original* token order
unless a function says otherwise.
"""

from __future__ import annotations

import math

import torch

from ditcompile.geometry import TextSegment, TokenGrid


def layout(grid: TokenGrid, text: TextSegment | None):
    """(text range or None, video start, total)."""
    n_video = grid.frames * grid.height * grid.width
    t = 0 if text is None else text.length
    before = text is not None and text.position == "before"
    start = t if before else 0
    total = n_video + t
    rng = None if t == 0 else ((0, t) if before else (n_video, total))
    return rng, start, total


def coords(grid: TokenGrid, text: TextSegment | None):
    """Per original token: (frame, h, w) or None for text."""
    _, start, total = layout(grid, text)
    hw = grid.height * grid.width
    out = []
    for i in range(total):
        v = i - start
        if 0 <= v < grid.frames * hw:
            out.append((v // hw, (v % hw) // grid.width, v % grid.width))
        else:
            out.append(None)
    return out


def with_text_dense(allowed: torch.Tensor, text_range) -> torch.Tensor:
    allowed = allowed.clone()
    if text_range is not None:
        allowed[text_range[0] : text_range[1], :] = True
        allowed[:, text_range[0] : text_range[1]] = True
    return allowed


def token_definition(grid, text, rule) -> torch.Tensor:
    """bool [S, S]: rule(q, k) on video pairs, text rows/cols dense.

    ``rule`` gets q = (f, h, w) as int64 [S, 1] tensors and k = (f, h, w) as [1, S] tensors
    (text tokens carry -1 and are masked out afterwards) and returns bool [S, S].
    """
    c = coords(grid, text)
    fhw = torch.tensor([(-1, -1, -1) if x is None else x for x in c])  # [S, 3]
    video = fhw[:, 0] >= 0
    q = tuple(fhw[:, a, None] for a in range(3))
    k = tuple(fhw[None, :, a] for a in range(3))
    allowed = rule(q, k) & video[:, None] & video[None, :]
    return with_text_dense(allowed, layout(grid, text)[0])


def permute_square(allowed: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Original-order token mask -> the permuted order (position i holds token perm[i])."""
    if perm is None:
        return allowed
    return allowed[perm][:, perm]


def shrink_any(allowed: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """bool [NQB, NKB]: block listed iff it holds an allowed pair (padded reshape)."""
    s_q, s_k = allowed.shape
    nqb, nkb = math.ceil(s_q / bm), math.ceil(s_k / bn)
    padded = torch.zeros(nqb * bm, nkb * bn, dtype=torch.bool)
    padded[:s_q, :s_k] = allowed
    return padded.view(nqb, bm, nkb, bn).any(dim=3).any(dim=1)


def shrink_strict(pair_mask: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """The radial reference's strict shrink of one (zero-padded) token mask: bool [NQB, NKB].

    Column density = (# allowed rows in the block) / bm; keep a block iff the fraction of its
    non-zero columns whose density exceeds 1/3 is above 0.6.
    """
    s_q, s_k = pair_mask.shape
    nqb, nkb = math.ceil(s_q / bm), math.ceil(s_k / bn)
    padded = torch.zeros(nqb * bm, nkb * bn)
    padded[:s_q, :s_k] = pair_mask.double()
    col_density = padded.view(nqb, bm, nkb, bn).sum(dim=1) / bm  # [NQB, NKB, bn]
    nonzero = (col_density > 0).sum(-1).double()
    high = (col_density > 1 / 3).sum(-1).double()
    return high / (nonzero + 1e-9) > 0.6


# ---------------------------------------------------------------------- radial


def radial_rule(height: int, width: int, *, band: int, decay_factor: float, sink: bool, min_window: int):
    """Radial Attention's token rule, written from the paper reference's description:
    dense for the sink frame and |df| <= band; else a window 2**bitlen(N) / 2**bitlen(d)
    (times decay_factor, floored at min_window) on the raster-index distance, and frame pairs
    whose undecayed window is below min_window kept only every (min_window / window)-th frame.
    """
    n = height * width

    def pair(d: int):
        """(active, window) for frame distance d > band, from log2 arithmetic."""
        group = int(math.floor(math.log2(d))) + 1  # bit length of d
        base = 2 ** (int(math.floor(math.log2(n))) + 1) / 2**group  # 2**bitlen(N) / 2**group
        active = base >= min_window or d % int(min_window / base) == 0
        return active, max(base * decay_factor, min_window)

    def rule(q, k):
        d = (q[0] - k[0]).abs()  # [S, S]
        spatial = ((q[1] * width + q[2]) - (k[1] * width + k[2])).abs()
        allowed = d <= band
        for dist in range(band + 1, int(d.max()) + 1):
            active, window = pair(dist)
            if active:
                allowed |= (d == dist) & (spatial <= window)
        if sink:
            allowed |= k[0] == 0
        return allowed

    return rule


def radial_blocks_reference(grid, text, *, bm, bn, band, decay_factor, sink, min_window) -> torch.Tensor:
    """Per-frame-pair strict shrink of the token definition, OR-ed: bool [NQB, NKB]."""
    rule = radial_rule(grid.height, grid.width, band=band, decay_factor=decay_factor, sink=sink, min_window=min_window)
    c = coords(grid, text)
    allowed = token_definition(grid, text, rule)
    total = len(c)
    frame = torch.tensor([-1 if x is None else x[0] for x in c])
    out = torch.zeros(math.ceil(total / bm), math.ceil(total / bn), dtype=torch.bool)
    for a in range(grid.frames):
        for b in range(grid.frames):
            pair = allowed & (frame == a)[:, None] & (frame == b)[None, :]
            out |= shrink_strict(pair, bm, bn)
    return out


# ---------------------------------------------------------------------- SVG


def spatial_rule(frame_window: int, sink: bool):
    return lambda q, k: ((q[0] - k[0]).abs() <= frame_window) | (sink & (k[0] == 0))


def temporal_rule(width: int, position_window: int, sink: bool):
    def rule(q, k):
        sq, sk = q[1] * width + q[2], k[1] * width + k[2]
        return ((sq - sk).abs() <= position_window) | (sink & (k[0] == 0))

    return rule


# ---------------------------------------------------------------------- STA


def tile_rule(grid, tile, window):
    n_tiles = [math.ceil(d / t) for d, t in zip((grid.frames, grid.height, grid.width), tile)]

    def rule(q, k):
        allowed = torch.ones(q[0].shape[0], k[0].shape[1], dtype=torch.bool)
        for axis in range(3):
            cq, ck = q[axis] // tile[axis], k[axis] // tile[axis]
            half = window[axis] // 2
            lo, hi = half, n_tiles[axis] - 1 - half
            centre = torch.where(cq < lo, lo, cq)
            centre = torch.where(centre > hi, hi, centre)  # upper bound wins, as torch.clamp
            allowed &= (centre - ck).abs() <= half
        return allowed

    return rule


# ---------------------------------------------------------------------- attention helpers


def attention_from_support(support: torch.Tensor, batch: int, heads: int, *, strength: float = 40.0, dv: int = 8,
                           gen: torch.Generator | None = None):
    """q, k, v float64 [B, H, S, S|dv] with scores = strength on allowed pairs, 0 elsewhere.

    support: bool [S, S] or [H, S, S] (per head).  k_j = e_j * sqrt(strength * sqrt(D)) and
    q_i = support row * the same factor, so with SDPA's 1/sqrt(D) scale q_i.k_j / sqrt(D) =
    strength * support[i, j].  Attention then lives (up to e^-strength) inside the support.
    """
    seq = support.shape[-1]
    if support.dim() == 2:
        support = support.expand(heads, seq, seq)
    factor = math.sqrt(strength * math.sqrt(seq))
    k = torch.eye(seq, dtype=torch.float64).expand(batch, heads, seq, seq) * factor
    q = support.double().expand(batch, heads, seq, seq) * factor
    v = torch.randn(batch, heads, seq, dv, dtype=torch.float64, generator=gen)
    return q.contiguous(), k.contiguous(), v


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()
