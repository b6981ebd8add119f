"""sparse_flash_attention (Triton, interpreter on CPU) against the float64 reference.

Every run writes into an output pre-filled with NaN, so an element the kernel fails to
write is caught.  Inputs are fresh random data per test (see the ``gen`` fixture).
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from ditcompile.kernels.block_mask import BlockSparseMask
from ditcompile.kernels.attention.flash_fwd import KernelConfig, sparse_flash_attention
from ditcompile.kernels.attention.reference import (
    int8_attention_reference,
    sparse_attention_reference,
)

BF16_TOL = 1e-2  # relative L2, 16-bit inputs vs float64
FP32_TOL = 1e-5
INT8_TOL = 4e-2


# ---------------------------------------------------------------------- helpers


def _qkv(gen, b, h, sq, skv, d, dtype, layout, device, structured=False):
    """Random q, k, v in ``layout``; ``structured`` adds per-channel offsets (K's dominate)."""
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, h, skv, d, generator=gen)
    v = torch.randn(b, h, skv, d, generator=gen)
    if structured:
        q = q + 0.5 * torch.randn(b, h, 1, d, generator=gen)
        k = k + 4.0 * torch.randn(b, h, 1, d, generator=gen)
        v = v + 0.5 * torch.randn(b, h, 1, d, generator=gen)
    out = []
    for t in (q, k, v):
        t = t.to(dtype)
        t = t if layout == "bhsd" else t.transpose(1, 2).contiguous()  # real [B, S, H, D] strides
        out.append(t.to(device))
    return out


