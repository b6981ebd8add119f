"""The pure-torch references: attention semantics and the quantization twins (no triton needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditcompile.kernels.attention import reference as ref
from ditcompile.kernels.block_mask import BlockSparseMask


def _qkv(gen, shape, dtype=torch.float64):
    return [torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3)]


def test_dense_matches_sdpa(gen):
    q, k, v = _qkv(gen, (2, 3, 37, 16))
    out = ref.sparse_attention_reference(q, k, v, scale=0.3)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=1e-12)


def test_bshd_layout_and_q_ne_kv(gen):
    q = torch.randn(2, 19, 3, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 45, 3, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    out = ref.sparse_attention_reference(q, k, v, layout="bshd")
    expected = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert out.shape == q.shape and torch.allclose(out, expected, atol=1e-12)


def test_masked_rows_match_sdpa_and_empty_rows_are_zero(gen):
    q, k, v = _qkv(gen, (1, 2, 50, 16))
    blocks = torch.rand(1, 2, 4, 4, generator=gen) < 0.5
    blocks[0, 0, 1] = False  # an empty query block (rows 16..31 of head 0)
    mask = BlockSparseMask.from_dense_block_mask(blocks, 16, 16, 50, 50, dense_kv_range=None)
    out = ref.sparse_attention_reference(q, k, v, mask)
    allowed = ref.token_mask(mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # NaN on empty rows
    rows_ok = allowed.any(-1)
    assert torch.allclose(out[rows_ok], expected[rows_ok], atol=1e-12)
    assert (out[~rows_ok] == 0).all() and (~rows_ok).sum() >= 16


def test_dense_ranges_in_token_mask():
    mask = BlockSparseMask.from_dense_block_mask(
        torch.zeros(1, 1, 3, 3, dtype=torch.bool), 16, 16, 40, 40, dense_q_range=(3, 5), dense_kv_range=(20, 21)
    )
    allowed = ref.token_mask(mask)[0, 0]
    expected = torch.zeros(40, 40, dtype=torch.bool)
    expected[3:5] = True
    expected[:, 20] = True
    assert torch.equal(allowed, expected)
    assert torch.equal(ref.token_mask(mask, 2, 6)[0, 0], expected[2:6])


def test_chunking_does_not_change_results(gen, monkeypatch):
    q, k, v = _qkv(gen, (1, 1, 40, 16))
    full = ref.sparse_attention_reference(q, k, v)
    monkeypatch.setattr(ref, "_row_chunk", lambda *a, **kw: 7)
    assert torch.allclose(ref.sparse_attention_reference(q, k, v), full, atol=1e-14)


def test_int8_quantization_reference(gen):
    x = torch.randn(2, 3, 70, 16, generator=gen) * 3
    mean = ref.smooth_k_mean_reference(x)
    assert torch.allclose(mean, x.mean(2))
    x_i8, scale = ref.quantize_int8_per_block_reference(x, 32, mean=mean)
    assert x_i8.dtype == torch.int8 and x_i8.shape == x.shape and scale.shape == (2, 3, 3)
    assert x_i8.abs().max() == 127
    deq = x_i8.float() * scale.repeat_interleave(32, -1)[..., :70, None]
    err = (deq - (x - mean[:, :, None])).abs()
    assert (err <= scale.repeat_interleave(32, -1)[..., :70, None] / 2 + 1e-6).all()  # half a step
    # bshd gives the same codes.
    x_i8_t, scale_t = ref.quantize_int8_per_block_reference(x.transpose(1, 2), 32, layout="bshd", mean=mean)
    assert torch.equal(x_i8_t, x_i8) and torch.equal(scale_t, scale)


def test_fp8_quantization_reference(gen):
    v = torch.randn(1, 2, 33, 16, generator=gen) + torch.randn(1, 2, 1, 16, generator=gen)
    v_fp8, scale = ref.quantize_fp8_per_channel_reference(v)
    assert v_fp8.shape == (1, 2, 16, 33) and v_fp8.dtype == torch.float8_e4m3fn
    deq = v_fp8.float().transpose(2, 3) * scale[:, :, None]
    assert torch.isfinite(deq).all()
    assert ((deq - v).abs() <= v.abs() / 16 + scale[:, :, None] * 2**-9).all()  # 3 mantissa bits


@pytest.mark.parametrize("pv_fp8", [False, True])
def test_int8_emulation_accuracy(gen, pv_fp8):
    """The quantization recipe itself is accurate on structured inputs (K channel offsets)."""
    shape = (1, 2, 120, 64)
    q = torch.randn(*shape, generator=gen) + 0.5 * torch.randn(1, 2, 1, 64, generator=gen)
    k = torch.randn(*shape, generator=gen) + 4.0 * torch.randn(1, 2, 1, 64, generator=gen)
    v = torch.randn(*shape, generator=gen) + 0.5 * torch.randn(1, 2, 1, 64, generator=gen)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    exact = ref.sparse_attention_reference(q.double(), k.double(), v.double())
    out = ref.int8_attention_reference(q, k, v, block_m=32, block_n=32, pv_fp8=pv_fp8)
    err = ((out.double() - exact).norm() / exact.norm()).item()
    assert err < 4e-2
