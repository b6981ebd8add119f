"""Key padding in the kernels (``key_bias``): the Triton kernel (interpreter on CPU) and both
references against an independent float64 SDPA-style reference with the same mask.

Every padded key must be ignored exactly; a batch element whose keys are all masked outputs 0
(the kernels' convention for rows that attend nothing; torch 2.13's SDPA gives 0 as well, see
tests/ops/test_masked_attention.py). Inputs are fresh random data per test.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from ditcompile.kernels.attention.flash_fwd import KernelConfig, sparse_flash_attention
from ditcompile.kernels.attention.reference import (
    int8_attention_reference,
    key_bias_from_mask,
    sparse_attention_reference,
)

from .test_flash_attention import BF16_TOL, FP32_TOL, INT8_TOL, _qkv, _random_mask, _run


def _padding(gen, b, skv, valid) -> torch.Tensor:
    """bool [B, 1, 1, Skv]: key j of batch i is attended when j < valid[i] (valid 0: all masked)."""
    keys = torch.arange(skv)
    return (keys[None, :] < torch.tensor(valid)[:, None])[:, None, None, :]


def _masked_exact(q, k, v, attn_mask, layout, block_mask=None) -> torch.Tensor:
    """float64 attention with an SDPA-style mask (bool or additive), written out; rows that attend
    nothing are 0. Independent of the kernels' key-bias code path."""
    qb, kb, vb = (t.cpu().double() if layout == "bhsd" else t.cpu().double().transpose(1, 2) for t in (q, k, v))
    scores = qb @ kb.transpose(-1, -2) / qb.shape[-1] ** 0.5  # [B, H, Sq, Skv]
    if attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    else:
        scores = scores + attn_mask.double()
    if block_mask is not None:
        allowed = block_mask.allowed(torch.arange(block_mask.q_len), torch.arange(block_mask.kv_len)).cpu()
        scores = scores.masked_fill(~allowed, float("-inf"))
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    p = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    out = p @ vb
    return out if layout == "bhsd" else out.transpose(1, 2)


@pytest.mark.parametrize(
    "b,h,sq,skv,d,dtype,layout,valid,config",
    [
        (2, 2, 70, 90, 32, torch.float32, "bhsd", [90, 37], KernelConfig(32, 32, 4, 2)),  # ragged tail
        (2, 1, 64, 64, 16, torch.bfloat16, "bshd", [17, 0], KernelConfig(32, 16, 4, 2)),  # one batch all masked
        (1, 2, 50, 77, 64, torch.float16, "bhsd", [5], None),  # default tiles, few valid keys
    ],
)
def test_dense_key_padding(gen, device, rel_l2, b, h, sq, skv, d, dtype, layout, valid, config):
    q, k, v = _qkv(gen, b, h, sq, skv, d, dtype, layout, device)
    attn_mask = _padding(gen, b, skv, valid)
    bias = key_bias_from_mask(attn_mask.to(device))
    out = _run(q, k, v, None, layout=layout, key_bias=bias, config=config)
    exact = _masked_exact(q, k, v, attn_mask, layout)
    assert rel_l2(out, exact) < (FP32_TOL if dtype == torch.float32 else BF16_TOL)
    for i, n in enumerate(valid):
        if n == 0:  # every key masked: exactly 0, no NaN
            assert (out[i] == 0).all()
    ref = sparse_attention_reference(q.cpu().double(), k.cpu().double(), v.cpu().double(), layout=layout,
                                     key_bias=bias.cpu())
    assert rel_l2(ref, exact) < 1e-12


def test_float_additive_mask_with_finite_values(gen, device, rel_l2):
    """An additive float mask with finite values (a bias, and -10000 'padding') is added as is."""
    q, k, v = _qkv(gen, 2, 2, 40, 48, 32, torch.float32, "bhsd", device)
    attn_mask = torch.randn(2, 1, 1, 48, generator=gen)
    attn_mask[1, ..., 30:] = -10000.0
    attn_mask[0, ..., :4] = float("-inf")
    out = _run(q, k, v, None, key_bias=key_bias_from_mask(attn_mask.to(device)), config=KernelConfig(16, 16, 4, 2))
    assert rel_l2(out, _masked_exact(q, k, v, attn_mask, "bhsd")) < FP32_TOL