def _random_mask(gen, b, h, sq, skv, bm, bn, device, p=0.5, **ranges) -> BlockSparseMask:
    """Random block mask with an empty first query block and a full last one."""
    nqb, nkb = -(-sq // bm), -(-skv // bn)
    blocks = torch.rand(b, h, nqb, nkb, generator=gen) < p
    if nqb >= 3:
        blocks[..., 0, :] = False
        blocks[..., -1, :] = True
    return BlockSparseMask.from_dense_block_mask(blocks.to(device), bm, bn, sq, skv, **ranges)


def _run(q, k, v, mask=None, **kwargs) -> torch.Tensor:
    """Launch into a NaN-poisoned output and check the same tensor comes back."""
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    result = sparse_flash_attention(q, k, v, mask, out=out, **kwargs)
    assert result is out
    assert torch.isfinite(result).all(), "unwritten (NaN) or non-finite output elements"
    return result


def _exact(q, k, v, mask=None, layout="bhsd", scale=None) -> torch.Tensor:
    return sparse_attention_reference(q.cpu().double(), k.cpu().double(), v.cpu().double(), None if mask is None
                                      else mask.to("cpu"), layout=layout, scale=scale)  # fmt: skip


# ---------------------------------------------------------------------- dense


@pytest.mark.parametrize(
    "b,h,sq,skv,d,dtype,layout,config",
    [
        (1, 2, 300, 300, 64, torch.bfloat16, "bhsd", None),  # ragged, default (largest) tiles
        (2, 1, 1, 1, 16, torch.bfloat16, "bshd", None),  # single token, batch 2
        (1, 1, 77, 130, 128, torch.float16, "bshd", KernelConfig(32, 32, 4, 2)),  # q_len != kv_len
        (1, 2, 45, 45, 96, torch.bfloat16, "bhsd", KernelConfig(16, 32, 4, 2)),  # head dim padded to 128
        (2, 2, 64, 64, 16, torch.bfloat16, "bshd", KernelConfig(16, 16, 4, 2)),  # aligned, many tiles
        (1, 1, 33, 20, 40, torch.float32, "bhsd", None),  # fp32, odd head dim
    ],
)
def test_dense(gen, device, rel_l2, b, h, sq, skv, d, dtype, layout, config):
    q, k, v = _qkv(gen, b, h, sq, skv, d, dtype, layout, device)
    out = _run(q, k, v, layout=layout, config=config)
    assert out.dtype == dtype
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    assert rel_l2(out, _exact(q, k, v, layout=layout)) < tol


def test_custom_scale_and_strided_inputs(gen, device, rel_l2):
    """q/k/v as non-contiguous views of a packed [B, S, 3, H, D] tensor (read via strides)."""
    qkv = torch.randn(1, 50, 3, 2, 64, generator=gen).to(torch.bfloat16).to(device)
    q, k, v = qkv.unbind(2)  # each [B, S, H, D], non-contiguous
    out = _run(q, k, v, layout="bshd", scale=0.2)
    assert rel_l2(out, _exact(q, k, v, layout="bshd", scale=0.2)) < BF16_TOL


# ---------------------------------------------------------------------- block-sparse


@pytest.mark.parametrize(
    "b,h,mb,mh,sq,skv,d,dtype,layout,bm,bn,ranges,config",
    [
        # per-head mask, empty and full rows, ragged last blocks
        (1, 2, 1, 2, 300, 300, 64, torch.bfloat16, "bhsd", 32, 32, {}, None),
        # per-(b, h) mask, q != kv, unaligned text rows and columns
        (2, 2, 2, 2, 100, 70, 64, torch.bfloat16, "bshd", 32, 16,
         dict(dense_q_range=(5, 40), dense_kv_range=(50, 53)), None),
        # broadcast mask, text rows at the end, kernel tile smaller than the mask's query block
        (1, 2, 1, 1, 97, 131, 128, torch.float16, "bhsd", 32, 32, dict(dense_q_range=(90, 97)),
         KernelConfig(16, 32, 4, 2)),
        # a mask kv block spans 4 kernel tiles; text prefix (Wan / Hunyuan style) in both ranges
        (1, 1, 1, 1, 150, 150, 16, torch.bfloat16, "bshd", 64, 64,
         dict(dense_q_range=(0, 10), dense_kv_range=(0, 10)), KernelConfig(32, 16, 4, 2)),
    ],
)  # fmt: skip
def test_block_sparse(gen, device, rel_l2, b, h, mb, mh, sq, skv, d, dtype, layout, bm, bn, ranges, config):
    q, k, v = _qkv(gen, b, h, sq, skv, d, dtype, layout, device)
    mask = _random_mask(gen, mb, mh, sq, skv, bm, bn, device, **ranges)
    out = _run(q, k, v, mask, layout=layout, config=config)
    assert rel_l2(out, _exact(q, k, v, mask, layout=layout)) < BF16_TOL


def test_empty_rows_are_zero(gen, device):
    q, k, v = _qkv(gen, 1, 2, 70, 40, 32, torch.bfloat16, "bhsd", device)
    blocks = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    blocks[0, 1, 2] = True  # head 1, last query block only
    mask = BlockSparseMask.from_dense_block_mask(blocks.to(device), 32, 16, 70, 40)
    out = _run(q, k, v, mask)
    assert (out[:, 0] == 0).all() and (out[:, 1, :64] == 0).all()
    assert (out[:, 1, 64:].abs().sum(-1) > 0).all()
    assert (_exact(q, k, v, mask)[:, 0] == 0).all()  # the reference defines the same


def test_full_mask_equals_dense(gen, device, rel_l2):
    q, k, v = _qkv(gen, 1, 1, 90, 90, 64, torch.bfloat16, "bhsd", device)
    cfg = KernelConfig(32, 32, 4, 2)
    dense = _run(q, k, v, config=cfg)
    sparse = _run(q, k, v, BlockSparseMask.full(90, 90, 32, 32, device=device), config=cfg)
    assert rel_l2(sparse, dense) < 1e-6


# ---------------------------------------------------------------------- 8-bit


@pytest.mark.parametrize(
    "b,h,sq,skv,d,dtype,layout,pv_fp8,masked,config",
    [
        (1, 2, 200, 200, 64, torch.bfloat16, "bhsd", False, False, KernelConfig(64, 64, 4, 2)),
        (1, 1, 77, 150, 128, torch.bfloat16, "bshd", True, False, KernelConfig(32, 32, 4, 2)),
        (1, 2, 130, 100, 16, torch.bfloat16, "bhsd", True, True, KernelConfig(32, 32, 4, 2)),
        (2, 1, 100, 100, 64, torch.float16, "bshd", False, True, KernelConfig(32, 16, 4, 2)),
    ],
)
def test_int8(gen, device, rel_l2, b, h, sq, skv, d, dtype, layout, pv_fp8, masked, config):
    q, k, v = _qkv(gen, b, h, sq, skv, d, dtype, layout, device, structured=True)
    mask = None
    if masked:
        mask = _random_mask(gen, b, h, sq, skv, 32, 32, device, dense_q_range=(3, 20), dense_kv_range=(40, 45))
    out = _run(q, k, v, mask, layout=layout, quant="int8", pv_fp8=pv_fp8, config=config)
    assert rel_l2(out, _exact(q, k, v, mask, layout=layout)) < INT8_TOL
    emulated = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), None if mask is None else mask.to("cpu"),
                                        layout=layout, block_m=config.block_m, block_n=config.block_n,
                                        pv_fp8=pv_fp8)  # fmt: skip
    # Differences: P is rounded against the running (kernel) vs final (emulation) row max.
    assert rel_l2(out, emulated) < (2.5e-2 if pv_fp8 else 1e-2)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_int8_qk_matches_emulation_exactly(gen, device, rel_l2, layout):
    """fp32 inputs keep P and V unrounded, isolating the int8 QK^T path (scales, smoothing)."""
    q, k, v = _qkv(gen, 1, 2, 70, 90, 64, torch.float32, layout, device, structured=True)
    mask = _random_mask(gen, 1, 2, 70, 90, 32, 32, device, dense_kv_range=(10, 12))
    cfg = KernelConfig(32, 16, 4, 2)
    out = _run(q, k, v, mask, layout=layout, quant="int8", pv_fp8=False, config=cfg)
    emulated = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), mask.to("cpu"), layout=layout,
                                        block_m=32, block_n=16)  # fmt: skip
    assert rel_l2(out, emulated) < 1e-5


