"""Sparse VideoGen's spatial and temporal head patterns (Xi et al., arXiv 2502.01776).

The paper finds two kinds of attention heads in video DiTs: *spatial* heads, whose attention
stays inside a frame (and its neighbours), and *temporal* heads, whose attention connects the
same spatial position across frames.  Each head is classified online by computing exact
attention for a few sampled query rows and comparing the error of the two masks
(:func:`classify_heads`); the temporal mask becomes block-contiguous after a
frame-major -> position-major token permutation ("layout transformation").

Token-level definitions (video token = (frame f, raster position s = h*W + w))
-----------------------------------------------------------------------------
* spatial: (f_q, s_q) attends (f_k, s_k) iff ``|f_q - f_k| <= frame_window``, or
  ``sink`` and ``f_k == 0`` (the first frame, which SVG's Wan version adds as an attention sink).
  No permutation: frames are contiguous, so the mask is block-diagonal over frames.
* temporal: (f_q, s_q) attends (f_k, s_k) iff ``|s_q - s_k| <= position_window`` (all frames),
  or ``sink`` and ``f_k == 0``.  Permutation: video tokens go position-major, i.e. permuted
  video position ``s * F + f`` holds token (f, s), so a position's F tokens are contiguous.

Text rows and columns are dense.  Blocks: a block is listed iff it holds at least one allowed
token pair (the smallest block-level superset of the token mask, what FlexAttention's
``create_block_mask`` gives for these mask_mods).

Reading of the reference (svg-project/Sparse-VideoGen)
------------------------------------------------------
The released kernels run *both* head kinds with one banded block mask
(``|q - kv| <= 2 * frame_size`` in token order, plus a first-frame sink), temporal heads on
permuted tokens; in the original order that band is "about ±2 frames" for spatial heads and
"the same position +- about 2*H*W/F raster neighbours, all frames" for temporal heads.  We
implement the paper's definitions with their widths as parameters: ``frame_window=2`` and
``position_window ~ 2*H*W/F`` approximate the released configuration.  The profiling
compares the MSE of the sampled output rows (``sample_mse``) when ``v`` is given; without
``v`` we compare the attention mass each mask drops, which bounds the output error.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..geometry import BHSD, GridLike, TextSegment, TokenLayout, device_key, to_bhsd
from ..kernels.block_mask import check_block_sizes
from .common import check_bool, check_int, shrink_classes
from .pattern import SparsePattern, self_attention_mask, pattern_token_rows
from .policy import ChoiceInputs, PatternChoice, Policy

__all__ = [
    "SpatialTemporalParams",
    "SPATIAL_TEMPORAL",
    "generate_spatial_mask",
    "generate_temporal_mask",
    "temporal_permutation",
    "head_errors",
    "classify_heads",
]


@dataclass(frozen=True)
class SpatialTemporalParams:
    """frame_window: spatial heads attend their frame +- this many frames (int >= 0).
    position_window: temporal heads attend their raster position +- this many positions (int >= 0).
    sink: every query attends the whole first frame.
    num_samples: query rows sampled to classify the heads (int >= 1).
    reclassify_every: the head classes are recomputed every this many denoising steps (int >= 1).
    """

    frame_window: int = 0
    position_window: int = 0
    sink: bool = False
    num_samples: int = 32
    reclassify_every: int = 1

    def __post_init__(self) -> None:
        check_int("frame_window", self.frame_window, 0)
        check_int("position_window", self.position_window, 0)
        check_bool("sink", self.sink)
        check_int("num_samples", self.num_samples, 1)
        check_int("reclassify_every", self.reclassify_every, 1)


# ---------------------------------------------------------------------- permutation


def temporal_permutation(grid: GridLike, text: Optional[TextSegment] = None, *, device=None) -> Tensor:
    """int64 [S]: position-major order of the video tokens (text stays in place).

    Permuted position ``video_start + s * F + f`` holds original token ``video_start + f * H*W + s``.
    """
    layout = TokenLayout.of(grid, text)
    return _temporal_permutation(layout, torch.device(device_key(device)))


def _temporal_permutation(layout: TokenLayout, device: torch.device) -> Tensor:
    start, n_video = layout.video_start, layout.num_video
    perm = torch.arange(layout.total, device=device)  # [S]
    video = torch.arange(n_video, device=device).view(layout.frames, layout.tokens_per_frame)  # [F, HW]
    perm[start : start + n_video] = start + video.t().reshape(-1)  # [HW*F] position-major
    return perm


def _frame_and_position(layout: TokenLayout, device: torch.device) -> tuple[Tensor, Tensor]:
    """int64 [S] frame and raster position of every original token (-1 for text)."""
    frame = torch.full((layout.total,), -1, dtype=torch.int64, device=device)
    pos = torch.full_like(frame, -1)
    idx = torch.arange(layout.num_video, device=device)
    sl = slice(layout.video_start, layout.video_start + layout.num_video)
    frame[sl] = idx // layout.tokens_per_frame
    pos[sl] = idx % layout.tokens_per_frame
    return frame, pos


# ---------------------------------------------------------------------- factories


def generate_spatial_mask(
    grid: GridLike,
    text: Optional[TextSegment] = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    frame_window: int = 0,
    sink: bool = False,
    device: torch.device | str | None = None,
) -> SparsePattern:
    """Spatial-head pattern: own frame +- ``frame_window`` frames (>= 0), optional first-frame sink.

    Identity permutation, one mask for all batches/heads, cached per shape and params.
    """
    layout = TokenLayout.of(grid, text)
    check_block_sizes(block_m, block_n)
    check_int("frame_window", frame_window, 0)
    check_bool("sink", sink)
    return _spatial_cached(layout, block_m, block_n, frame_window, sink, device_key(device))


def generate_temporal_mask(
    grid: GridLike,
    text: Optional[TextSegment] = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    position_window: int = 0,
    sink: bool = False,
    device: torch.device | str | None = None,
) -> SparsePattern:
    """Temporal-head pattern: same raster position +- ``position_window`` (>= 0) in all frames.

    Over the position-major permutation (:func:`temporal_permutation`); one mask for all
    batches/heads, cached per shape and params.
    """
    layout = TokenLayout.of(grid, text)
    check_block_sizes(block_m, block_n)
    check_int("position_window", position_window, 0)
    check_bool("sink", sink)
    return _temporal_cached(layout, block_m, block_n, position_window, sink, device_key(device))


def _pattern(layout: TokenLayout, blocks: Tensor, block_m: int, block_n: int, perm, name: str) -> SparsePattern:
    text = layout.text_range
    return SparsePattern(self_attention_mask(blocks, block_m, block_n, layout.total, text), perm, name=name)


@functools.lru_cache(maxsize=32)
def _spatial_cached(
    layout: TokenLayout, block_m: int, block_n: int, frame_window: int, sink: bool, device: str
) -> SparsePattern:
    dev = torch.device(device)
    frame, _ = _frame_and_position(layout, dev)  # [S] class = frame
    f = torch.arange(layout.frames, device=dev)
    allowed = (f[:, None] - f[None, :]).abs() <= frame_window  # [F, F]
    if sink:
        allowed[:, 0] = True
    blocks = shrink_classes(frame, frame, allowed, block_m, block_n)  # [NQB, NKB]
    return _pattern(layout, blocks, block_m, block_n, None, "spatial")


@functools.lru_cache(maxsize=32)
def _temporal_cached(
    layout: TokenLayout, block_m: int, block_n: int, position_window: int, sink: bool, device: str
) -> SparsePattern:
    dev = torch.device(device)
    perm = _temporal_permutation(layout, dev)  # [S]
    frame, pos = _frame_and_position(layout, dev)
    pos_p = pos[perm]  # [S] class of each permuted position = raster position
    hw = layout.tokens_per_frame
    s = torch.arange(hw, device=dev)
    allowed = (s[:, None] - s[None, :]).abs() <= position_window  # [HW, HW]
    blocks = shrink_classes(pos_p, pos_p, allowed, block_m, block_n)
    if sink:
        # the first frame as extra key class: any video query attends every frame-0 key
        frame_p = frame[perm]
        key_first = torch.where(frame_p == 0, 0, -1)
        query_any = torch.where(frame_p >= 0, 0, -1)
        one = torch.ones(1, 1, dtype=torch.bool, device=dev)
        blocks |= shrink_classes(query_any, key_first, one, block_m, block_n)
    return _pattern(layout, blocks, block_m, block_n, perm, "temporal")


# ---------------------------------------------------------------------- online classification


def _definition_rows(
    layout: TokenLayout, rows: Tensor, kind: str, window: int, sink: bool
) -> Tensor:
    """Token-level definition for original query rows: bool [R, S] (text rows/cols dense)."""
    dev = rows.device
    frame, pos = _frame_and_position(layout, dev)
    fq, sq = frame[rows][:, None], pos[rows][:, None]  # [R, 1]
    fk, sk = frame[None, :], pos[None, :]  # [1, S]
    if kind == "spatial":
        allowed = (fq - fk).abs() <= window
    else:
        allowed = (sq - sk).abs() <= window
    allowed = allowed & (fk >= 0)
    if sink:
        allowed = allowed | (fk == 0)
    return allowed | (fk < 0) | (fq < 0)  # text columns / rows dense


def head_errors(
    q: Tensor,
    k: Tensor,
    grid: GridLike,
    text: Optional[TextSegment] = None,
    *,
    v: Optional[Tensor] = None,
    num_samples: int = 32,
    layout: str = BHSD,
    spatial: Optional[SparsePattern] = None,
    temporal: Optional[SparsePattern] = None,
    frame_window: int = 0,
    position_window: int = 0,
    sink: bool = False,
    scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Error of the spatial and the temporal mask on sampled query rows: float32 [2, B, H].

    Samples ``num_samples`` video query rows (without replacement; ``generator`` defaults to a
    fixed seed, so the choice is reproducible), computes their exact attention over all keys,
    and compares it with attention restricted to each mask:

    * with ``v``: mean squared error of the output rows (SVG's ``sample_mse``);
    * without ``v``: mean attention mass outside the mask (``1 - sum of kept probabilities``),
      which bounds the output error by ``2 * mass * max |v|``.

    The masks are the given patterns' exact token support (``spatial`` / ``temporal``, as the
    kernel would run them) or else the token-level definitions with ``frame_window``,
    ``position_window`` and ``sink``.  q: [B, H, S, D] (``layout="bhsd"``) or [B, S, H, D]
    (``"bshd"``); k (and v) may have fewer heads (grouped-query), dividing H.
    """
    seq_layout = TokenLayout.of(grid, text)
    check_int("num_samples", num_samples, 1)
    check_int("frame_window", frame_window, 0)
    check_int("position_window", position_window, 0)
    qb, kb = _bhsd(q, layout, "q"), _bhsd(k, layout, "k")
    vb = None if v is None else _bhsd(v, layout, "v")
    _, heads, seq, dim = qb.shape
    if seq != seq_layout.total or kb.shape[2] != seq:
        raise ValueError(
            f"q/k have {seq}/{kb.shape[2]} tokens but the grid and text describe {seq_layout.total}"
        )
    kb = _expand_heads(kb, heads, "k")
    vb = None if vb is None else _expand_heads(vb, heads, "v")
    dev = qb.device
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    count = min(num_samples, seq_layout.num_video)
    rows = seq_layout.video_start + torch.randperm(seq_layout.num_video, generator=gen)[:count]
    rows = rows.to(dev)  # [R] original query rows

    masks = []
    for kind, pattern, window in (("spatial", spatial, frame_window), ("temporal", temporal, position_window)):
        if pattern is None:
            allowed = _definition_rows(seq_layout, rows, kind, window, sink)[None, None]  # [1, 1, R, S]
        else:
            if pattern.seq_len != seq:
                raise ValueError(f"{kind} pattern is over {pattern.seq_len} tokens, q/k have {seq}")
            allowed = pattern_token_rows(pattern, rows).to(dev)  # [B|1, H|1, R, S]
        masks.append(allowed)

    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    compute = torch.float64 if qb.dtype == torch.float64 else torch.float32
    scores = torch.matmul(qb[:, :, rows].to(compute), kb.to(compute).transpose(-1, -2)) * scale  # [B, H, R, S]
    probs = torch.softmax(scores, dim=-1)
    errors = []
    for allowed in masks:
        if vb is None:
            kept = (probs * allowed).sum(-1)  # [B, H, R]
            errors.append((1.0 - kept).mean(-1))  # [B, H]
        else:
            vc = vb.to(compute)
            dense_out = probs @ vc  # [B, H, R, Dv]
            masked = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            masked = torch.nan_to_num(masked, nan=0.0)  # rows with no allowed key (cannot happen for video rows)
            errors.append(((masked @ vc - dense_out) ** 2).mean(dim=(-1, -2)))  # [B, H]
    return torch.stack(errors).to(torch.float32)  # [2, B, H]


