"""Block-sparse flash-attention forward in Triton, with an optional 8-bit (int8 QK, FP8 PV) path.

Entry point: :func:`sparse_flash_attention`.  One kernel (:func:`_sparse_attn_fwd_kernel`)
covers dense and block-sparse attention, any sequence lengths (ragged last tiles), q_len !=
kv_len, head dims up to 128 (padded to a power of two >= 16 and masked), fp16 / bf16 / fp32
inputs, fp32 accumulation and an online (exp2) softmax.  Rows with no allowed key output 0.

Sparsity follows :class:`~ditcompile.kernels.block_mask.BlockSparseMask`: each program (one
BLOCK_M query tile of one (batch, head)) walks the mask's *full* kv blocks without any
per-element masking, then its *partial* ones (ragged last block, text rows/columns that do
not align with blocks) with token-exact masking.  Kernel tiles may be smaller than the mask
blocks (BLOCK_M must divide block_m and BLOCK_N must divide block_n).

8-bit path (``quant="int8"``), following SageAttention's recipe:

* Q: int8, one scale per BLOCK_M rows; K: mean over the sequence subtracted per
  (b, h, channel) (softmax is invariant to it), then int8 with one scale per BLOCK_N rows.
  Quantization kernels are in ``quantize.py``.
* S = (Q_i8 @ K_i8^T) as an int32 ``tl.dot``, dequantized by the two block scales.
* P.V: on sm89+ in FP8 e4m3 (P * 448 cast per tile, V per-channel FP8 with its scale
  applied once at the end; each tile's product is added to the fp32 accumulator separately,
  so Hopper's reduced-precision FP8 accumulation spans only one tile); elsewhere in V's
  16-bit dtype.  Softmax statistics stay in fp32.

Tested versions and GPUs: numerically tested only under ``TRITON_INTERPRET=1`` on CPU with
triton 3.9.0 / torch 2.13 (CPU build), which emulates two interpreter gaps (bf16 ``tl.dot``,
fp32 -> fp8 rounding) behind the ``INTERPRETER`` constexpr.  Additionally compiled ahead of
time (no GPU) for sm_80, sm_89 and sm_90a with triton 3.9 and its ptxas (see
``tests/kernels/test_compile_gpu.py``; no spills for the preferred configs).  The code uses
only Triton APIs that exist in triton 3.6 (the production H100 / H200 stack with torch
2.11), but it has **not yet been run on a GPU nor with triton 3.6**: performance and the
autotuning config space are untuned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ...autotune import TuneCache, TuneKey, TuneSettings, bucket, default_cache, tuned
from ...geometry import BHSD, cdiv, heads_dim, seq_dim, tensor_layout_dims, to_bhsd
from ..block_mask import MIN_BLOCK, BlockSparseMask
from ..triton_support import HAVE_TRITON, tl, triton
from .quantize import (
    head_dim_pad,
    interpreting,
    quantize_fp8_per_channel,
    quantize_int8_per_block,
    smooth_k_mean,
    to_fp8_e4m3,
)
from .reference import check_key_bias, int8_attention_reference, sparse_attention_reference, zero_masked_keys

__all__ = ["KernelConfig", "CONFIG_SPACE", "prune_configs", "sparse_flash_attention", "SUPPORTED_DTYPES",
           "MAX_HEAD_DIM", "unsupported_reason"]

LOG2E = 1.4426950408889634
# The kernel's limits, the one definition every caller reads (ops, passes, benchmarks).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
QUANT_MODES = ("none", "int8")


def unsupported_reason(q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Optional[str]:
    """Why this kernel cannot compute attention of these inputs (None when it can).

    q/k/v in either tensor layout (only dtype and the last dim are read). Reasons: causal
    attention, a dtype outside SUPPORTED_DTYPES, head dim > MAX_HEAD_DIM, a value head dim that
    differs from q's, or CUDA inputs on a machine without Triton.
    """
    if is_causal:
        return "causal attention"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return f"value head dim {v.shape[-1]} != {q.shape[-1]}"
    if q.is_cuda and not HAVE_TRITON:
        return "triton is not installed"
    return None


# ====================================================================== kernel


@triton.jit
def _load_tile(ptrs, row_ok, col_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """Load a 2-D tile, masking only the dimensions that can run out of bounds (zeros there)."""
    if MASK_ROWS:
        if MASK_COLS:
            x = tl.load(ptrs, mask=row_ok & col_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok, other=0.0)
    else:
        if MASK_COLS:
            x = tl.load(ptrs, mask=col_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, INTERPRETER: tl.constexpr):
    """``acc + a @ b`` in fp32 (``acc`` may be None).

    Triton's CPU interpreter multiplies bfloat16 tiles as raw 16-bit integers, so there the
    operands are upcast to fp32 first (exact for bf16 values, same products as on a GPU).
    """
    if INTERPRETER:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _attend_kv_tiles(
    acc,  # float32 [BLOCK_M, HEAD_DIM_PAD]  running un-normalised output
    l_i,  # float32 [BLOCK_M]                running softmax denominator
    m_i,  # float32 [BLOCK_M]                running row max (log2 domain), -inf if none yet
    q,  # [BLOCK_M, HEAD_DIM_PAD]            query tile (int8 when QUANT_INT8)
    offs_m,  # int32 [BLOCK_M]               query token indices of the tile
    k_base,  # pointer to K[b, h, 0, 0]
    v_base,  # pointer to V[b, h, 0, 0]
    k_scale_base,  # pointer to K_SCALE[b, h, 0] (QUANT_INT8 only)
    key_bias_base,  # pointer to KEY_BIAS[b, 0] (HAS_KEY_BIAS only), log2 units
    idx_ptr,  # pointer to this query block's kv-block list (SPARSE only)
    flag_ptr,  # pointer to the matching flags (SPARSE and APPLY_MASK only)
    n_tiles,  # number of BLOCK_N tiles to visit
    first_tile,  # dense only: index of the first BLOCK_N tile
    stride_ks,
    stride_kd,
    stride_vs,
    stride_vd,
    kv_len,
    qk_scale,  # softmax scale * log2(e) (* q block scale when QUANT_INT8)
    dense_q_start,
    dense_q_end,
    dense_kv_start,
    dense_kv_end,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK_BLOCK_N: tl.constexpr,
    SPARSE: tl.constexpr,
    APPLY_MASK: tl.constexpr,  # per-element masking (kv bounds, dense text ranges)
    HAS_KEY_BIAS: tl.constexpr,  # add a per-key bias (key padding: -inf removes a key)
    QUANT_INT8: tl.constexpr,
    PV_FP8: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETER: tl.constexpr,  # running in TRITON_INTERPRET=1: work around its fp8 / bf16 gaps
):
    """Online-softmax update of (acc, l_i, m_i) over ``n_tiles`` kv tiles."""
    PAD_D: tl.constexpr = HEAD_DIM != HEAD_DIM_PAD
    EMPTY_ROWS: tl.constexpr = APPLY_MASK or HAS_KEY_BIAS  # a row may see no allowed key in a tile
    offs_tile = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, HEAD_DIM_PAD)  # [DP]
    d_ok = offs_d < HEAD_DIM
    q_dense = (offs_m >= dense_q_start) & (offs_m < dense_q_end)  # [BM] text query rows
    for t in range(n_tiles):
        if SPARSE:  # a mask block of MASK_BLOCK_N keys spans MASK_BLOCK_N // BLOCK_N tiles
            kv_block = tl.load(idx_ptr + t // (MASK_BLOCK_N // BLOCK_N))
            start_n = kv_block * MASK_BLOCK_N + (t % (MASK_BLOCK_N // BLOCK_N)) * BLOCK_N
        else:
            start_n = (first_tile + t) * BLOCK_N
        offs_n = start_n + offs_tile  # [BN] key token indices
        kv_ok = offs_n < kv_len

        # ---- S = Q K^T, in log2 units: [BM, BN]
        k_ptrs = k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_ks  # K^T tile [DP, BN]
        kt = _load_tile(k_ptrs, d_ok[:, None], kv_ok[None, :], PAD_D, APPLY_MASK)
        if QUANT_INT8:
            k_scale = tl.load(k_scale_base + start_n // BLOCK_N)
            qk = tl.dot(q, kt, out_dtype=tl.int32).to(tl.float32) * (qk_scale * k_scale)
        else:
            qk = _dot(q, kt, None, DOT_PRECISION, INTERPRETER) * qk_scale
        if APPLY_MASK:
            if SPARSE:  # flag 1: listed block (only kv bounds); 0: allowed only via text ranges
                listed = tl.load(flag_ptr + t // (MASK_BLOCK_N // BLOCK_N)) != 0
                k_dense = (offs_n >= dense_kv_start) & (offs_n < dense_kv_end)  # [BN]
                allowed = (listed | q_dense[:, None] | k_dense[None, :]) & kv_ok[None, :]
            else:
                allowed = kv_ok[None, :]
            qk = tl.where(allowed, qk, float("-inf"))
        if HAS_KEY_BIAS:  # [BN] bias of these keys (log2 units); out-of-bounds keys -inf
            if APPLY_MASK:
                key_bias = tl.load(key_bias_base + offs_n, mask=kv_ok, other=float("-inf"))
            else:
                key_bias = tl.load(key_bias_base + offs_n)
            qk = qk + key_bias[None, :]

        # ---- online softmax
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))  # [BM]
        if EMPTY_ROWS:  # a row may still have seen no allowed key: keep exp2 finite
            m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new_safe = m_new
        alpha = tl.exp2(m_i - m_new_safe)  # [BM] rescale of the old state
        p = tl.exp2(qk - m_new_safe[:, None])  # [BM, BN], in [0, 1]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]

        # ---- acc += P V: V tile [BN, DP]
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
        v = _load_tile(v_ptrs, kv_ok[:, None], d_ok[None, :], APPLY_MASK, PAD_D)
        if PV_FP8:  # separate add = fp32 accumulation across tiles (two-level accumulation)
            acc += tl.dot(to_fp8_e4m3(p * 448.0, INTERPRETER), v)  # 448 = P_FP8_SCALE
        else:
            acc = _dot(p.to(v.dtype), v, acc, DOT_PRECISION, INTERPRETER)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _sparse_attn_fwd_kernel(
    Q,  # [B, H, Sq, D] through strides (int8 [B, H, Sq, D] contiguous when QUANT_INT8)
    K,  # [B, H, Skv, D] through strides (int8, smoothed, when QUANT_INT8)
    V,  # [B, H, Skv, D] through strides (float8e4nv when PV_FP8)
    OUT,  # [B, H, Sq, D] through strides, q's dtype
    Q_SCALE,  # float32 [B, H, ceil(Sq / BLOCK_M)]   (QUANT_INT8)
    K_SCALE,  # float32 [B, H, ceil(Skv / BLOCK_N)]  (QUANT_INT8)
    V_SCALE,  # float32 [B, H, D]                    (PV_FP8)
    FULL_NUM,  # int32 [B|1, H|1, NQB]               (SPARSE) full-tile counts
    FULL_IDX,  # int32 [B|1, H|1, NQB, full_width]   (SPARSE) full kv blocks
    PART_NUM,  # int32 [B|1, H|1, NQB]               (SPARSE) partial-tile counts
    PART_IDX,  # int32 [B|1, H|1, NQB, part_width]   (SPARSE) partial kv blocks
    PART_FLAG,  # int32 [B|1, H|1, NQB, part_width]  (SPARSE) 1 = listed block
    KEY_BIAS,  # float32 [B|1, Skv]                 (HAS_KEY_BIAS) per-key bias, log2 units
    stride_kbias_b,  # KEY_BIAS batch stride (0: broadcast)
    stride_qb,
    stride_qh,
    stride_qs,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_os,
    stride_od,
    mask_stride_b,  # schedule rows per batch (0: broadcast)
    mask_stride_h,  # schedule rows per head (0: broadcast)
    full_width,
    part_width,
    num_heads,
    q_len,
    kv_len,
    qk_scale,  # softmax scale * log2(e)
    dense_q_start,
    dense_q_end,
    dense_kv_start,
    dense_kv_end,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK_BLOCK_M: tl.constexpr,
    MASK_BLOCK_N: tl.constexpr,
    SPARSE: tl.constexpr,
    HAS_KEY_BIAS: tl.constexpr,
    QUANT_INT8: tl.constexpr,
    PV_FP8: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    """Grid: (ceil(Sq / BLOCK_M), B * H).  One program = one query tile of one (b, h)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    PAD_D: tl.constexpr = HEAD_DIM != HEAD_DIM_PAD
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, HEAD_DIM_PAD)  # [DP]
    m_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = _load_tile(q_ptrs, m_ok[:, None], d_ok[None, :], True, PAD_D)  # [BM, DP]
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    key_bias_base = KEY_BIAS + b * stride_kbias_b
    if QUANT_INT8:
        q_scale = tl.load(Q_SCALE + pid_bh.to(tl.int64) * tl.cdiv(q_len, BLOCK_M) + pid_m)
        tile_scale = qk_scale * q_scale
        k_scale_base = K_SCALE + pid_bh.to(tl.int64) * tl.cdiv(kv_len, BLOCK_N)
    else:
        tile_scale = qk_scale
        k_scale_base = K_SCALE

    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    if SPARSE:
        row = b * mask_stride_b + h * mask_stride_h + (pid_m * BLOCK_M) // MASK_BLOCK_M  # schedule row
        n_full = tl.load(FULL_NUM + row) * (MASK_BLOCK_N // BLOCK_N)
        n_part = tl.load(PART_NUM + row) * (MASK_BLOCK_N // BLOCK_N)
        full_idx = FULL_IDX + row * full_width
        part_idx = PART_IDX + row * part_width
        part_flag = PART_FLAG + row * part_width
        first_masked = 0
    else:  # dense: all whole tiles unmasked, then the ragged tail tile (if any) masked
        n_full = kv_len // BLOCK_N
        n_part = tl.cdiv(kv_len, BLOCK_N) - n_full
        full_idx = FULL_IDX
        part_idx = PART_IDX
        part_flag = PART_FLAG
        first_masked = n_full

    acc, l_i, m_i = _attend_kv_tiles(
        acc, l_i, m_i, q, offs_m, k_base, v_base, k_scale_base, key_bias_base, full_idx, part_flag, n_full, 0,
        stride_ks, stride_kd, stride_vs, stride_vd, kv_len, tile_scale,
        dense_q_start, dense_q_end, dense_kv_start, dense_kv_end,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, MASK_BLOCK_N,
        SPARSE, False, HAS_KEY_BIAS, QUANT_INT8, PV_FP8, DOT_PRECISION, INTERPRETER,
    )  # fmt: skip
    acc, l_i, m_i = _attend_kv_tiles(
        acc, l_i, m_i, q, offs_m, k_base, v_base, k_scale_base, key_bias_base, part_idx, part_flag, n_part, first_masked,
        stride_ks, stride_kd, stride_vs, stride_vd, kv_len, tile_scale,
        dense_q_start, dense_q_end, dense_kv_start, dense_kv_end,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, MASK_BLOCK_N,
        SPARSE, True, HAS_KEY_BIAS, QUANT_INT8, PV_FP8, DOT_PRECISION, INTERPRETER,
    )  # fmt: skip

    if PV_FP8:  # undo V's per-channel scale and P's 448
        v_scale = tl.load(V_SCALE + pid_bh.to(tl.int64) * HEAD_DIM + offs_d, mask=d_ok, other=0.0)  # [DP]
        acc = acc * (v_scale / 448.0)[None, :]
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows with no allowed key: acc == 0 -> output 0
    out = acc / l_safe[:, None]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    if PAD_D:
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    else:
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None])