def test_finfo_min_rows_average_like_sdpa(gen, device, rel_l2):
    """A row masked everywhere with finfo.min (diffusers' convention) averages its keys, as SDPA does."""
    q, k, v = _qkv(gen, 1, 1, 16, 32, 16, torch.float32, "bhsd", device)
    attn_mask = torch.full((1, 1, 1, 32), torch.finfo(torch.float32).min)
    out = _run(q, k, v, None, key_bias=key_bias_from_mask(attn_mask.to(device)), config=KernelConfig(16, 16, 4, 2))
    expected = torch.nn.functional.scaled_dot_product_attention(q.cpu(), k.cpu(), v.cpu(), attn_mask=attn_mask)
    assert rel_l2(out, expected) < 1e-4


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_block_sparse_with_key_padding(gen, device, rel_l2, layout):
    """The block-sparse schedule (full, partial and dense-range tiles) and key padding together."""
    b, h, sq, skv = 2, 2, 96, 100
    q, k, v = _qkv(gen, b, h, sq, skv, 32, torch.float32, layout, device)
    block_mask = _random_mask(gen, b, h, sq, skv, 32, 32, device, dense_q_range=(90, 96), dense_kv_range=(64, 70))
    attn_mask = _padding(gen, b, skv, [100, 66])
    bias = key_bias_from_mask(attn_mask.to(device))
    out = _run(q, k, v, block_mask, layout=layout, key_bias=bias, config=KernelConfig(16, 16, 4, 2))
    assert rel_l2(out, _masked_exact(q, k, v, attn_mask, layout, block_mask)) < FP32_TOL


def test_int8_with_key_padding(gen, device, rel_l2):
    q, k, v = _qkv(gen, 2, 2, 80, 96, 64, torch.bfloat16, "bshd", device, structured=True)
    attn_mask = _padding(gen, 2, 96, [96, 40])
    bias = key_bias_from_mask(attn_mask.to(device))
    cfg = KernelConfig(32, 32, 4, 2)
    out = _run(q, k, v, None, layout="bshd", quant="int8", pv_fp8=False, key_bias=bias, config=cfg)
    exact = _masked_exact(q, k, v, attn_mask, "bshd")
    assert rel_l2(out, exact) < INT8_TOL
    emulated = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), layout="bshd", block_m=32, block_n=32,
                                        key_bias=bias.cpu())
    assert rel_l2(emulated, exact) < INT8_TOL
    assert rel_l2(out, emulated) < 1e-2


def test_key_bias_broadcast_over_batch(gen, device, rel_l2):
    q, k, v = _qkv(gen, 3, 1, 32, 40, 16, torch.float32, "bhsd", device)
    attn_mask = _padding(gen, 1, 40, [23])  # [1, 1, 1, Skv]: the same keys for every batch element
    out = _run(q, k, v, None, key_bias=key_bias_from_mask(attn_mask.to(device)), config=KernelConfig(16, 16, 4, 2))
    assert rel_l2(out, _masked_exact(q, k, v, attn_mask, "bhsd")) < FP32_TOL


def test_key_bias_from_mask_shapes_and_errors():
    assert key_bias_from_mask(torch.ones(7, dtype=torch.bool)).shape == (1, 7)
    assert key_bias_from_mask(torch.ones(3, 1, 1, 7, dtype=torch.bool)).shape == (3, 7)
    assert key_bias_from_mask(torch.zeros(1, 7)).shape == (1, 7)
    with pytest.raises(ValueError, match="key-padding attn_mask must have shape"):
        key_bias_from_mask(torch.ones(2, 1, 5, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or float"):
        key_bias_from_mask(torch.ones(2, 1, 1, 7, dtype=torch.int32))
    q = torch.randn(2, 1, 8, 16)
    with pytest.raises(ValueError, match="key_bias has shape"):
        sparse_flash_attention(q, q, q, key_bias=torch.zeros(2, 9))
    with pytest.raises(ValueError, match="key_bias must be a float32"):
        sparse_flash_attention(q, q, q, key_bias=torch.zeros(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("pv_fp8", [False, True])
def test_int8_padded_keys_do_not_leak_into_valid_outputs(gen, device, pv_fp8):
    """The padded keys' values must not reach the quantization statistics (K mean and scales, V's
    FP8 scales): changing only them leaves every output unchanged, as in exact attention."""
    q, k, v = _qkv(gen, 2, 2, 64, 64, 32, torch.float32, "bhsd", device, structured=True)
    bias = key_bias_from_mask(_padding(gen, 2, 64, [64, 30]).to(device))
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 30:] = k2[1, :, 30:] * 1000 + 50
    v2[1, :, 30:] *= 1000
    if device == "cpu":  # the emulation, both P.V paths
        run = lambda k, v: int8_attention_reference(q, k, v, key_bias=bias, block_m=32, block_n=32, pv_fp8=pv_fp8)  # noqa: E731
    else:
        run = lambda k, v: _run(q, k, v, None, quant="int8", pv_fp8=pv_fp8, key_bias=bias,  # noqa: E731
                                config=KernelConfig(32, 32, 4, 2))
    assert torch.equal(run(k, v), run(k2, v2))
    if not pv_fp8:  # the kernel (interpreter on the CPU) too
        out = _run(q, k, v, None, quant="int8", pv_fp8=False, key_bias=bias, config=KernelConfig(32, 32, 4, 2))
        out2 = _run(q, k2, v2, None, quant="int8", pv_fp8=False, key_bias=bias, config=KernelConfig(32, 32, 4, 2))
        assert torch.equal(out, out2)
