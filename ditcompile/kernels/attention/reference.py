"""Pure-torch references for the attention and quantization kernels.

These compute *exactly the same function* as the Triton kernels and serve two purposes:
the ground truth for the tests (run them on float64 inputs), and the CPU fallback.

Semantics shared with ``flash_fwd.py``:

* ``mask`` is a :class:`BlockSparseMask` (or None for dense attention); it is expanded to
  token level including ragged last blocks and the dense text rows/columns
  (:func:`token_mask`).
* ``key_bias`` (optional): float32 ``[B|1, Skv]`` added to every query's scores (natural-log
  units, like SDPA's additive mask; ``-inf`` removes the key): a key-padding mask in the form
  the kernel reads (:func:`key_bias_from_mask` builds it from SDPA's ``attn_mask``).
* Softmax is over the allowed keys of each query row; a row with **no** allowed key
  outputs zeros (never NaN).
* ``layout`` is ``"bhsd"`` (``[B, H, S, D]``) or ``"bshd"`` (``[B, S, H, D]``); the
  output has q's layout.

The int8 path (``int8_attention_reference``) emulates the kernel's quantization:
per-block int8 Q and smoothed K (:func:`quantize_int8_per_block_reference`), exact integer
QK^T, and P.V either in FP8 e4m3 (P scaled by 448, V per-channel,
:func:`quantize_fp8_per_channel_reference`) or in V's 16-bit dtype.  It differs from the
kernel in one respect only: the kernel quantizes P against the *running* row maximum of its
online softmax, the emulation against the final row maximum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...geometry import BHSD, from_bhsd, to_bhsd
from ..block_mask import BlockSparseMask

__all__ = [
    "FP8_E4M3_MAX",
    "P_FP8_SCALE",
    "token_mask",
    "key_bias_from_mask",
    "check_key_bias",
    "zero_masked_keys",
    "sparse_attention_reference",
    "smooth_k_mean_reference",
    "quantize_int8_per_block_reference",
    "quantize_fp8_per_channel_reference",
    "int8_attention_reference",
]

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn
P_FP8_SCALE = 448.0  # P in [0, 1] is multiplied by this before the FP8 cast
INT8_MAX = 127.0


# ---------------------------------------------------------------------- masks


def token_mask(mask: BlockSparseMask, q_start: int = 0, q_end: int | None = None) -> Tensor:
    """Token-level mask of query rows ``[q_start, q_end)``: bool ``[B|1, H|1, rows, kv_len]``."""
    q_end = mask.q_len if q_end is None else q_end
    rows = torch.arange(q_start, q_end, device=mask.device)  # [R]
    return mask.allowed(rows, torch.arange(mask.kv_len, device=mask.device))  # [B|1, H|1, R, kv_len]


def key_bias_from_mask(attn_mask: Tensor) -> Tensor:
    """SDPA's key-padding ``attn_mask`` as the kernels' ``key_bias``: float32 ``[B|1, Skv]``.

    attn_mask: bool (True = attend) or float (added to the scores) of shape ``[B|1, 1, 1, Skv]``
    (or fewer leading dims, SDPA broadcasting). Bool False becomes ``-inf``; float values are kept,
    except that finite values are clamped to -1e30 so that the kernel's log2-domain scores
    (x * log2 e) cannot overflow to ``-inf`` (a row masked with ``finfo.min`` still averages its
    keys, as SDPA does, while a row of ``-inf`` outputs 0).

    Raises ValueError for another shape or dtype.
    """
    shape = [1] * (4 - attn_mask.dim()) + list(attn_mask.shape)  # SDPA broadcasting from the right
    if attn_mask.dim() > 4 or shape[1] != 1 or shape[2] != 1:
        raise ValueError(f"a key-padding attn_mask must have shape [B|1, 1, 1, Skv], got {tuple(attn_mask.shape)}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise ValueError(f"attn_mask must be bool or float, got {attn_mask.dtype}")
    rows = attn_mask.reshape(shape[0], shape[3])  # [B|1, Skv]
    if rows.dtype == torch.bool:
        zero = torch.zeros((), dtype=torch.float32, device=rows.device)
        return torch.where(rows, zero, float("-inf")).contiguous()
    bias = rows.to(torch.float32)
    return torch.where(torch.isneginf(bias), bias, bias.clamp_min(-1e30)).contiguous()


def check_key_bias(key_bias: Tensor | None, batch: int, kv_len: int, device) -> None:
    """ValueError unless ``key_bias`` is None or float32 ``[B|1, Skv]`` on ``device``."""
    if key_bias is None:
        return
    if not isinstance(key_bias, Tensor) or key_bias.dtype != torch.float32 or key_bias.dim() != 2:
        raise ValueError("key_bias must be a float32 tensor [B|1, Skv] (see key_bias_from_mask), got "
                         f"{getattr(key_bias, 'dtype', type(key_bias).__name__)} {tuple(getattr(key_bias, 'shape', ()))}")
    if key_bias.shape[0] not in (1, batch) or key_bias.shape[1] != kv_len:
        raise ValueError(f"key_bias has shape {tuple(key_bias.shape)}; expected [1 or {batch}, {kv_len}]")
    if key_bias.device != device:
        raise ValueError(f"key_bias is on {key_bias.device} but q is on {device}")


def zero_masked_keys(k: Tensor, v: Tensor, key_bias: Tensor | None, layout: str = BHSD) -> tuple[Tensor, Tensor]:
    """k and v with the keys that ``key_bias`` removes (``-inf``) set to 0, for the 8-bit path.

    Their attention weight is 0 either way, but the quantization statistics (K's smoothing mean
    and block scales, V's FP8 channel scales) would otherwise read the padded values, letting them
    change the outputs of valid tokens. Returns k, v unchanged without a bias; with one, new
    tensors whatever it holds (its values are never tested on the host: that would be a device
    sync, which CUDA-graph capture forbids).
    """
    if key_bias is None:
        return k, v
    removed = torch.isneginf(key_bias)  # [B|1, Skv]
    shape = (removed.shape[0], 1, removed.shape[1], 1) if layout == BHSD else (removed.shape[0], removed.shape[1], 1, 1)
    removed = removed.reshape(shape)
    return k.masked_fill(removed, 0), v.masked_fill(removed, 0)


def _add_key_bias(scores: Tensor, key_bias: Tensor | None) -> Tensor:
    """scores [B, H, R, N] + key_bias [B|1, N] broadcast over heads and rows."""
    return scores if key_bias is None else scores + key_bias[:, None, None, :].to(scores.dtype)


def _masked_softmax_pv(scores: Tensor, allowed: Tensor | None, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """scores [B,H,R,N] (already scaled), allowed broadcastable bool, v [B,H,N,D].

    Returns (probabilities relative to the row max [B,H,R,N], row sums [B,H,R], row max).
    Rows with no allowed key get p == 0 and row sum 0.
    """
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    p = torch.exp(scores - row_max)
    return p, p.sum(dim=-1), row_max


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num [B,H,R,D] / den [B,H,R], with 0 where den == 0 (empty rows)."""
    den = den[..., None]
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))


