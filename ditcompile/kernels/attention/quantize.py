"""Triton quantization kernels for the 8-bit attention path.

* :func:`quantize_int8_per_block`: symmetric int8 with one float32 scale per ``block`` rows
  of the sequence, per (batch, head), optionally subtracting a per-channel mean first
  (K smoothing).  Used for Q (block = the attention kernel's BLOCK_M) and K (BLOCK_N).
* :func:`quantize_fp8_per_channel`: FP8 e4m3 with one scale per (batch, head, channel),
  written transposed (``[B, H, D, S]``) so the P.V operand is K-major.
* :func:`smooth_k_mean`: K's mean over the sequence (a torch reduction, float32 accumulate).

Pure-torch twins with identical rounding live in ``reference.py``
(``quantize_int8_per_block_reference``, ``quantize_fp8_per_channel_reference``,
``smooth_k_mean_reference``).  Only Triton APIs present in triton 3.6 are used.

Tested under ``TRITON_INTERPRET=1`` on CPU with triton 3.9 only (bit-exact against the
references), and compiled offline for sm_80 / sm_90a; not yet run on a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ...autotune import next_power_of_2
from ...geometry import BHSD, cdiv, to_bhsd
from ..triton_support import tl, triton
from .reference import FP8_E4M3_MAX, smooth_k_mean_reference

__all__ = ["quantize_int8_per_block", "quantize_fp8_per_channel", "smooth_k_mean", "interpreting", "head_dim_pad"]

_SEQ_PAD = 128  # the transposed FP8 V is padded to this many tokens so its rows stay aligned


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------------- jit helpers


@triton.jit
def round_to_e4m3_grid(x):
    """Round float32 ``x`` (|x| <= 448) to the nearest-even float8 e4m3 value, kept in float32.

    Only used under the interpreter, whose own fp32 -> fp8 cast does not carry mantissa
    rounding into the exponent; on GPUs the hardware cast (``.to(tl.float8e4nv)``) is used.
    """
    bits = x.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1  # keep 3 of 23 mantissa bits: round to nearest even on the dropped 20
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)
    ax = tl.abs(x)
    sub = (ax + 16384.0) - 16384.0  # subnormals are multiples of 2^-9 = ulp(16384.0)
    sub = tl.where(x < 0, -sub, sub)
    return tl.where(ax < 0.015625, sub, normal)  # 2^-6: smallest normal e4m3


@triton.jit
def to_fp8_e4m3(x, EMULATE_ROUNDING: tl.constexpr):
    """float32 -> float8 e4m3 (round to nearest even)."""
    if EMULATE_ROUNDING:
        x = round_to_e4m3_grid(x)
    return x.to(tl.float8e4nv)


# ---------------------------------------------------------------------- kernels


@triton.jit
def _load_rows(X, pid_s, pid_bh, num_heads, seq_len, stride_xb, stride_xh, stride_xs, stride_xd,
               HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """Rows [pid_s * BLOCK, + BLOCK) of X[b, h] ([B, H, S, D] through strides; pid_bh = b * H + h)
    as a [BLOCK, HEAD_DIM_PAD] tile (zeros out of bounds), with its row offsets [BLOCK], column
    offsets [DP], column mask [DP] and element mask [BLOCK, DP]."""
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    offs_s = pid_s * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    offs_d = tl.arange(0, HEAD_DIM_PAD)  # [DP]
    d_ok = offs_d < HEAD_DIM
    ok = (offs_s < seq_len)[:, None] & d_ok[None, :]  # [BLOCK, DP]
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    x = tl.load(x_base + offs_s[:, None] * stride_xs + offs_d[None, :] * stride_xd, mask=ok, other=0.0)
    return x, offs_s, offs_d, d_ok, ok


@triton.jit
def _quantize_int8_kernel(
    X,  # [B, H, S, D] through strides, fp16/bf16/fp32
    MEAN,  # float32 [B, H, D] contiguous (read only if HAS_MEAN)
    OUT,  # int8 [B, H, S, D] contiguous
    SCALE,  # float32 [B, H, NB] contiguous
    seq_len,
    num_heads,
    num_blocks,
    stride_xb,
    stride_xh,
    stride_xs,
    stride_xd,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_MEAN: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    x, offs_s, offs_d, d_ok, ok = _load_rows(X, pid_s, pid_bh, num_heads, seq_len, stride_xb, stride_xh, stride_xs,
                                             stride_xd, HEAD_DIM, HEAD_DIM_PAD, BLOCK)
    x = x.to(tl.float32)  # [BLOCK, DP]
    if HAS_MEAN:
        mean = tl.load(MEAN + pid_bh.to(tl.int64) * HEAD_DIM + offs_d, mask=d_ok, other=0.0)  # [DP]
        x = tl.where(ok, x - mean[None, :], 0.0)

    amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)  # scalar
    scale = tl.where(amax > 0, amax / 127.0, 1.0)  # 127 = reference.INT8_MAX
    scaled = x / scale
    x_int8 = tl.where(scaled >= 0, scaled + 0.5, scaled - 0.5).to(tl.int8)  # half away from zero

    out_base = OUT + pid_bh.to(tl.int64) * seq_len * HEAD_DIM
    tl.store(out_base + offs_s[:, None] * HEAD_DIM + offs_d[None, :], x_int8, mask=ok)
    tl.store(SCALE + pid_bh.to(tl.int64) * num_blocks + pid_s, scale)


@triton.jit
def _quantize_fp8_kernel(
    X,  # [B, H, S, D] through strides
    SCALE,  # float32 [B, H, D] contiguous: per-channel scales
    OUT,  # float8e4nv [B, H, D, S_PAD] contiguous (transposed)
    seq_len,
    seq_pad,
    num_heads,
    stride_xb,
    stride_xh,
    stride_xs,
    stride_xd,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    EMULATE_ROUNDING: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    x, offs_s, offs_d, d_ok, ok = _load_rows(X, pid_s, pid_bh, num_heads, seq_len, stride_xb, stride_xh, stride_xs,
                                             stride_xd, HEAD_DIM, HEAD_DIM_PAD, BLOCK)
    scale = tl.load(SCALE + pid_bh.to(tl.int64) * HEAD_DIM + offs_d, mask=d_ok, other=1.0)  # [DP]
    x_fp8 = to_fp8_e4m3(x.to(tl.float32) / scale[None, :], EMULATE_ROUNDING)

    out_base = OUT + pid_bh.to(tl.int64) * HEAD_DIM * seq_pad
    tl.store(out_base + offs_d[None, :] * seq_pad + offs_s[:, None], x_fp8, mask=ok)


# ---------------------------------------------------------------------- launchers


def head_dim_pad(dim: int) -> int:
    """The head dim a kernel tile holds: the next power of two, at least 16 (masked past `dim`)."""
    return max(16, next_power_of_2(dim))


def smooth_k_mean(k: Tensor, layout: str = BHSD) -> Tensor:
    """K's per-channel mean over the sequence: float32 ``[B, H, D]`` contiguous."""
    return smooth_k_mean_reference(k, layout).contiguous()


