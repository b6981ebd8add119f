"""BlockSparseMask: construction, validation, and exactness of the folded kernel schedule."""

from __future__ import annotations

import pytest
import torch

from ditcompile.kernels.block_mask import BlockSparseMask
from ditcompile.kernels.attention.reference import token_mask


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _random_blocks(gen, b, h, q_len, kv_len, bm, bn, p=0.5) -> torch.Tensor:
    """Random bool block mask with one empty and one full query-block row when possible."""
    nqb, nkb = _cdiv(q_len, bm), _cdiv(kv_len, bn)
    blocks = torch.rand(b, h, nqb, nkb, generator=gen) < p
    if nqb >= 2:
        blocks[..., 0, :] = False
        blocks[..., -1, :] = True
    return blocks


def _schedule_token_mask(mask: BlockSparseMask) -> torch.Tensor:
    """What the kernel computes, expanded to tokens: full tiles allow every in-bounds pair;
    partial tiles allow (flag or dense row or dense col) and in-bounds."""
    rows, cols = torch.arange(mask.q_len), torch.arange(mask.kv_len)
    qb, kb = rows // mask.block_m, cols // mask.block_n
    nkb = mask.num_kv_blocks

    def expand(num, idx):
        listed = torch.arange(idx.shape[-1]) < num[..., None].long()
        dense = torch.zeros(*num.shape, nkb + 1, dtype=torch.int64)
        src = torch.arange(1, idx.shape[-1] + 1).expand_as(idx)  # 1-based position in the list
        dense.scatter_(-1, torch.where(listed, idx.long(), nkb), torch.where(listed, src, 0))
        return dense[..., :nkb]  # [B, H, NQB, NKB]: position+1 or 0

    full = expand(mask.full_kv_num_blocks, mask.full_kv_indices) > 0
    pos = expand(mask.partial_kv_num_blocks, mask.partial_kv_indices)
    flags = torch.gather(mask.partial_kv_flags, -1, (pos - 1).clamp(min=0)) * (pos > 0)
    partial = pos > 0
    assert not (full & partial).any(), "a tile is both full and partial"
    full_t = full[:, :, qb][..., kb]
    part_t = partial[:, :, qb][..., kb]
    flag_t = flags[:, :, qb][..., kb] > 0
    q_dense = torch.zeros(mask.q_len, dtype=torch.bool)
    k_dense = torch.zeros(mask.kv_len, dtype=torch.bool)
    if mask.dense_q_range:
        q_dense[slice(*mask.dense_q_range)] = True
    if mask.dense_kv_range:
        k_dense[slice(*mask.dense_kv_range)] = True
    return full_t | (part_t & (flag_t | q_dense[:, None] | k_dense[None, :]))


def test_round_trip_and_sorted_lists(gen):
    blocks = _random_blocks(gen, 2, 3, 100, 70, 32, 16)
    mask = BlockSparseMask.from_dense_block_mask(blocks, 32, 16, 100, 70)
    assert mask.kv_num_blocks.dtype == torch.int32 and mask.kv_indices.dtype == torch.int32
    assert mask.kv_num_blocks.shape == (2, 3, 4) and mask.kv_indices.shape == (2, 3, 4, 5)
    assert torch.equal(mask.to_dense_block_mask(), blocks)
    assert torch.equal(mask.kv_num_blocks, blocks.sum(-1).int())
    rows = zip(mask.kv_num_blocks.flatten(), mask.kv_indices.flatten(0, 2), blocks.flatten(0, 2), strict=True)
    for row_num, row_idx, row in rows:
        listed = row_idx[: int(row_num)]
        assert torch.equal(listed.long(), torch.nonzero(row).flatten())  # ascending
    assert mask.density() == pytest.approx(blocks.float().mean().item())
    assert mask.shape == (2, 3, 100, 70)


