"""Masks composed with the kernel paths (issue 13): key padding and block-causal masks under the
Triton kernel's dense, 8-bit and sparse plans (its torch reference on the CPU), against float64
attention by definition with the combined token-level mask. Fresh random data per test."""
import random

import pytest
import torch

from ditcompile.kernels.attention.reference import int8_attention_reference, key_bias_from_mask
from ditcompile.masks import get_policy
from ditcompile.ops import run_plan
from ditcompile.ops.impl.masks import CallMask, uniform_tiles
from ditcompile.ops.select import warn_once
from ditcompile.plans import AttentionPlan, SparseSpec

from .test_masked_attention import reference

RNG = random.Random()


def _gen():
    return torch.Generator().manual_seed(RNG.randrange(2**31))


def _key_padding(b, skv, valid_min):
    valid = torch.tensor([skv] + [RNG.randint(valid_min, skv - 1) for _ in range(b - 1)])
    return (torch.arange(skv)[None] < valid[:, None])[:, None, None, :]  # bool [B, 1, 1, Skv]


def _block_causal(frames, per_frame):
    """SkyReels-V2 style: token i attends token j when frame(j) <= frame(i); bool [1, 1, S, S]."""
    frame = torch.arange(frames * per_frame) // per_frame
    return (frame[None, :] <= frame[:, None])[None, None]


def _rel_l2(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_dense_kernel_plan_with_key_padding(quant):
    gen = _gen()
    b, h, s, d = 2, 2, RNG.randint(40, 70), 32
    q, k, v = (torch.randn(b, h, s, d, generator=gen) for _ in range(3))
    mask = _key_padding(b, s, 5)
    plan = AttentionPlan(site_path="t", backend="triton", quant=quant, mask="key_padding")
    out = run_plan(q, k, v, "bhsd", None, False, plan, None, mask)
    exact = reference(q, k, v, mask)
    if quant == "none":
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-6)
    else:
        assert _rel_l2(out, exact) < 4e-2
        emulated = int8_attention_reference(q, k, v, key_bias=key_bias_from_mask(mask))
        torch.testing.assert_close(out, emulated)


def _radial_spec(frames, height, width, text, block=16):
    return SparseSpec(policy="radial", params_json="{}", grid=(frames, height, width),
                      text_position="after" if text else "", text_length=text, block_size=block)


def _pattern_allowed(spec):
    """bool [S, S] in the original token order: what the plan's (only) pattern lets token i attend."""
    policy = get_policy(spec.policy)
    pattern = policy.static_choice(spec.token_layout, spec.block_size, spec.policy_params, "cpu").patterns[0]
    seq = pattern.seq_len
    allowed = pattern.mask.allowed(torch.arange(seq), torch.arange(seq))[0, 0]  # permuted order
    if pattern.permutation is None:
        return allowed
    inverse = pattern.inverse_permutation  # token t sits at position inverse[t]
    return allowed[inverse][:, inverse]


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_sparse_plan_with_text_key_padding(layout):
    """HunyuanVideo's case: joint attention over video + padded text under a sparse plan; the text
    keys past each prompt's length stay masked in every tile."""
    gen = _gen()
    frames, height, width, text = 4, 4, 8, 24
    spec = _radial_spec(frames, height, width, text)
    s, b, h, d = frames * height * width + text, 2, 2, 16
    q, k, v = (torch.randn(b, h, s, d, generator=gen) for _ in range(3))
    mask = _key_padding(b, s, s - text + 1)  # padding only inside the text (after the video)
    plan = AttentionPlan(site_path="t", backend="triton", sparse=spec, mask="key_padding")
    args = [t if layout == "bhsd" else t.transpose(1, 2).contiguous() for t in (q, k, v)]
    out = run_plan(*args, layout, None, False, plan, None, mask)
    out = out if layout == "bhsd" else out.transpose(1, 2)
    combined = _pattern_allowed(spec)[None, None] & mask  # [B, 1, S, S]
    assert not combined.all()  # the pattern is really sparse and the padding really masks
    torch.testing.assert_close(out.double(), reference(q, k, v, combined), rtol=1e-5, atol=1e-6)


