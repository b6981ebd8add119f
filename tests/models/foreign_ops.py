"""CPU stand-ins for the attention ops that ``flash_attn`` and ``xformers`` put into Dynamo graphs.

Neither package runs without CUDA. This module registers look-alike ops under the *same* ``torch.library``
names and schemas, with fake kernels that give the real output shapes and dtypes. Their eager kernels compute
in fp32 with ``F.scaled_dot_product_attention``. The wrappers call the ops the way the real Python code does.
Under ``no_grad``, or when no input requires grad, Dynamo inlines ``autograd.Function.forward``, so the graph
holds the op node plus the same pad/slice/reshape nodes around it. Backward raises: the stand-ins are
inference-only.

Sources (public GitHub), written independently from them:

* Dao-AILab/flash-attention ``flash_attn/flash_attn_interface.py`` at v2.7.0, v2.7.4.post1 and v2.8.3.
  The ops are ``flash_attn::_flash_attn_forward`` and ``flash_attn::_flash_attn_varlen_forward``, with their
  ``register_fake`` kernels and ``FlashAttn{,QKVPacked,Varlen}Func.forward``. The varlen schema follows
  v2.7.4 to v2.8.3: v2.7.0 lacks ``zero_tensors`` and main adds ``num_splits: int = 0``.
* facebookresearch/xformers ``xformers/ops/fmha/{__init__,flash,cutlass,attn_bias}.py`` at v0.0.32.post2:
  the ``xformers_flash::flash_fwd`` op, ``memory_efficient_attention`` dispatch and ``BlockDiagonalMask``.
* hpcaitech/Open-Sora ``opensora/models/layers/blocks.py`` (v1.2.0, v1.3) for how DiTs call these.

An op is only registered when its name is still free. Importing twice is therefore harmless, and on a GPU
machine where the real package was imported first, the wrappers call the real op.
"""
import dataclasses
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _op_exists(qualname: str) -> bool:
    ns, name = qualname.split("::")
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _maybe_contiguous(x):
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


def _attend(q, k, v, dropout_p, scale, causal, window_left, window_right, softcap, alibi_slopes):
    """Dense reference on ``[B, S, H, D]``. Returns (out ``[B, Sq, H, Dv]`` in q.dtype, lse ``[B, H, Sq]`` fp32).

    Follows the flash-attn semantics: causal and window masks are aligned bottom-right (key j is
    visible to query i iff ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``). ALiBi adds
    ``-slope * |i + Sk - Sq - j|``. If K/V have fewer heads, they are shared across query heads (MQA/GQA).
    """
    b, sq, h, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))
    if hk != h:
        kf, vf = kf.repeat_interleave(h // hk, dim=1), vf.repeat_interleave(h // hk, dim=1)
    i = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=q.device)[None, :]
    bias = torch.zeros(1, 1, sq, sk, device=q.device)
    if causal:
        window_right = 0
    if window_left >= 0:
        bias = bias.masked_fill(j < i - window_left, float("-inf"))
    if window_right >= 0:
        bias = bias.masked_fill(j > i + window_right, float("-inf"))
    if alibi_slopes is not None:  # [H] or [B, H]
        bias = bias - alibi_slopes.float().reshape(-1, h, 1, 1) * (i - j).abs()
    raw = qf @ kf.transpose(-1, -2) * scale
    scores = softcap * torch.tanh(raw / softcap) if softcap > 0 else raw
    lse = torch.logsumexp(scores + bias, dim=-1)
    # SDPA adds attn_mask to raw*scale, so fold the soft-cap correction into the mask.
    mask = (bias + scores - raw) if softcap > 0 else bias.expand(b, h, sq, sk)
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return torch.nan_to_num(out, nan=0.0).transpose(1, 2).to(q.dtype), lse


def _attend_varlen(q, k, v, cu_q, cu_k, dropout_p, scale, causal, wl, wr, softcap, alibi_slopes):
    """Packed ``[total, H, D]`` + ``cu_seqlens``. Returns (out ``[total_q, H, Dv]``, lse packed ``[H, total_q]``)."""
    outs, lses = [], []
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for n in range(len(starts_q) - 1):
        (q0, q1), (k0, k1) = starts_q[n : n + 2], starts_k[n : n + 2]
        slopes = alibi_slopes[n] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
        o, lse = _attend(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], dropout_p, scale, causal, wl, wr, softcap, slopes)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs, 0), torch.cat(lses, -1)


