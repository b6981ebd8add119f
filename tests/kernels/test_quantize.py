"""Triton quantization kernels against their pure-torch twins (bit-exact under the interpreter)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from ditcompile.kernels.attention import quantize
from ditcompile.kernels.attention import reference as ref


def _make(gen, layout, b, h, s, d, dtype, device):
    x = torch.randn(b, h, s, d, generator=gen) * 2 + 3 * torch.randn(b, h, 1, d, generator=gen)
    x = x.to(dtype)
    return (x if layout == "bhsd" else x.transpose(1, 2).contiguous()).to(device)


@pytest.mark.parametrize(
    "layout,s,d,block,dtype,smooth",
    [
        ("bhsd", 70, 64, 32, torch.bfloat16, True),
        ("bshd", 70, 64, 32, torch.bfloat16, True),
        ("bhsd", 1, 16, 16, torch.float16, False),
        ("bshd", 129, 96, 64, torch.float32, True),
        ("bhsd", 40, 128, 16, torch.bfloat16, False),
    ],
)
def test_int8_per_block_matches_reference(gen, device, layout, s, d, block, dtype, smooth):
    x = _make(gen, layout, 2, 3, s, d, dtype, device)
    mean = quantize.smooth_k_mean(x, layout) if smooth else None
    x_i8, scale = quantize.quantize_int8_per_block(x, block, layout=layout, mean=mean)
    ref_i8, ref_scale = ref.quantize_int8_per_block_reference(x.cpu(), block, layout=layout,
                                                              mean=None if mean is None else mean.cpu())
    assert x_i8.shape == (2, 3, s, d) and x_i8.is_contiguous() and scale.shape == (2, 3, -(-s // block))
    torch.testing.assert_close(scale.cpu(), ref_scale, rtol=1e-6, atol=0)
    mismatch = (x_i8.cpu().int() - ref_i8.int()).abs()
    assert mismatch.max() <= 1 and mismatch.float().mean() < 1e-3  # bit-exact in the interpreter


def test_int8_zero_block_has_unit_scale(device):
    x = torch.zeros(1, 1, 20, 16, device=device)
    x[:, :, 16:] = 1.0
    x_i8, scale = quantize.quantize_int8_per_block(x, 16)
    torch.testing.assert_close(scale.cpu(), torch.tensor([[[1.0, 1.0 / 127]]]))
    assert (x_i8[:, :, :16] == 0).all() and (x_i8[:, :, 16:] == 127).all()


@pytest.mark.parametrize("layout,s,d", [("bhsd", 70, 64), ("bshd", 130, 96), ("bhsd", 3, 16)])
def test_fp8_per_channel_matches_reference(gen, device, layout, s, d):
    v = _make(gen, layout, 1, 2, s, d, torch.bfloat16, device)
    v_fp8, scale = quantize.quantize_fp8_per_channel(v, layout=layout)
    ref_fp8, ref_scale = ref.quantize_fp8_per_channel_reference(v.cpu(), layout=layout)
    assert v_fp8.shape == (1, 2, d, s) and v_fp8.stride(-1) == 1
    assert v_fp8.stride(-2) % 16 == 0  # sequence padded so rows stay 16-byte aligned
    torch.testing.assert_close(scale.cpu(), ref_scale, rtol=1e-6, atol=0)
    same = v_fp8.cpu().float() == ref_fp8.float()
    assert same.float().mean() > 0.999  # bit-exact in the interpreter; a GPU divide may flip a tie
    torch.testing.assert_close(v_fp8.cpu().float(), ref_fp8.float(), rtol=1 / 8, atol=2**-9)


def test_bad_block_size(device):
    with pytest.raises(ValueError, match="block must be a power of two"):
        quantize.quantize_int8_per_block(torch.zeros(1, 1, 4, 16, device=device), 24)