def test_fp8_pv_single_tile_matches_emulation(gen, device, rel_l2):
    """With one kv tile the running max is the final max, so FP8 P matches the emulation."""
    q, k, v = _qkv(gen, 1, 2, 40, 32, 64, torch.bfloat16, "bhsd", device, structured=True)
    cfg = KernelConfig(32, 32, 4, 2)
    out = _run(q, k, v, quant="int8", pv_fp8=True, config=cfg)
    emulated = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), block_m=32, block_n=32, pv_fp8=True)
    assert rel_l2(out, emulated) < 5e-3


def test_int8_empty_rows_are_zero(gen, device):
    q, k, v = _qkv(gen, 1, 1, 64, 64, 32, torch.bfloat16, "bhsd", device, structured=True)
    blocks = torch.tensor([[False, False], [True, False]])
    mask = BlockSparseMask.from_dense_block_mask(blocks.to(device), 32, 32, 64, 64)
    out = _run(q, k, v, mask, quant="int8", pv_fp8=True, config=KernelConfig(32, 32, 4, 2))
    assert (out[:, :, :32] == 0).all() and (out[:, :, 32:].abs().sum(-1) > 0).all()


# ---------------------------------------------------------------------- fallback and edge cases


def test_cpu_fallback_without_interpreter(gen, monkeypatch, rel_l2):
    """CPU tensors without TRITON_INTERPRET use the reference: same function."""
    q, k, v = _qkv(gen, 1, 2, 50, 50, 32, torch.bfloat16, "bhsd", "cpu")
    mask = _random_mask(gen, 1, 2, 50, 50, 16, 16, "cpu", dense_q_range=(0, 3))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out = _run(q, k, v, mask)
    assert rel_l2(out, _exact(q, k, v, mask)) < BF16_TOL
    out8 = _run(q, k, v, mask, quant="int8")
    assert rel_l2(out8, _exact(q, k, v, mask)) < INT8_TOL


def test_zero_length_sequences(device):
    q = torch.randn(1, 2, 0, 16, device=device)
    assert sparse_flash_attention(q, q, q).shape == (1, 2, 0, 16)
    q = torch.randn(1, 2, 5, 16, device=device)
    kv = torch.randn(1, 2, 0, 16, device=device)
    assert (sparse_flash_attention(q, kv, kv) == 0).all()


# ---------------------------------------------------------------------- bad input