def _dmask(q: Tensor, batch: int, heads: int, sq: int, sk: int, return_softmax: bool) -> Tensor:
    # flash-attn returns an empty S_dmask unless return_softmax (which it only requests when dropout_p > 0).
    if not return_softmax:
        return torch.empty((0,), dtype=q.dtype, device=q.device)
    r128 = lambda n: (n + 127) // 128 * 128  # noqa: E731
    return torch.zeros((batch, heads, r128(sq), r128(sk)), dtype=q.dtype, device=q.device)


def _rng(q: Tensor) -> Tensor:
    return torch.zeros((2,), dtype=torch.int64, device=q.device)


# ----------------------------------------------------------------------------- flash_attn 2.7 / 2.8
if not _op_exists("flash_attn::_flash_attn_forward"):

    @torch.library.custom_op("flash_attn::_flash_attn_forward", mutates_args=())
    def _flash_attn_forward(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, softmax_scale: float, causal: bool,
                            window_size_left: int, window_size_right: int, softcap: float,
                            alibi_slopes: Optional[Tensor], return_softmax: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
        o, lse = _attend(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap, alibi_slopes)
        b, sq, h, _ = q.shape
        return torch.empty_like(q).copy_(o), lse, _dmask(q, b, h, sq, k.shape[1], return_softmax), _rng(q)

    @_flash_attn_forward.register_fake
    def _(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap, alibi_slopes, return_softmax):
        q = _maybe_contiguous(q)
        b, sq, h, _ = q.shape
        lse = torch.empty((b, h, sq), dtype=torch.float32, device=q.device)
        return torch.empty_like(q), lse, _dmask(q, b, h, sq, k.shape[1], return_softmax), _rng(q)


if not _op_exists("flash_attn::_flash_attn_varlen_forward"):

    @torch.library.custom_op("flash_attn::_flash_attn_varlen_forward", mutates_args=())
    def _flash_attn_varlen_forward(
        q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
        dropout_p: float, softmax_scale: float, causal: bool, window_size_left: int = -1, window_size_right: int = -1,
        softcap: float = 0.0, alibi_slopes: Optional[Tensor] = None, return_softmax: bool = False,
        block_table: Optional[Tensor] = None, leftpad_k: Optional[Tensor] = None, seqused_k: Optional[Tensor] = None,
        zero_tensors: bool = False,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        if block_table is not None or leftpad_k is not None or seqused_k is not None:
            raise NotImplementedError("stand-in: paged KV / leftpad_k / seqused_k are not modelled")
        q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
        o, lse = _attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, dropout_p, softmax_scale, causal,
                                window_size_left, window_size_right, softcap, alibi_slopes)
        b = cu_seqlens_q.numel() - 1
        return torch.empty_like(q).copy_(o), lse, _dmask(q, b, q.shape[1], max_seqlen_q, max_seqlen_k, return_softmax), _rng(q)

    @_flash_attn_varlen_forward.register_fake
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
          window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None, return_softmax=False,
          block_table=None, leftpad_k=None, seqused_k=None, zero_tensors=False):
        q = _maybe_contiguous(q)
        total_q, h, _ = q.shape
        lse = torch.empty((h, total_q), dtype=torch.float32, device=q.device)
        b = cu_seqlens_q.numel() - 1
        return torch.empty_like(q), lse, _dmask(q, b, h, max_seqlen_q, max_seqlen_k, return_softmax), _rng(q)


def _flash_body(q, k, v, dropout_p, softmax_scale, return_softmax, call_op):
    """Body of the FlashAttn*Func forwards: pad the head dim to a multiple of 8, call the op, slice back.

    flash-attn reads the head size as ``q.size(3)`` (``[B, S, H, D]``) or ``q.size(2)`` (varlen ``[T, H, D]``).
    """
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** (-0.5)
    head_size_og = q.size(-1)
    if head_size_og % 8 != 0:
        q = F.pad(q, [0, 8 - head_size_og % 8])
        k = F.pad(k, [0, 8 - head_size_og % 8])
        v = F.pad(v, [0, 8 - head_size_og % 8])
    out_padded, softmax_lse, S_dmask, rng_state = call_op(q, k, v, softmax_scale, return_softmax and dropout_p > 0)
    out = out_padded[..., :head_size_og]
    return out if not return_softmax else (out, softmax_lse, S_dmask)


class _ForwardOnly(torch.autograd.Function):
    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("tests/models/foreign_ops.py stand-ins are inference-only")