def _row_chunk(q_len: int, kv_len: int, batch_heads: int, budget: int = 1 << 25) -> int:
    """Query rows per chunk so that one [B, H, rows, kv_len] score tensor stays ~budget elements."""
    return max(1, min(max(q_len, 1), budget // max(1, kv_len * batch_heads)))


def _check_reference_inputs(q: Tensor, k: Tensor, v: Tensor, mask: BlockSparseMask | None, layout: str,
                            key_bias: Tensor | None = None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D")
    check_key_bias(key_bias, q.shape[0], to_bhsd(k, layout).shape[2], q.device)
    if mask is not None:
        qb, kb = to_bhsd(q, layout), to_bhsd(k, layout)
        if (mask.q_len, mask.kv_len) != (qb.shape[2], kb.shape[2]):
            raise ValueError(
                f"mask describes q_len={mask.q_len}, kv_len={mask.kv_len} but the inputs have "
                f"q_len={qb.shape[2]}, kv_len={kb.shape[2]}"
            )


# ---------------------------------------------------------------------- attention


def sparse_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: BlockSparseMask | None = None,
    *,
    scale: float | None = None,
    layout: str = BHSD,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Block-sparse attention in plain torch; same function as ``sparse_flash_attention``.

    Computes in float64 for float64 inputs and float32 otherwise; returns q's dtype and
    layout.  Processes query rows in chunks so memory stays bounded. ``key_bias``: float32
    ``[B|1, Skv]`` added to the scores (see the module docstring).
    """
    _check_reference_inputs(q, k, v, mask, layout, key_bias)
    qb, kb, vb = (to_bhsd(t, layout) for t in (q, k, v))  # [B, H, S, D]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(qb.shape[-1]) if scale is None else scale
    q_len, kv_len = qb.shape[2], kb.shape[2]
    out = torch.empty(*qb.shape[:3], vb.shape[-1], dtype=compute, device=q.device)  # [B, H, Sq, D]
    kc, vc = kb.to(compute), vb.to(compute)
    chunk = _row_chunk(q_len, kv_len, qb.shape[0] * qb.shape[1])
    for start in range(0, q_len, chunk):
        end = min(start + chunk, q_len)
        scores = torch.matmul(qb[:, :, start:end].to(compute), kc.transpose(-1, -2)) * scale  # [B,H,R,N]
        scores = _add_key_bias(scores, key_bias)
        allowed = None if mask is None else token_mask(mask, start, end)
        p, row_sum, _ = _masked_softmax_pv(scores, allowed, vc)
        out[:, :, start:end] = _safe_divide(torch.matmul(p, vc), row_sum)
    return from_bhsd(out.to(q.dtype), layout)


# ---------------------------------------------------------------------- quantization


def smooth_k_mean_reference(k: Tensor, layout: str = BHSD) -> Tensor:
    """K's mean over the sequence per (b, h, channel): float32 ``[B, H, D]``.

    Subtracting it from every key shifts each score row by a constant, which softmax ignores,
    and removes the per-channel offset that would otherwise dominate the int8 range.
    """
    return to_bhsd(k, layout).mean(dim=2, dtype=torch.float32)


def quantize_int8_per_block_reference(
    x: Tensor, block: int, *, layout: str = BHSD, mean: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization with one scale per ``block`` rows of the sequence.

    x: [B, H, S, D] (or [B, S, H, D] for layout "bshd"); mean: optional float32 [B, H, D]
    subtracted first (K smoothing).
    Returns (int8 ``[B, H, S, D]`` contiguous, float32 scales ``[B, H, ceil(S / block)]``)
    with ``x - mean ~= x_int8 * scale`` blockwise.  Rounding is half away from zero.
    """
    xb = to_bhsd(x, layout).to(torch.float32)  # [B, H, S, D]
    if mean is not None:
        xb = xb - mean[:, :, None, :]
    batch, heads, seq, dim = xb.shape
    nblocks = -(-seq // block)
    padded = torch.nn.functional.pad(xb, (0, 0, 0, nblocks * block - seq))  # [B, H, NB*block, D]
    blocks = padded.reshape(batch, heads, nblocks, block * dim)
    amax = blocks.abs().amax(dim=-1)  # [B, H, NB]
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    scaled = blocks / scale[..., None]
    rounded = torch.where(scaled >= 0, scaled + 0.5, scaled - 0.5).trunc()
    x_int8 = rounded.to(torch.int8).view(batch, heads, nblocks * block, dim)[:, :, :seq]
    return x_int8.contiguous(), scale.contiguous()


def quantize_fp8_per_channel_reference(v: Tensor, *, layout: str = BHSD) -> tuple[Tensor, Tensor]:
    """FP8 e4m3 quantization of V with one scale per (b, h, channel) over the sequence.

    Returns (float8_e4m3fn ``[B, H, D, S]``, i.e. transposed so the sequence is contiguous,
    float32 scales ``[B, H, D]``) with ``v ~= v_fp8.mT * scale``.
    """
    vb = to_bhsd(v, layout).to(torch.float32)  # [B, H, S, D]
    amax = vb.abs().amax(dim=2)  # [B, H, D]
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    v_fp8 = (vb / scale[:, :, None, :]).to(torch.float8_e4m3fn)
    return v_fp8.transpose(2, 3).contiguous(), scale.contiguous()


def int8_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: BlockSparseMask | None = None,
    *,
    scale: float | None = None,
    layout: str = BHSD,
    block_m: int = 128,
    block_n: int = 64,
    pv_fp8: bool = False,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Emulation of the int8 kernel path (same quantization): exact integer Q.K^T products, scores
    and P.V in float32 (float64 when D > 1040 or for FP8 P.V).

    ``block_m`` / ``block_n``: rows of Q / K sharing one int8 scale (the kernel's tile sizes).
    ``pv_fp8``: P.V in FP8 e4m3 (P * 448, V per-channel) instead of V's dtype.
    ``key_bias``: float32 ``[B|1, Skv]`` added to the dequantized scores.
    Returns q's dtype and layout.
    """
    _check_reference_inputs(q, k, v, mask, layout, key_bias)
    k, v = zero_masked_keys(k, v, key_bias, layout)  # removed keys never reach the quantization statistics
    qb, vb = to_bhsd(q, layout), to_bhsd(v, layout)
    scale = 1.0 / math.sqrt(qb.shape[-1]) if scale is None else scale
    q_int8, q_scale = quantize_int8_per_block_reference(q, block_m, layout=layout)
    k_mean = smooth_k_mean_reference(k, layout)
    k_int8, k_scale = quantize_int8_per_block_reference(k, block_n, layout=layout, mean=k_mean)
    q_len, kv_len = q_int8.shape[2], k_int8.shape[2]
    f64 = torch.float64
    # Integer products are exact in float32 while |sum| <= D * 127^2 < 2^24 (D <= 1040): then the
    # scores and P.V run in float32 like the kernel (a few times faster than float64 on a CPU).
    acc = torch.float32 if qb.shape[-1] * INT8_MAX * INT8_MAX < 2 ** 24 else f64
    scores = torch.matmul(q_int8.to(acc), k_int8.to(acc).transpose(-1, -2))  # [B, H, Sq, Skv], exact
    row_scale = q_scale.to(acc).repeat_interleave(block_m, dim=-1)[..., :q_len, None] * scale  # [B, H, Sq, 1]
    scores.mul_(row_scale).mul_(k_scale.to(acc).repeat_interleave(block_n, dim=-1)[..., None, :kv_len])
    allowed = None if mask is None else token_mask(mask)
    if pv_fp8:
        v_fp8, v_scale = quantize_fp8_per_channel_reference(v, layout=layout)
        v_pv = v_fp8.transpose(2, 3).to(f64)  # [B, H, Skv, D], in units of v_scale
    else:
        v_pv = vb.to(acc)
    scores = _add_key_bias(scores.to(torch.float32), key_bias)
    p, row_sum, _ = _masked_softmax_pv(scores, allowed, v_pv)  # fp32 P like the kernel
    if pv_fp8:
        p_pv = (p * P_FP8_SCALE).to(torch.float8_e4m3fn).to(f64)
        out = torch.matmul(p_pv, v_pv) * (v_scale.to(f64)[:, :, None, :] / P_FP8_SCALE)
    else:
        p_pv = p.to(vb.dtype if vb.dtype in (torch.float16, torch.bfloat16) else torch.float32).to(acc)
        out = torch.matmul(p_pv, v_pv)
    out = _safe_divide(out, row_sum.to(f64))
    return from_bhsd(out.to(q.dtype), layout)