def test_full_and_2d_input():
    mask = BlockSparseMask.full(33, 65, 16, 32)
    assert mask.kv_num_blocks.shape == (1, 1, 3) and mask.density() == 1.0
    assert torch.equal(mask.kv_indices[0, 0, 0], torch.arange(3, dtype=torch.int32))
    two_d = BlockSparseMask.from_dense_block_mask(torch.eye(3, dtype=torch.bool), 16, 32, 40, 70)
    assert two_d.kv_num_blocks.shape == (1, 1, 3)
    assert torch.equal(token_mask(two_d)[0, 0, 20], torch.arange(70) // 32 == 1)


def test_density_counts_dense_ranges():
    blocks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask = BlockSparseMask.from_dense_block_mask(blocks, 16, 16, 64, 64, dense_kv_range=(0, 20))
    assert mask.density() == pytest.approx(0.5)  # kv blocks 0 and 1 for every query block
    assert torch.equal(mask.schedule_block_mask()[0, 0, :, :2], torch.ones(4, 2, dtype=torch.bool))


@pytest.mark.parametrize(
    "q_len,kv_len,bm,bn,dq,dk,bh",
    [
        (100, 70, 32, 16, (5, 40), (50, 53), (1, 1)),  # unaligned text rows and cols, ragged both
        (64, 64, 16, 16, (0, 16), (0, 16), (2, 1)),  # aligned text prefix
        (97, 131, 32, 32, (90, 97), None, (1, 2)),  # text rows at the end, ragged
        (50, 50, 16, 32, None, (49, 50), (2, 2)),  # single text key in the ragged last block
        (48, 48, 16, 16, (0, 48), None, (1, 1)),  # every row dense
        (40, 40, 16, 16, (7, 7), (3, 3), (1, 1)),  # empty ranges
        (33, 1, 16, 16, None, None, (1, 1)),  # single key
    ],
)
def test_schedule_is_token_exact(gen, q_len, kv_len, bm, bn, dq, dk, bh):
    blocks = _random_blocks(gen, *bh, q_len, kv_len, bm, bn, p=0.4)
    mask = BlockSparseMask.from_dense_block_mask(blocks, bm, bn, q_len, kv_len, dense_q_range=dq, dense_kv_range=dk)
    expected = token_mask(mask)
    assert torch.equal(_schedule_token_mask(mask), expected.expand_as(_schedule_token_mask(mask)))
    # Dense-range semantics, directly.
    if dq and dq[0] < dq[1]:
        assert expected[:, :, dq[0] : dq[1]].all()
    if dk and dk[0] < dk[1]:
        assert expected[..., dk[0] : dk[1]].all()
    # The ragged last kv block is never in the full list.
    if kv_len % bn:
        last = mask.num_kv_blocks - 1
        listed = torch.arange(mask.full_kv_indices.shape[-1]) < mask.full_kv_num_blocks[..., None]
        assert not ((mask.full_kv_indices == last) & listed).any()


def test_to_device_keeps_schedule():
    mask = BlockSparseMask.full(40, 40, 16, 16).to("cpu")
    assert mask.full_kv_num_blocks.shape == (1, 1, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_m=24), "block_m must be a positive multiple of 16"),
        (dict(kv_num_blocks=torch.zeros(1, 1, 2, dtype=torch.int64)), "kv_num_blocks must be an int32"),
        (dict(kv_indices=torch.zeros(1, 1, 2, dtype=torch.int32)), "kv_indices must be an int32 tensor of shape"),
        (dict(q_len=100), "query blocks"),
        (dict(kv_indices=torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.int32)), "strictly increasing"),
        (dict(kv_indices=torch.tensor([[[[0, 5], [0, 1]]]], dtype=torch.int32)), "outside"),
        (dict(kv_num_blocks=torch.tensor([[[3, 1]]], dtype=torch.int32)), "kv_num_blocks must lie"),
        (dict(dense_q_range=(10, 40)), "dense_q_range"),
        (dict(dense_kv_range=(5, 2)), "dense_kv_range"),
    ],
)
def test_validation_errors(kwargs, match):
    base = dict(
        kv_num_blocks=torch.tensor([[[2, 1]]], dtype=torch.int32),
        kv_indices=torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32),
        block_m=16,
        block_n=16,
        q_len=32,
        kv_len=32,
    )
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        BlockSparseMask(**base)


def test_from_dense_block_mask_errors():
    with pytest.raises(ValueError, match="torch.bool"):
        BlockSparseMask.from_dense_block_mask(torch.ones(2, 2), 16, 16, 32, 32)
    with pytest.raises(ValueError, match=r"need \(NQB, NKB\) = \(2, 3\)"):
        BlockSparseMask.from_dense_block_mask(torch.ones(2, 2, dtype=torch.bool), 16, 16, 32, 40)