class _FlashAttnFunc(_ForwardOnly):
    @staticmethod
    def forward(ctx, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                deterministic, return_softmax, is_grad_enabled):
        def call_op(q, k, v, softmax_scale, return_softmax):
            return torch.ops.flash_attn._flash_attn_forward(
                q, k, v, dropout_p, softmax_scale, causal=causal, window_size_left=window_size[0],
                window_size_right=window_size[1], softcap=softcap, alibi_slopes=alibi_slopes, return_softmax=return_softmax)
        return _flash_body(q, k, v, dropout_p, softmax_scale, return_softmax, call_op)


class _FlashAttnQKVPackedFunc(_ForwardOnly):
    @staticmethod
    def forward(ctx, qkv, *args):
        q, k, v = qkv[:, :, 0].detach(), qkv[:, :, 1].detach(), qkv[:, :, 2].detach()
        return _FlashAttnFunc.forward(ctx, q, k, v, *args)


class _FlashAttnVarlenFunc(_ForwardOnly):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                causal, window_size, softcap, alibi_slopes, deterministic, return_softmax, block_table, is_grad_enabled):
        def call_op(q, k, v, softmax_scale, return_softmax):
            return torch.ops.flash_attn._flash_attn_varlen_forward(
                q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                causal=causal, window_size_left=window_size[0], window_size_right=window_size[1], softcap=softcap,
                alibi_slopes=alibi_slopes, return_softmax=return_softmax, block_table=block_table)
        return _flash_body(q, k, v, dropout_p, softmax_scale, return_softmax, call_op)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q ``[B, Sq, H, D]``, k/v ``[B, Sk, Hk, D]`` (H % Hk == 0) -> ``[B, Sq, H, D]``."""
    return _FlashAttnFunc.apply(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                deterministic, return_attn_probs, torch.is_grad_enabled())


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                              alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv ``[B, S, 3, H, D]`` -> ``[B, S, H, D]``."""
    return _FlashAttnQKVPackedFunc.apply(qkv, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                         deterministic, return_attn_probs, torch.is_grad_enabled())


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q ``[total_q, H, D]``, k/v ``[total_k, Hk, D]``, cu_seqlens int32 ``[B + 1]`` -> ``[total_q, H, D]``."""
    return _FlashAttnVarlenFunc.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                      softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                      return_attn_probs, block_table, torch.is_grad_enabled())


# ----------------------------------------------------------------------------- xformers (fmha, <= 0.0.32 layout)
if not _op_exists("xformers_flash::flash_fwd"):

    @torch.library.custom_op("xformers_flash::flash_fwd", mutates_args=())
    def _xformers_flash_fwd(
        query: Tensor, key: Tensor, value: Tensor, cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
        seqused_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int, p: float, softmax_scale: float,
        is_causal: bool, window_left: int, window_right: int, return_softmax: bool, block_tables: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor, Tensor]:
        if seqused_k is not None or block_tables is not None:
            raise NotImplementedError("stand-in: seqused_k / paged attention are not modelled")
        args = (p, softmax_scale, is_causal, window_left, window_right, 0.0, None)
        if cu_seqlens_q is None:
            o, lse = _attend(query, key, value, *args)
        else:
            o, lse = _attend_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, *args)
        return torch.empty_like(query).copy_(o), lse, _rng(query)

    @_xformers_flash_fwd.register_fake
    def _(query, key, value, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, p, softmax_scale,
          is_causal, window_left, window_right, return_softmax, block_tables):
        if cu_seqlens_q is None:
            b, m, h, _ = query.shape
            lse_shape = [b, h, m]
        else:  # VARLEN_LSE_PACKED (true for xformers' bundled flash and for the flash_attn package)
            m, h, _ = query.shape
            lse_shape = [h, m]
        return torch.empty_like(query), torch.empty(lse_shape, dtype=torch.float32, device=query.device), _rng(query)


class AttentionBias:
    """Base of the xformers attention-bias classes."""


class LowerTriangularMask(AttentionBias):
    """Causal mask (xformers routes it to flash only when Mq == Mk)."""


@dataclasses.dataclass
class _SeqLenInfo:
    seqstart: Tensor  # int32 [n + 1], on the bias device
    max_seqlen: int
    min_seqlen: int
    seqstart_py: List[int]

    @classmethod
    def from_seqlens(cls, seqlens: Sequence[int], *, device) -> "_SeqLenInfo":
        assert not isinstance(seqlens, torch.Tensor), "xformers wants python ints (e.g. mask.sum(1).tolist())"
        starts = [0]
        for n in seqlens:
            starts.append(starts[-1] + n)
        return cls(torch.tensor(starts, dtype=torch.int32, device=device), max(seqlens), min(seqlens), starts)


@dataclasses.dataclass
class BlockDiagonalMask(AttentionBias):
    """Queries of block i attend only to keys of block i; tensors are packed as ``[1, sum(M_i), H, K]``."""

    q_seqinfo: _SeqLenInfo
    k_seqinfo: _SeqLenInfo

    @classmethod
    def from_seqlens(cls, q_seqlen: Sequence[int], kv_seqlen: Optional[Sequence[int]] = None, *, device=None):
        if device is None:  # xformers >= 0.0.27 builds biases on cuda when available
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        q_info = _SeqLenInfo.from_seqlens(q_seqlen, device=device)
        same = kv_seqlen is None or list(q_seqlen) == list(kv_seqlen)
        return cls(q_info, q_info if same else _SeqLenInfo.from_seqlens(kv_seqlen, device=device))


def _fold_bmghk(x: Tensor) -> Tensor:
    # BMGHK -> BMHK: a broadcast head (stride 0) is dropped, otherwise G and H are merged.
    return x[:, :, :, 0] if x.stride(3) == 0 else x.reshape([x.shape[0], x.shape[1], -1, x.shape[4]])


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None, output_dtype=None):
    """``xformers.ops.memory_efficient_attention`` stand-in; q ``[B, Mq, H, K]`` (or BMK / BMGHK) -> ``[B, Mq, H, Kv]``.

    Emits the node that xformers emits on an sm80+ GPU for fp16/bf16 inputs: ``xformers_flash.flash_fwd``.
    (On sm90 with FA3 built in, xformers picks ``xformers_flash3.flash_fwd``, which this file does not model.)
    A ``torch.Tensor`` bias goes to xformers' cutlass op, i.e. ``aten._efficient_attention_forward``. That op is
    CUDA-only, so on CPU the stand-in uses SDPA. ``op`` is ignored.
    """
    output_shape = [*query.shape[:-1], value.shape[-1]]
    if query.ndim == 3:  # BMK -> BMHK with H = 1
        query, key, value = query.unsqueeze(2), key.unsqueeze(2), value.unsqueeze(2)
    bmhk_shape = [*query.shape[:-1], value.shape[-1]]
    if query.ndim == 5:
        query, key, value = _fold_bmghk(query), _fold_bmghk(key), _fold_bmghk(value)
    b, mq, _, k_dim = query.shape
    mk = key.shape[1]
    softmax_scale = scale if scale is not None else k_dim ** (-0.5)
    if isinstance(attn_bias, torch.Tensor):
        if query.is_cuda:
            out = torch.ops.aten._efficient_attention_forward(
                query=query, key=key, value=value, bias=attn_bias, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=-1, max_seqlen_k=-1, dropout_p=p, compute_log_sumexp=False, custom_mask_type=0,
                scale=scale)[0]
        else:
            out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                                 attn_mask=attn_bias, dropout_p=p, scale=softmax_scale).transpose(1, 2)
    else:
        cu_q = cu_k = None
        max_q, max_k = mq, mk
        if isinstance(attn_bias, BlockDiagonalMask):
            cu_q, cu_k = attn_bias.q_seqinfo.seqstart, attn_bias.k_seqinfo.seqstart
            max_q, max_k = attn_bias.q_seqinfo.max_seqlen, attn_bias.k_seqinfo.max_seqlen
            query = query.reshape([b * mq, -1, k_dim])
            key = key.reshape([b * mk, -1, k_dim])
            value = value.reshape([b * mk, -1, value.shape[-1]])
        elif attn_bias is not None and not isinstance(attn_bias, LowerTriangularMask):
            raise NotImplementedError(f"stand-in: attn_bias {type(attn_bias).__name__} is not modelled")
        out, _lse, _rng_state = torch.ops.xformers_flash.flash_fwd(
            query, key, value, cu_q, cu_k, None, max_q, max_k, p, softmax_scale,
            isinstance(attn_bias, LowerTriangularMask), window_left=-1, window_right=-1,
            return_softmax=False, block_tables=None,
        )
        out = out.reshape(bmhk_shape)
    out = out.reshape(output_shape)
    return out if output_dtype is None else out.to(output_dtype)