def _t(*shape, dtype=torch.bfloat16):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((_t(2, 16, 8), _t(1, 2, 16, 8), _t(1, 2, 16, 8)), {}, r"q must be 4-D \[B, H, S, D\]"),
        ((_t(1, 2, 16, 8), _t(1, 4, 16, 8), _t(1, 4, 16, 8)), {}, "k has 4 heads but q has 2"),
        ((_t(1, 16, 2, 8), _t(1, 16, 4, 8), _t(1, 16, 4, 8)), dict(layout="bshd"), "k has 4 heads but q has 2"),
        ((_t(1, 2, 16, 8), _t(1, 2, 16, 16), _t(1, 2, 16, 16)), {}, "k has head dim 16 but q has 8"),
        ((_t(1, 2, 16, 8), _t(1, 2, 16, 8), _t(1, 2, 12, 8)), {}, "v has sequence length 12 but k has 16"),
        ((_t(2, 2, 16, 8), _t(1, 2, 16, 8), _t(1, 2, 16, 8)), {}, "k has batch 1 but q has 2"),
        ((_t(1, 2, 16, 256),) * 3, {}, r"head dim must be in \[1, 128\]"),
        ((_t(1, 2, 16, 8, dtype=torch.float64),) * 3, {}, "supported: float16, bfloat16, float32"),
        ((_t(1, 2, 16, 8), _t(1, 2, 16, 8, dtype=torch.float16), _t(1, 2, 16, 8)), {}, "must share a dtype"),
        ((_t(1, 2, 16, 8),) * 3, dict(layout="sbhd"), "layout must be one of"),
        ((_t(1, 2, 16, 8),) * 3, dict(quant="fp4"), "quant must be one of"),
        ((_t(1, 2, 16, 8),) * 3, dict(out=_t(1, 2, 16, 4)), "out must be a tensor of shape"),
        ((_t(1, 2, 16, 8),) * 3, dict(config="big"), "config must be a KernelConfig"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparse_flash_attention(*args, **kwargs)


def test_bad_mask():
    q = _t(2, 2, 40, 16)
    with pytest.raises(ValueError, match="mask was built for q_len=48, kv_len=40"):
        sparse_flash_attention(q, q, q, BlockSparseMask.full(48, 40, 16, 16))
    per_batch = BlockSparseMask.from_dense_block_mask(torch.ones(3, 1, 3, 3, dtype=torch.bool), 16, 16, 40, 40)
    with pytest.raises(ValueError, match=r"mask has batch/heads \(3, 1\)"):
        sparse_flash_attention(q, q, q, per_batch)
    with pytest.raises(ValueError, match="must divide the mask blocks"):
        sparse_flash_attention(q, q, q, BlockSparseMask.full(40, 40, 16, 16), config=KernelConfig(32, 16, 4, 2))
    with pytest.raises(ValueError, match="mask must be a BlockSparseMask"):
        sparse_flash_attention(q, q, q, torch.ones(40, 40, dtype=torch.bool))


# ---------------------------------------------------------------------- randomized sweep


def _sweep_case(case: int) -> dict:
    """Deterministic random parameters for sweep case ``case`` (the data stay fresh)."""
    rnd = random.Random(case)
    sq = rnd.choice([1, 7, 16, 31, 64, 100, 129, 200, 300])
    skv = sq if rnd.random() < 0.5 else rnd.choice([1, 17, 48, 90, 130, 257, 300])
    bm, bn = rnd.choice([16, 32, 64]), rnd.choice([16, 32, 64])
    tile_m = rnd.choice([t for t in (16, 32, 64) if bm % t == 0])
    tile_n = rnd.choice([t for t in (16, 32, 64) if bn % t == 0])
    ranges = {}
    if rnd.random() < 0.5:
        start = rnd.randrange(0, sq)
        ranges["dense_q_range"] = (start, rnd.randrange(start, sq + 1))
    if rnd.random() < 0.5:
        start = rnd.randrange(0, skv)
        ranges["dense_kv_range"] = (start, rnd.randrange(start, skv + 1))
    return dict(
        b=rnd.choice([1, 2]), h=rnd.choice([1, 2]), sq=sq, skv=skv,
        d=rnd.choice([16, 32, 64, 96, 128]),
        dtype=rnd.choice([torch.bfloat16, torch.float16]),
        layout=rnd.choice(["bhsd", "bshd"]),
        masked=rnd.random() < 0.7, bm=bm, bn=bn, ranges=ranges, per_head=rnd.random() < 0.5,
        config=KernelConfig(tile_m, tile_n, 4, 2),
        quant=rnd.choice(["none", "none", "int8"]), pv_fp8=rnd.random() < 0.5,
    )  # fmt: skip


@pytest.mark.parametrize("case", range(32))
def test_random_sweep(gen, device, rel_l2, case):
    c = _sweep_case(case)
    q, k, v = _qkv(gen, c["b"], c["h"], c["sq"], c["skv"], c["d"], c["dtype"], c["layout"], device,
                   structured=c["quant"] == "int8")  # fmt: skip
    mask = None
    if c["masked"]:
        mh = c["h"] if c["per_head"] else 1
        mask = _random_mask(gen, 1, mh, c["sq"], c["skv"], c["bm"], c["bn"], device, **c["ranges"])
    out = _run(q, k, v, mask, layout=c["layout"], quant=c["quant"], pv_fp8=c["pv_fp8"], config=c["config"])
    tol = INT8_TOL if c["quant"] == "int8" else BF16_TOL
    assert rel_l2(out, _exact(q, k, v, mask, layout=c["layout"])) < tol