def test_dense_kernel_plan_with_block_causal_mask():
    """SkyReels-V2 diffusion forcing: a block-causal mask made of whole tiles runs block-sparse."""
    gen = _gen()
    frames, per_frame = 4, 32
    mask = _block_causal(frames, per_frame)
    tiles = uniform_tiles(mask, frames * per_frame, frames * per_frame, 32)
    assert tiles is not None and not tiles.all()  # the kernel gets a block mask, not SDPA
    q, k, v = (torch.randn(1, 2, frames * per_frame, 16, generator=gen) for _ in range(3))
    plan = AttentionPlan(site_path="t", backend="triton", mask="dense")
    out = run_plan(q, k, v, "bhsd", None, False, plan, None, mask)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_sparse_plan_with_block_causal_mask():
    gen = _gen()
    frames, height, width = 8, 4, 4  # one 16-token block per frame
    spec = _radial_spec(frames, height, width, 0)
    mask = _block_causal(frames, height * width)
    s = frames * height * width
    q, k, v = (torch.randn(2, 2, s, 16, generator=gen) for _ in range(3))
    plan = AttentionPlan(site_path="t", backend="triton", sparse=spec, mask="dense")
    out = run_plan(q, k, v, "bhsd", None, False, plan, None, mask)
    combined = _pattern_allowed(spec)[None, None] & mask
    assert not combined.all() and not (combined == mask).all()  # both the pattern and the mask cut
    torch.testing.assert_close(out.double(), reference(q, k, v, combined), rtol=1e-5, atol=1e-6)


def test_irregular_dense_mask_stays_exact(caplog):
    """A mask whose tiles are not uniform runs SDPA with the mask, exactly, and says so once."""
    gen = _gen()
    s = 48
    mask = torch.rand(1, 1, s, s, generator=gen) > 0.3
    q, k, v = (torch.randn(1, 2, s, 16, generator=gen) for _ in range(3))
    warn_once.clear()
    with caplog.at_level("WARNING", logger="ditcompile"):
        out = run_plan(q, k, v, "bhsd", None, False, AttentionPlan(site_path="irregular", backend="triton",
                                                                       quant="int8", mask="dense"), None, mask)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask), rtol=1e-5, atol=1e-6)
    assert "runs SDPA with its mask (exact)" in caplog.text and "irregular" in caplog.text


def test_uniform_tiles_recovers_blocks_and_rejects_partial_tiles():
    gen = _gen()
    blocks = torch.rand(2, 1, 3, 4, generator=gen) > 0.5
    q_len, kv_len = 3 * 16 - 5, 4 * 16 - 9  # ragged last tiles
    mask = blocks.repeat_interleave(16, 2).repeat_interleave(16, 3)[..., :q_len, :kv_len]
    assert torch.equal(uniform_tiles(mask, q_len, kv_len, 16), blocks)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.equal(uniform_tiles(additive, q_len, kv_len, 16), blocks)
    assert uniform_tiles(mask, q_len, kv_len, 32) is None or blocks.reshape(-1).all() or not blocks.any()
    broken = mask.clone()
    broken[0, 0, 0, 0] = ~broken[0, 0, 0, 0]
    assert uniform_tiles(broken, q_len, kv_len, 16) is None
    assert uniform_tiles(additive * 0.5 + 1.0, q_len, kv_len, 16) is None  # finite bias values: not a mask


def test_block_mask_cache_sees_in_place_changes():
    mask = _block_causal(4, 16)
    call = CallMask.of("dense", mask)
    first = call.block_mask(64, 64, 16)
    assert first is not None and first is call.block_mask(64, 64, 16)  # cached for the same tensor
    mask[0, 0, 0, 63] = True  # the model changed its mask in place: the old conversion must not be used
    assert call.block_mask(64, 64, 16) is None