# ====================================================================== configs


@dataclass(frozen=True)
class KernelConfig:
    """One point of the launch space: tile sizes, warps and software-pipelining stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Order matters: the first config that survives pruning is the untuned default, and the
# autotuner times only the first `TuneSettings.max_candidates` survivors.  A hand-ordered head
# of likely-good GPU configs comes first, then the rest of the product space (small tiles
# for short sequences and small mask blocks).  The head was checked for register spills by
# compiling for sm_90a offline (triton 3.9 + ptxas, no GPU); it is not yet timed on a GPU.
_PREFERRED = (
    (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 8, 4), (128, 32, 8, 3), (64, 32, 4, 4),
    (128, 128, 8, 3), (64, 64, 4, 2), (64, 128, 8, 3), (128, 64, 8, 2), (128, 32, 4, 3), (64, 128, 4, 2),
)  # fmt: skip
_PRODUCT = tuple((bm, bn, w, s) for bm in (128, 64, 32, 16) for bn in (64, 128, 32, 16) for w in (8, 4) for s in (3, 2, 4))
CONFIG_SPACE: tuple[KernelConfig, ...] = tuple(
    KernelConfig(*c) for c in dict.fromkeys(_PREFERRED + _PRODUCT)  # dict: ordered de-duplication
)


def _divides(tile: int, block: int | None) -> bool:
    return block is None or block % tile == 0


def prune_configs(
    configs: tuple[KernelConfig, ...] | list[KernelConfig],
    *,
    head_dim: int,
    elem_bytes: int,
    q_len: int,
    kv_len: int,
    mask_block_m: int | None = None,
    mask_block_n: int | None = None,
    smem_bytes: int = 227 * 1024,
    pv_fp8: bool = False,
) -> list[KernelConfig]:
    """Drop configs that cannot run or are unlikely to be fast, keeping the input order.

    * tiles must divide the mask's blocks (a tile never straddles two mask blocks);
    * tiles no larger than needed for short sequences;
    * shared memory: Q tile + ``num_stages`` K/V tile pairs within ``smem_bytes``;
    * registers: fp32 accumulator(s) + score tile per thread within a budget (the FP8 P.V
      path holds a second accumulator tile for its per-tile product).
    """
    dp = head_dim_pad(head_dim)
    bm_cap = max(16, bucket(q_len))
    bn_cap = max(16, bucket(kv_len))
    kept = []
    for cfg in configs:
        if not (_divides(cfg.block_m, mask_block_m) and _divides(cfg.block_n, mask_block_n)):
            continue
        if cfg.block_m > bm_cap or cfg.block_n > bn_cap:
            continue
        smem = (cfg.block_m * dp + cfg.num_stages * 2 * cfg.block_n * dp) * elem_bytes
        acc_tiles = 2 if pv_fp8 else 1
        regs_per_thread = (acc_tiles * cfg.block_m * dp + cfg.block_m * cfg.block_n) // (32 * cfg.num_warps)
        if smem > smem_bytes or regs_per_thread > 160:
            continue
        kept.append(cfg)
    return kept


def _tuning_candidates(valid: list[KernelConfig]) -> list[KernelConfig]:
    """The GPU-sensible part of the valid configs (tiles >= 64 x 32 when any exist); the first
    entry is the default. The tuner times the first `TuneSettings.max_candidates` of them."""
    big = [c for c in valid if c.block_m >= 64 and c.block_n >= 32]
    return big or valid


# ====================================================================== launcher


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, layout: str, quant: str) -> tuple[int, int, int, int, int]:
    """Validate q/k/v; returns (B, H, Sq, Skv, D)."""
    dims = tensor_layout_dims(layout)
    if quant not in QUANT_MODES:
        raise ValueError(f"quant must be one of {QUANT_MODES}, got {quant!r}")
    names = ("q", "k", "v")
    for name, t in zip(names, (q, k, v), strict=True):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {dims} for layout={layout!r}, got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            supported = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
            raise ValueError(f"{name} has dtype {t.dtype}; supported: {supported}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    sd, hd = seq_dim(layout), heads_dim(layout)
    batch, heads, q_len, dim = q.shape[0], q.shape[hd], q.shape[sd], q.shape[3]
    kv_len = k.shape[sd]
    for name, t in (("k", k), ("v", v)):
        if t.shape[0] != batch:
            raise ValueError(f"{name} has batch {t.shape[0]} but q has {batch}")
        if t.shape[hd] != heads:
            raise ValueError(
                f"{name} has {t.shape[hd]} heads but q has {heads} (dim {hd} for layout={layout!r}); "
                "grouped-query attention is not supported: repeat k/v heads first"
            )
        if t.shape[3] != dim:
            raise ValueError(f"{name} has head dim {t.shape[3]} but q has {dim}; q, k, v must share the head dim")
    if v.shape[sd] != kv_len:
        raise ValueError(f"v has sequence length {v.shape[sd]} but k has {kv_len}")
    if not 1 <= dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {MAX_HEAD_DIM}] (64 and 128 are the main targets), got {dim}")
    return batch, heads, q_len, kv_len, dim


def _check_mask(mask: BlockSparseMask | None, batch: int, heads: int, q_len: int, kv_len: int, device) -> None:
    if mask is None:
        return
    if not isinstance(mask, BlockSparseMask):
        raise ValueError(f"mask must be a BlockSparseMask or None, got {type(mask).__name__}")
    if (mask.q_len, mask.kv_len) != (q_len, kv_len):
        raise ValueError(
            f"mask was built for q_len={mask.q_len}, kv_len={mask.kv_len} but the inputs have "
            f"q_len={q_len}, kv_len={kv_len}"
        )
    mb, mh = mask.kv_num_blocks.shape[:2]
    if mb not in (1, batch) or mh not in (1, heads):
        raise ValueError(f"mask has batch/heads ({mb}, {mh}); expected (1 or {batch}, 1 or {heads})")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but q is on {device}; use mask.to({str(device)!r})")


def _check_out(out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device) -> None:
    if out is None:
        return
    if not isinstance(out, Tensor) or tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        got = (tuple(out.shape), out.dtype, out.device) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"out must be a tensor of shape {shape}, dtype {dtype} on {device}; got {got}")


def _quantize_inputs(q: Tensor, k: Tensor, v: Tensor, layout: str, cfg: KernelConfig, pv_fp8: bool):
    """int8 Q (per BLOCK_M rows), smoothed int8 K (per BLOCK_N rows), V as FP8 or as is."""
    q_i8, q_scale = quantize_int8_per_block(q, cfg.block_m, layout=layout)  # [B,H,Sq,D], [B,H,NQT]
    k_i8, k_scale = quantize_int8_per_block(k, cfg.block_n, layout=layout, mean=smooth_k_mean(k, layout))
    if pv_fp8:
        v_t, v_scale = quantize_fp8_per_channel(v, layout=layout)  # [B,H,D,Skv] view, [B,H,D]
        v_q = v_t.transpose(2, 3)  # [B, H, Skv, D] view with the sequence contiguous
    else:
        v_q, v_scale = to_bhsd(v, layout), q_scale
    return q_i8, k_i8, v_q, q_scale, k_scale, v_scale


def sparse_flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: BlockSparseMask | None = None,
    *,
    scale: float | None = None,
    layout: str = BHSD,
    quant: str = "none",
    pv_fp8: bool | None = None,
    out: Tensor | None = None,
    config: KernelConfig | None = None,
    tuning: TuneSettings | None = None,
    tune_cache: TuneCache | None = None,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Block-sparse (or dense) flash attention forward.

    Args:
        q: ``[B, H, Sq, D]`` (layout "bhsd") or ``[B, Sq, H, D]`` (layout "bshd"), fp16 / bf16 /
           fp32, read through its strides (no copy).
        k, v: ``[B, H, Skv, D]`` / ``[B, Skv, H, D]``, same dtype, batch, heads and head dim as q.
        mask: a :class:`BlockSparseMask` for (Sq, Skv) on q's device, or None for dense.
        scale: softmax scale, default ``1 / sqrt(D)``.
        layout: "bhsd" or "bshd"; the output has the same layout.
        quant: "none" or "int8" (int8 QK^T with K smoothing, see the module docstring).
        pv_fp8: int8 path only: P.V in FP8 e4m3; default on for sm89+ GPUs, off elsewhere.
        out: optional preallocated output (q's shape, dtype and device), written through its
             strides and returned.
        config: force a :class:`KernelConfig` instead of autotuning.  Its tiles must divide
             the mask's blocks.
        tuning: how to tune on a cache miss (default ``TuneSettings()``: time the first 12
             pruned configs once per key; ``TuneSettings(enabled=False)``: the default config).
        tune_cache: where tuning results live (default: ``autotune.default_cache()``).
        key_bias: float32 ``[B|1, Skv]`` added to every query's scores (natural-log units;
             ``-inf`` removes a key): key padding, composed with ``mask`` and ``quant``. Build it
             from SDPA's ``attn_mask`` with ``reference.key_bias_from_mask``.

    Returns:
        The attention output, q's shape, dtype and layout.  Rows that attend no key are 0.

    On CPU tensors without ``TRITON_INTERPRET=1`` this falls back to the pure-torch
    reference (same function, same quantization emulation for ``quant="int8"``).
    On GPUs the pruned :data:`CONFIG_SPACE` is timed once per
    :class:`~ditcompile.autotune.TuneKey` (device, dtype, layout, variant, head dim, length
    buckets, mask blocks) and the winner is kept in ``tune_cache``.

    Raises ValueError naming the argument for bad shapes, dtypes, layouts, masks or configs.
    """
    batch, heads, q_len, kv_len, dim = _check_inputs(q, k, v, layout, quant)
    _check_mask(mask, batch, heads, q_len, kv_len, q.device)
    check_key_bias(key_bias, batch, kv_len, q.device)
    out_shape = tuple(q.shape[:3]) + (dim,)
    _check_out(out, out_shape, q.dtype, q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    if pv_fp8 is None:
        pv_fp8 = default_pv_fp8(q, quant)
    if quant != "int8":
        pv_fp8 = False
    if pv_fp8 and q.is_cuda and torch.cuda.get_device_capability(q.device) < (8, 9):
        raise ValueError("pv_fp8=True needs an sm89+ GPU (FP8 tensor cores); use pv_fp8=False or None")
    interpret = interpreting()
    if out is None:
        out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
    if q_len == 0:
        return out
    if kv_len == 0:  # every row attends nothing
        return out.zero_()

    if not q.is_cuda and not interpret:  # CPU fallback: the reference computes the same function
        if quant == "int8":
            ref = _reference_int8(q, k, v, mask, scale, layout, config, pv_fp8, q_len, kv_len, dim, key_bias)
        else:
            ref = sparse_attention_reference(q, k, v, mask, scale=scale, layout=layout, key_bias=key_bias)
        return out.copy_(ref)

    if quant == "int8":  # removed keys must not reach the quantization statistics (as in the reference)
        k, v = zero_masked_keys(k, v, key_bias, layout)
    candidates = _candidate_configs(config, q, mask, q_len, kv_len, dim, quant, pv_fp8, interpret)

    def launch(cfg: KernelConfig, into: Tensor) -> None:
        # For quant="int8" the quantization runs inside: its block scales follow cfg's tiles.
        _launch(q, k, v, into, mask, cfg, scale, layout, quant, pv_fp8, interpret, key_bias)

    settings = tuning if tuning is not None else TuneSettings()
    if interpret:
        settings = TuneSettings(enabled=False)  # the interpreter's times mean nothing
    choice = tuned(tune_cache if tune_cache is not None else default_cache(),
                   lambda: _tune_key(q, mask, layout, quant, pv_fp8, q_len, kv_len, dim, key_bias is not None), candidates, launch,
                   lambda: torch.empty_like(out), settings)
    launch(choice, out)
    return out


def _reference_int8(q, k, v, mask, scale, layout, config, pv_fp8, q_len, kv_len, dim, key_bias) -> Tensor:
    cfg = _candidate_configs(config, q, mask, q_len, kv_len, dim, "int8", pv_fp8, False)[0]
    return int8_attention_reference(
        q, k, v, mask, scale=scale, layout=layout, block_m=cfg.block_m, block_n=cfg.block_n, pv_fp8=pv_fp8,
        key_bias=key_bias,
    )


def config_name(cfg: KernelConfig) -> str:
    """A config's stable name in the tuning cache: "m128n64w8s3" (tiles, warps, stages)."""
    return f"m{cfg.block_m}n{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}"


GPU_CANDIDATES: tuple[KernelConfig, ...] = tuple(KernelConfig(*c) for c in _PREFERRED)
"""The configs the op-level autotuner offers as candidates (the hand-ordered head of the space;
each is checked against the call with `fitting_configs`)."""


def default_pv_fp8(q: Tensor, quant: str) -> bool:
    """Whether the int8 path runs P.V in FP8 by default for q's device (sm89+ GPUs)."""
    return quant == "int8" and q.is_cuda and torch.cuda.get_device_capability(q.device) >= (8, 9)


def fitting_configs(q: Tensor, k: Tensor, mask: BlockSparseMask | None, layout: str, quant: str = "none") -> list[KernelConfig]:
    """The configs of CONFIG_SPACE that can run these inputs (tiles dividing the mask blocks,
    shared memory and registers of q's device), the default first; [] when none fits."""
    sd = seq_dim(layout)
    try:
        return _candidate_configs(None, q, mask, q.shape[sd], k.shape[sd], q.shape[-1], quant,
                                  default_pv_fp8(q, quant), False)
    except ValueError:
        return []


def _candidate_configs(config, q, mask, q_len, kv_len, dim, quant, pv_fp8, interpret) -> list[KernelConfig]:
    """[config] if one is forced, else the configs to try, the default first."""
    mbm = None if mask is None else mask.block_m
    mbn = None if mask is None else mask.block_n
    if config is not None:
        if not isinstance(config, KernelConfig):
            raise ValueError(f"config must be a KernelConfig, got {type(config).__name__}")
        if not (_divides(config.block_m, mbm) and _divides(config.block_n, mbn)):
            raise ValueError(
                f"config tiles ({config.block_m}, {config.block_n}) must divide the mask blocks ({mbm}, {mbn})"
            )
        for name in ("block_m", "block_n"):
            tile = getattr(config, name)
            if tile < MIN_BLOCK or tile & (tile - 1):
                raise ValueError(f"config.{name} must be a power of two >= {MIN_BLOCK}, got {tile}")
        return [config]
    elem = 1 if (quant == "int8" and pv_fp8) else q.element_size()  # int8 Q/K with 16-bit V: be safe
    smem = 227 * 1024
    if q.is_cuda:
        props = torch.cuda.get_device_properties(q.device)
        smem = getattr(props, "shared_memory_per_block_optin", smem)
    valid = prune_configs(
        CONFIG_SPACE, head_dim=dim, elem_bytes=elem, q_len=q_len, kv_len=kv_len,
        mask_block_m=mbm, mask_block_n=mbn, smem_bytes=smem, pv_fp8=pv_fp8,
    )  # fmt: skip
    if not valid:
        raise ValueError(f"no kernel config fits head_dim={dim} and mask blocks ({mbm}, {mbn})")
    if interpret:  # the interpreter runs fastest with the biggest tiles (fewer numpy calls)
        return [max(valid, key=lambda c: (c.block_m * c.block_n, c.block_m))]
    return _tuning_candidates(valid)


def _tune_key(q, mask, layout, quant, pv_fp8, q_len, kv_len, dim, has_key_bias) -> TuneKey:
    mask_blocks = None if mask is None else (mask.block_m, mask.block_n)
    extra = {"key_bias": True} if has_key_bias else {}  # keys of unmasked calls stay as before
    return TuneKey.make("flash_attention_fwd", q.device, dtype=q.dtype, layout=layout, quant=quant, pv_fp8=pv_fp8,
                        head_dim=dim, q_len=bucket(q_len), kv_len=bucket(kv_len), mask_blocks=mask_blocks, **extra)


def _launch(q, k, v, out, mask, cfg: KernelConfig, scale, layout, quant, pv_fp8, interpret, key_bias) -> None:
    """Quantize if needed, then launch the kernel with one config."""
    batch, heads, q_len, dim = to_bhsd(q, layout).shape
    kv_len = to_bhsd(k, layout).shape[2]
    if quant == "int8":
        qk_q, qk_k, v_op, q_scale, k_scale, v_scale = _quantize_inputs(q, k, v, layout, cfg, pv_fp8)
    else:
        qk_q, qk_k, v_op = (to_bhsd(t, layout) for t in (q, k, v))
        q_scale = k_scale = v_scale = out  # unused placeholders
    ob = to_bhsd(out, layout)  # [B, H, Sq, D] view

    if mask is None:
        sched = (out,) * 5  # unused placeholders
        mask_strides, widths, mbm, mbn = (0, 0), (0, 0), cfg.block_m, cfg.block_n
        dq, dk = (0, 0), (0, 0)
    else:
        sched = (mask.full_kv_num_blocks, mask.full_kv_indices, mask.partial_kv_num_blocks,
                 mask.partial_kv_indices, mask.partial_kv_flags)  # fmt: skip
        mb, mh, nqb = mask.full_kv_num_blocks.shape
        mask_strides = (mh * nqb if mb > 1 else 0, nqb if mh > 1 else 0)
        widths = (mask.full_kv_indices.shape[-1], mask.partial_kv_indices.shape[-1])
        mbm, mbn = mask.block_m, mask.block_n
        dq = mask.dense_q_range or (0, 0)
        dk = mask.dense_kv_range or (0, 0)

    if key_bias is None:
        bias_log2, bias_stride = out, 0  # unused placeholder
    else:  # the kernel's scores are in log2 units; -inf stays -inf
        bias_log2 = (key_bias * LOG2E).contiguous()  # [B|1, Skv]
        bias_stride = kv_len if bias_log2.shape[0] > 1 else 0
    grid = (cdiv(q_len, cfg.block_m), batch * heads)
    _sparse_attn_fwd_kernel[grid](
        qk_q, qk_k, v_op, ob, q_scale, k_scale, v_scale, *sched, bias_log2, bias_stride,
        *qk_q.stride(), *qk_k.stride(), *v_op.stride(), *ob.stride(),
        *mask_strides, *widths,
        heads, q_len, kv_len, scale * LOG2E, dq[0], dq[1], dk[0], dk[1],
        HEAD_DIM=dim, HEAD_DIM_PAD=head_dim_pad(dim), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        MASK_BLOCK_M=mbm, MASK_BLOCK_N=mbn, SPARSE=mask is not None, HAS_KEY_BIAS=key_bias is not None,
        QUANT_INT8=quant == "int8",
        PV_FP8=pv_fp8, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        INTERPRETER=interpret, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
