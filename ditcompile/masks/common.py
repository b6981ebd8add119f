"""Helpers shared by the mask families: the joint-sequence layout, parameter checks, and the
"any" block shrink of a class-structured token mask.

Joint sequence (as the attention op sees it, before any permutation)::

    text "before":  [ text (T) | video (F*H*W, frame-major) ]
    text "after":   [ video (F*H*W, frame-major) | text (T) ]
    video token (f, h, w) sits at  video_start + f*H*W + h*W + w

Text tokens are never permuted and their rows/columns are always dense (the mask's
``dense_q_range`` / ``dense_kv_range``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..graph.sites import TextSegment, TokenGrid

__all__ = ["SequenceLayout", "resolve_layout", "device_key", "shrink_classes"]

GridLike = TokenGrid | tuple  # a TokenGrid or (frames, height, width)


@dataclass(frozen=True)
class SequenceLayout:
    """Where the video and text tokens sit in the joint sequence (all ints, hashable)."""

    frames: int
    height: int
    width: int
    text_len: int = 0
    text_before: bool = False

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_video(self) -> int:
        return self.frames * self.height * self.width

    @property
    def total(self) -> int:
        return self.num_video + self.text_len

    @property
    def video_start(self) -> int:
        return self.text_len if self.text_before else 0

    @property
    def text_range(self) -> Optional[tuple[int, int]]:
        """[start, end) of the text tokens, or None without text."""
        if self.text_len == 0:
            return None
        return (0, self.text_len) if self.text_before else (self.num_video, self.total)

    def video_coords(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(frame, row, col) of every video token in frame-major order: three int64 [F*H*W]."""
        idx = torch.arange(self.num_video, device=device)
        hw = self.tokens_per_frame
        return idx // hw, (idx % hw) // self.width, idx % self.width


def resolve_layout(grid: GridLike, text: Optional[TextSegment] = None) -> SequenceLayout:
    """Validate ``grid`` (a TokenGrid or an (F, H, W) tuple) and ``text`` into a layout."""
    if isinstance(grid, TokenGrid):
        dims = (grid.frames, grid.height, grid.width)
    elif isinstance(grid, (tuple, list)) and len(grid) == 3:
        dims = tuple(grid)
    else:
        raise ValueError(f"grid must be a TokenGrid or a (frames, height, width) tuple, got {grid!r}")
    for name, value in zip(("grid.frames", "grid.height", "grid.width"), dims):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    text_len, before = 0, False
    if text is not None:
        if not isinstance(text, TextSegment):
            raise ValueError(f"text must be a TextSegment or None, got {text!r}")
        if text.position not in ("before", "after"):
            raise ValueError(f"text.position must be 'before' or 'after', got {text.position!r}")
        if text.length is None:
            raise ValueError(
                "text.length is None (it varies at run time); a mask needs a concrete text length: "
                "pass a TextSegment with length set to an int >= 0"
            )
        if isinstance(text.length, bool) or not isinstance(text.length, int) or text.length < 0:
            raise ValueError(f"text.length must be an int >= 0, got {text.length!r}")
        text_len, before = text.length, text.position == "before"
    return SequenceLayout(*dims, text_len=text_len, text_before=before and text_len > 0)


def device_key(device: torch.device | str | None) -> str:
    """A hashable, canonical device name for cache keys ("cpu", "cuda:0", ...)."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


# ---------------------------------------------------------------------- parameter checks


def check_block_sizes(block_m: int, block_n: int) -> None:
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 16:
            raise ValueError(f"{name} must be a positive multiple of 16 (the kernel's smallest tile), got {value!r}")


def check_int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    """``value`` must be an int in [lo, hi] (hi None: unbounded)."""
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return value


def check_float(name: str, value, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` must be a finite real number in the interval given (open/closed ends)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_triple(name: str, value, lo: int = 1) -> tuple[int, int, int]:
    """A 3-tuple of ints >= lo (frames, height, width)."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must be a (frames, height, width) tuple of 3 ints >= {lo}, got {value!r}")
    for axis, v in zip(("frames", "height", "width"), value):
        check_int(f"{name}[{axis}]", v, lo)
    return tuple(int(v) for v in value)


# ---------------------------------------------------------------------- block shrink


def shrink_classes(q_class: Tensor, kv_class: Tensor, allowed: Tensor, block_m: int, block_n: int) -> Tensor:
    """Block mask of a token mask that only depends on token classes ("any" shrink).

    ``q_class`` int64 [Sq], ``kv_class`` int64 [Skv]: class of each token in the sequence as
    the kernel sees it (-1: no class, e.g. text, never allowed by this mask);
    ``allowed`` bool [Cq, Ckv]: token i may attend token j iff allowed[q_class[i], kv_class[j]].

    Returns bool [NQB, NKB]: a block is listed iff it contains at least one allowed pair, so the
    block mask is the smallest block-level superset of the token mask.
    """
    nqb, nkb = -(-q_class.numel() // block_m), -(-kv_class.numel() // block_n)

    def incidence(cls: Tensor, block: int, nb: int, num_classes: int) -> Tensor:
        # inc: float32 [NB, C], 1 where the block holds a token of the class
        inc = torch.zeros(nb, num_classes, dtype=torch.float32, device=cls.device)
        pos = torch.arange(cls.numel(), device=cls.device)
        valid = cls >= 0
        inc[pos[valid] // block, cls[valid]] = 1.0
        return inc

    a_q = incidence(q_class, block_m, nqb, allowed.shape[0])  # [NQB, Cq]
    a_k = incidence(kv_class, block_n, nkb, allowed.shape[1])  # [NKB, Ckv]
    # Counts of allowed class pairs per block pair; a positive count means "some pair allowed".
    return (a_q @ allowed.to(torch.float32) @ a_k.T) > 0  # [NQB, NKB]
