"""Radial Attention: a static O(n log n) "energy decay" mask (Li et al., arXiv 2506.19852).

The paper observes that post-softmax attention energy decays with spatial and temporal
distance, and keeps, for query frame ``a`` and key frame ``b`` at frame distance
``d = |a - b|``, only keys within a spatial window that halves each time ``d`` doubles; when
that window falls below one block, only every ``k``-th frame pair is kept instead.  We
implement the rule of the paper's reference (``gen_log_mask_shrinked`` /
``get_window_width`` / ``get_diagonal_split_mask`` in mit-han-lab/radial-attention), written
with our own names.

Token-level rule
----------------
``N = H * W`` tokens per frame, ``s = h * W + w`` a token's raster index inside its frame,
``P = 2 ** N.bit_length()`` (the smallest power of two above ``N``), ``m = min_window``
(default: ``block_n``, the reference's block size) and ``g(d) = d.bit_length()``
(``floor(log2 d) + 1``).  Video query (a, s_q) may attend video key (b, s_k) iff

* ``sink`` and ``b == 0`` (attention-sink frame: every query sees the whole first frame), or
* ``d <= band`` (dense band of temporally neighbouring frames), or
* the frame pair is *active* and ``|s_q - s_k| <= window(d)``, where
  ``base(d) = P / 2 ** g(d)``, ``window(d) = max(base(d) * decay_factor, m)`` and the pair is
  active iff ``base(d) >= m`` or ``d % int(m / base(d)) == 0``.

Text rows and columns are dense.

Block shrink (as the reference does it)
--------------------------------------
The token mask is shrunk *per frame pair* and the results are OR-ed.  For frame pair
``(a, b)`` and block ``(I, J)`` (``block_m`` x ``block_n`` tokens of the joint sequence),
let ``c(j) = #{query tokens i of frame a in block I allowed to key j}`` for each key ``j`` of
frame ``b`` in block ``J``.  Column ``j`` is *non-zero* if ``c(j) > 0`` and *dense* if
``c(j) / block_m > 1/3``; the pair keeps block ``(I, J)`` iff it has a non-zero column and
``#dense > 0.6 * #non-zero`` (the reference's ``shrinkMaskStrict``).  Block ``(I, J)`` is
listed iff some frame pair keeps it.  This is *not* a superset of the token mask: sparse
blocks (e.g. the corners of a narrow window band) are dropped, as in the paper.

Where we differ from / had to read the reference
------------------------------------------------
* The reference hard-codes 128 as the split threshold and uses its block size as the window
  floor; both are ``min_window`` here (default ``block_n``, i.e. 128 at the default block).
* The reference's ``model_type`` becomes two flags: ``wan`` = ``sink=True``, ``hunyuan`` =
  ``sink=False``; both use ``band=1``.  The reference applies the frame-split rule also to
  ``d <= 1`` (a no-op unless frames have fewer than ``2 * min_window`` tokens); we keep the
  band dense unconditionally, as the paper describes.
* The reference places each frame pair into a padded tile of ``ceil(N / block)`` blocks and
  so drops the last block a frame touches when the frame starts mid-block; we shrink over
  every block the frame pair touches.
* Frames start at ``video_start`` (after the text when it comes first); the reference only
  handles text after the video.  The ragged last block is treated as zero-padded (densities
  are always divided by ``block_m``), as the reference pads the sequence.
* ``decay_factor``: the reference code's default is 1.0 (its Wan script passes 0.2).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..geometry import GridLike, TextSegment, TokenLayout, device_key
from ..kernels.block_mask import check_block_sizes
from .common import check_bool, check_float, check_int
from .pattern import SparsePattern, self_attention_mask
from .policy import Policy

__all__ = ["RadialParams", "RADIAL", "generate_radial_mask", "radial_frame_rule"]


@dataclass(frozen=True)
class RadialParams:
    """band: frames at distance <= band attend each other densely (int >= 0).
    decay_factor: scales the spatial window (finite, > 0; smaller = sparser).
    sink: every query attends the whole first frame (Wan: True, HunyuanVideo: False).
    min_window: window floor and frame-split threshold in tokens (int >= 1; None: the block size).
    """

    band: int = 1
    decay_factor: float = 1.0
    sink: bool = True
    min_window: Optional[int] = None

    def __post_init__(self) -> None:
        check_int("band", self.band, 0)
        check_float("decay_factor", self.decay_factor, 0.0, float("inf"), lo_open=True, hi_open=True)
        check_bool("sink", self.sink)
        if self.min_window is not None:
            check_int("min_window", self.min_window, 1)


def radial_frame_rule(
    distance: int, tokens_per_frame: int, *, band: int, decay_factor: float, min_window: int
) -> tuple[bool, float]:
    """(active, window) for a non-sink frame pair at frame distance ``distance``.

    ``active`` False: no token of the pair is allowed.  ``window``: keys with
    ``|s_q - s_k| <= window`` are allowed (``inf`` inside the dense band).
    """
    if distance <= band:
        return True, float("inf")
    base = 2.0 ** tokens_per_frame.bit_length() / 2.0 ** distance.bit_length()
    window = max(base * decay_factor, float(min_window))
    active = base >= min_window or distance % int(min_window / base) == 0
    return active, window


def generate_radial_mask(
    grid: GridLike,
    text: Optional[TextSegment] = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    band: int = 1,
    decay_factor: float = 1.0,
    sink: bool = True,
    min_window: Optional[int] = None,
    device: torch.device | str | None = None,
) -> SparsePattern:
    """Radial Attention's static mask for ``grid`` (+ ``text``), cached per shape and params.

    Parameters as in :class:`RadialParams` (ValueError naming a bad one); block sizes are
    positive multiples of 16. Returns an identity-permutation pattern with one mask shared by
    all batches and heads.
    """
    layout = TokenLayout.of(grid, text)
    check_block_sizes(block_m, block_n)
    p = RadialParams(band=band, decay_factor=decay_factor, sink=sink, min_window=min_window)
    window = block_n if p.min_window is None else p.min_window
    return _radial_cached(layout, block_m, block_n, p.band, float(p.decay_factor), p.sink, window, device_key(device))


@functools.lru_cache(maxsize=32)
def _radial_cached(
    layout: TokenLayout, block_m: int, block_n: int, band: int, decay_factor: float, sink: bool,
    min_window: int, device: str,
) -> SparsePattern:  # fmt: skip
    blocks = _radial_blocks(layout, block_m, block_n, band, decay_factor, sink, min_window, torch.device(device))
    text = layout.text_range
    return SparsePattern(self_attention_mask(blocks, block_m, block_n, layout.total, text), None, name="radial")


def _segments(layout: TokenLayout, block: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Cut the video tokens at frame and block boundaries.

    Returns int64 [G] tensors (frame, block, lo, hi): segment g holds the tokens
    ``[lo, hi)`` (local indices inside its frame) of one frame that fall in one block.
    """
    start, n, total_video = layout.video_start, layout.tokens_per_frame, layout.num_video
    frame_cuts = start + torch.arange(layout.frames + 1, device=device) * n
    first_block = start // block + 1
    block_cuts = torch.arange(first_block, -(-(start + total_video) // block), device=device) * block
    cuts = torch.unique(torch.cat([frame_cuts, block_cuts]))  # sorted token boundaries
    seg_lo, seg_hi = cuts[:-1], cuts[1:]
    frame = (seg_lo - start) // n
    base = start + frame * n
    return frame, seg_lo // block, seg_lo - base, seg_hi - base


def _radial_blocks(
    layout: TokenLayout, block_m: int, block_n: int, band: int, decay_factor: float, sink: bool,
    min_window: int, device: torch.device,
) -> torch.Tensor:  # fmt: skip
    """bool [NQB, NKB]: the per-frame-pair strict shrink, OR-ed (see module docstring).

    For query segment (frame a, block I, local rows [x0, x1)) and key segment (frame b,
    block J, local keys [y0, y1)), the column count ``c(y) = #{x in [x0, x1): |x - y| <= W}``
    is a trapezoid in y, so the non-zero and dense column counts are interval lengths:

        non-zero:  y in [x0 - W, x1 - 1 + W]
        dense:     c(y) >= c* = block_m // 3 + 1  <=>  y in [x0 - W - 1 + c*, x1 + W - c*],
                   non-empty only if x1 - x0 >= c* and 2W + 1 >= c*

    (``W = N`` for dense frame pairs, so c(y) = x1 - x0.)  Everything is computed for all
    (query segment, key segment) pairs at once: about (F + NQB) x (F + NKB) entries.
    """
    frames, n = layout.frames, layout.tokens_per_frame
    seq = layout.total
    nqb, nkb = -(-seq // block_m), -(-seq // block_n)

    # Frame-pair rule: window W [F, F] (int, N = dense) and activity [F, F].
    win_by_d, act_by_d = [], []
    for d in range(frames):
        act, win = radial_frame_rule(d, n, band=band, decay_factor=decay_factor, min_window=min_window)
        win_by_d.append(n if win >= n else int(win))  # |s_q - s_k| <= N - 1 always
        act_by_d.append(act)
    f = torch.arange(frames, device=device)
    dist = (f[:, None] - f[None, :]).abs()  # [F, F]
    win = torch.tensor(win_by_d, device=device)[dist]
    act = torch.tensor(act_by_d, device=device)[dist]
    if sink:
        win[:, 0], act[:, 0] = n, True

    fa, qi, x0, x1 = (t[:, None] for t in _segments(layout, block_m, device))  # [Gq, 1]
    fb, kj, y0, y1 = (t[None, :] for t in _segments(layout, block_n, device))  # [1, Gk]
    w = win[fa, fb]  # [Gq, Gk]
    nonzero = (torch.minimum(y1, x1 + w) - torch.maximum(y0, x0 - w)).clamp(min=0)
    c_star = block_m // 3 + 1
    dense = (torch.minimum(y1, x1 + w - c_star + 1) - torch.maximum(y0, x0 - w - 1 + c_star)).clamp(min=0)
    dense = dense * ((x1 - x0 >= c_star) & (2 * w + 1 >= c_star))
    # keep iff  #dense / #non-zero > 0.6  (exact integer form)
    keep = act[fa, fb] & (nonzero > 0) & (5 * dense > 3 * nonzero)  # [Gq, Gk]
    out = torch.zeros(nqb * nkb, dtype=torch.bool, device=device)
    out[(qi * nkb + kj)[keep]] = True  # OR over the frame pairs sharing a block
    return out.view(nqb, nkb)


RADIAL = Policy(
    name="radial",
    params=RadialParams,
    static_patterns=lambda tokens, block, p, device: (
        generate_radial_mask(tokens, block_m=block, block_n=block, device=device, **dataclasses.asdict(p)),),
    paper="Radial Attention (Li et al., arXiv 2506.19852)",
    caches=(_radial_cached,),
)