def quantize_int8_per_block(
    x: Tensor, block: int, *, layout: str = BHSD, mean: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-block symmetric int8 quantization (Triton); twin of ``quantize_int8_per_block_reference``.

    x: ``[B, H, S, D]`` or ``[B, S, H, D]`` (``layout``), read through strides.
    mean: optional float32 ``[B, H, D]`` subtracted before quantizing (K smoothing).
    Returns (int8 ``[B, H, S, D]`` contiguous, float32 scales ``[B, H, ceil(S / block)]``).
    """
    xb = to_bhsd(x, layout)  # view, no copy
    batch, heads, seq, dim = xb.shape
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    num_blocks = cdiv(seq, block)
    out = torch.empty(batch, heads, seq, dim, dtype=torch.int8, device=x.device)
    scale = torch.empty(batch, heads, num_blocks, dtype=torch.float32, device=x.device)
    if out.numel() == 0:
        return out, scale.fill_(1.0)
    if mean is not None:
        if mean.shape != (batch, heads, dim):
            raise ValueError(f"mean must have shape {(batch, heads, dim)}, got {tuple(mean.shape)}")
        mean = mean.to(torch.float32).contiguous()
    grid = (num_blocks, batch * heads)
    _quantize_int8_kernel[grid](
        xb, mean if mean is not None else scale, out, scale,
        seq, heads, num_blocks,
        *xb.stride(),
        HEAD_DIM=dim, HEAD_DIM_PAD=head_dim_pad(dim), BLOCK=block, HAS_MEAN=mean is not None,
        num_warps=4,
    )  # fmt: skip
    return out, scale


def quantize_fp8_per_channel(v: Tensor, *, layout: str = BHSD) -> tuple[Tensor, Tensor]:
    """Per-channel FP8 e4m3 quantization (Triton); twin of ``quantize_fp8_per_channel_reference``.

    Returns (float8_e4m3fn ``[B, H, D, S]`` -- a view of a sequence-padded contiguous buffer,
    so its rows stay 16-byte aligned --, float32 scales ``[B, H, D]``).
    """
    vb = to_bhsd(v, layout)  # [B, H, S, D] view
    batch, heads, seq, dim = vb.shape
    seq_pad = cdiv(max(seq, 1), _SEQ_PAD) * _SEQ_PAD
    out = torch.empty(batch, heads, dim, seq_pad, dtype=torch.float8_e4m3fn, device=v.device)
    if vb.numel() == 0:
        return out[..., :seq], torch.ones(batch, heads, dim, dtype=torch.float32, device=v.device)
    # amax over the sequence without materialising |v|.
    amax = torch.maximum(vb.amax(dim=2), -vb.amin(dim=2)).to(torch.float32)  # [B, H, D]
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax)).contiguous()
    block = 64
    grid = (cdiv(seq, block), batch * heads)
    _quantize_fp8_kernel[grid](
        vb, scale, out,
        seq, seq_pad, heads,
        *vb.stride(),
        HEAD_DIM=dim, HEAD_DIM_PAD=head_dim_pad(dim), BLOCK=block, EMULATE_ROUNDING=interpreting(),
        num_warps=4,
    )  # fmt: skip
    return out[..., :seq], scale

