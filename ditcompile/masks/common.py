"""Helpers shared by the mask families: parameter checks and the "any" block shrink of a
class-structured token mask. The joint-sequence geometry (`TokenLayout`, where text and video
tokens sit) lives in `ditcompile.geometry`.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_int", "check_float", "check_bool", "check_triple", "shrink_classes"]


# ---------------------------------------------------------------------- parameter checks


def check_int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    """``value`` must be an int in [lo, hi] (hi None: unbounded)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= lo
          and (hi is None or value <= hi))  # int or a numpy integer
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` must be a bool (not an int standing in for one)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def check_float(name: str, value, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` must be a finite real number in the interval given (open/closed ends)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and value == value  # not NaN
    if ok:
        try:
            ok = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            ok = False
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