def classify_heads(
    q: Tensor,
    k: Tensor,
    grid: GridLike,
    text: Optional[TextSegment] = None,
    *,
    num_samples: int = 32,
    layout: str = BHSD,
    v: Optional[Tensor] = None,
    spatial: Optional[SparsePattern] = None,
    temporal: Optional[SparsePattern] = None,
    frame_window: int = 0,
    position_window: int = 0,
    sink: bool = False,
    scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """SVG's online profiling: bool [B, H], True where the head is spatial.

    A head is spatial iff the spatial mask's error on the sampled rows is <= the temporal
    mask's (see :func:`head_errors` for the arguments and the error measure).
    """
    errors = head_errors(
        q, k, grid, text, v=v, num_samples=num_samples, layout=layout, spatial=spatial, temporal=temporal,
        frame_window=frame_window, position_window=position_window, sink=sink, scale=scale, generator=generator,
    )  # fmt: skip
    return errors[0] <= errors[1]


def _bhsd(x: Tensor, layout: str, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor ({layout})")
    return to_bhsd(x, layout)


def _expand_heads(x: Tensor, heads: int, name: str) -> Tensor:
    if x.shape[1] == heads:
        return x
    if heads % x.shape[1]:
        raise ValueError(f"{name} has {x.shape[1]} heads, which does not divide q's {heads}")
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def _choose_heads(inputs: ChoiceInputs, tokens: TokenLayout, block: int, p: SpatialTemporalParams,
                  statics: tuple[SparsePattern, ...]) -> PatternChoice:
    """Sparse VideoGen's online profiling: each head runs the spatial (0) or temporal (1) pattern,
    whichever loses less on sampled query rows (sampling seeded by the step)."""
    spatial, temporal = statics
    generator = torch.Generator(device="cpu").manual_seed(inputs.step or 0)
    is_spatial = classify_heads(
        inputs.q, inputs.k, tokens, num_samples=p.num_samples, layout=inputs.tensor_layout, v=inputs.v,
        spatial=spatial, temporal=temporal, frame_window=p.frame_window, position_window=p.position_window,
        sink=p.sink, scale=inputs.scale, generator=generator,
    )  # fmt: skip
    return PatternChoice(statics, assignment=(~is_spatial).long())  # [B, H]: 0 spatial, 1 temporal


SPATIAL_TEMPORAL = Policy(
    name="spatial_temporal",
    params=SpatialTemporalParams,
    static_patterns=lambda tokens, block, p, device: (
        generate_spatial_mask(tokens, block_m=block, block_n=block, frame_window=p.frame_window, sink=p.sink,
                              device=device),
        generate_temporal_mask(tokens, block_m=block, block_n=block, position_window=p.position_window,
                               sink=p.sink, device=device)),
    choose=_choose_heads,
    refresh_steps=lambda p: p.reclassify_every,
    paper="Sparse VideoGen (Xi et al., arXiv 2502.01776)",
    caches=(_spatial_cached, _temporal_cached),
)
