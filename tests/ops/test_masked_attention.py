"""Masked attention carried by the op (issue 13, first part): SDPA's attn_mask travels to
`ditaccel::attention` unchanged, the plan names its kind; dense plans with a mask are exact.
Masks composed with the kernel, 8-bit and sparse plans: test_mask_composition.py."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from ditcompile import explain
from ditcompile.graph.attention_match import classify_mask
from ditcompile.ops import run_plan
from ditcompile.plans import AttentionPlan, SparseSpec
from ditcompile.plans.codec import parse_plan

RNG = random.Random()


def reference(q, k, v, mask, scale=None):
    """fp64 masked attention by its definition ([B, H, S, D]); a row with no allowed key -> 0."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.double()
    row_max = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max))
    den = p.sum(-1, keepdim=True)
    return torch.where(den == 0, torch.zeros_like(p), p / den.clamp_min(1e-300)) @ v


def _qkv(b, h, sq, skv, d, gen):
    return (torch.randn(b, h, sq, d, generator=gen), torch.randn(b, h, skv, d, generator=gen),
            torch.randn(b, h, skv, d, generator=gen))


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("kind", ["key_padding_bool", "key_padding_float", "dense_bool"])
def test_run_plan_with_masks_matches_fp64(layout, kind):
    gen = torch.Generator().manual_seed(RNG.randrange(2**31))
    b, h, sq, skv, d = 2, RNG.randint(1, 3), RNG.randint(3, 20), RNG.randint(3, 20), 8
    q, k, v = _qkv(b, h, sq, skv, d, gen)
    if kind == "dense_bool":
        mask = torch.rand(b, 1, sq, skv, generator=gen) > 0.4
        mask[0, 0, 1] = False  # a fully masked query row: SDPA (torch 2.13) gives 0, no NaN
    else:
        valid = torch.tensor([skv, RNG.randint(1, skv - 1)])
        mask = (torch.arange(skv)[None] < valid[:, None])[:, None, None, :]  # [B, 1, 1, Skv]
        if kind == "key_padding_float":
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    plan_kind = "dense" if kind == "dense_bool" else "key_padding"
    plan = AttentionPlan(site_path="t", mask=plan_kind)
    args = [t if layout == "bhsd" else t.transpose(1, 2).contiguous() for t in (q, k, v)]
    out = run_plan(*args, layout, None, False, plan, None, mask)
    out = out if layout == "bhsd" else out.transpose(1, 2)
    expected = reference(q, k, v, mask)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    if kind == "dense_bool":
        assert (out[0, :, 1] == 0).all()


def test_mask_and_plan_must_agree():
    q = k = v = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="plan mask 'none' but attn_mask given"):
        run_plan(q, k, v, "bhsd", None, False, AttentionPlan(), None, torch.ones(1, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="plan mask 'key_padding' but attn_mask missing"):
        run_plan(q, k, v, "bhsd", None, False, AttentionPlan(mask="key_padding"))


def test_plan_mask_field():
    assert "mask" not in AttentionPlan(site_path="a").to_json()  # plans without a mask keep their JSON
    plan = AttentionPlan(site_path="a", mask="key_padding")
    assert parse_plan(plan.to_json()) == plan and plan.describe() == "dense/sdpa+key-padding mask"
    with pytest.raises(ValueError, match="mask 'causal' is not one of"):
        AttentionPlan(mask="causal")
    spec = SparseSpec(policy="radial", params_json="{}", grid=(2, 4, 4), text_position="", text_length=0,
                      block_size=16)
    sparse = AttentionPlan(backend="triton", sparse=spec, mask="key_padding")  # masks compose with every plan
    assert parse_plan(sparse.to_json()) == sparse and sparse.describe() == "sparse/radial+key-padding mask"
    assert AttentionPlan(backend="triton", quant="int8", mask="dense").describe() == "dense/triton/int8+dense mask"


class Joint(torch.nn.Module):
    """Joint attention over video + padded text with a [B, 1, 1, S] bool key mask, HunyuanVideo-style."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.qkv, self.heads = torch.nn.Linear(dim, 3 * dim), heads

    def forward(self, x, key_mask):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, -1).unbind(2)  # [B, S, H, D]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=key_mask[:, None, None, :])
        return out.transpose(1, 2).reshape(b, s, -1)


@pytest.mark.parametrize("options, plan, tol", [
    ({}, "dense/sdpa+key-padding mask", 1e-5),
    ({"attention.quant": "int8"}, "dense/triton/int8+key-padding mask", 4e-2),  # 8-bit with the padding
])
def test_compiled_masked_site_is_rewritten(options, plan, tol):
    torch.manual_seed(RNG.randrange(2**31))
    model = Joint().eval()
    x = torch.randn(2, 12, 32)
    key_mask = torch.arange(12)[None] < torch.tensor([[12], [7]])
    report = explain(model, x, key_mask, options={"compiler": "eager", **options})
    text = report.format()
    assert "1 rewritten" in text and plan in text
    with torch.no_grad():
        ref = model(x, key_mask)
        compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True, **options})
        out = compiled(x, key_mask)
    if tol == 1e-5:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    else:  # relative L2 of the approximate plan against eager (which masks the padded keys)
        assert float((out - ref).norm() / ref.norm()) < tol


def test_masked_gradients_equal_eager():
    torch.manual_seed(RNG.randrange(2**31))
    model = Joint()
    x = torch.randn(2, 10, 32, requires_grad=True)
    key_mask = torch.arange(10)[None] < torch.tensor([[10], [4]])
    model(x, key_mask).square().sum().backward()
    ref = x.grad.clone()
    x.grad = None
    torch.compile(model, backend="ditaccel", options={"compiler": "eager"})(x, key_mask).square().sum().backward()
    torch.testing.assert_close(x.grad, ref, rtol=1e-5, atol=1e-6)


def test_classify_mask_shapes():
    import torch.fx as fx

    graph = fx.Graph()
    for shape, dtype, kind in [((2, 1, 1, 9), torch.bool, "key_padding"), ((1, 9), torch.float32, "key_padding"),
                               ((2, 1, 5, 9), torch.bool, "dense"), ((2, 3, 1, 9), torch.float16, "dense")]:
        node = graph.placeholder(f"m{len(graph.nodes)}")
        node.meta["example_value"] = torch.zeros(shape, dtype=dtype)
        assert classify_mask(node) == (kind, None)
    node = graph.placeholder("int_mask")
    node.meta["example_value"] = torch.zeros(2, 1, 1, 9, dtype=torch.int64)
    assert classify_mask(node)[1] == "attn_mask of dtype torch.int64 (SDPA takes bool or float masks)"


class TrainedBias(torch.nn.Module):
    """An additive attention bias that is a parameter: SDPA differentiates it; the op would not."""

    def __init__(self, s=6, dim=32):
        super().__init__()
        self.qkv, self.bias = torch.nn.Linear(dim, 3 * dim), torch.nn.Parameter(torch.randn(1, 1, s, s) * 0.1)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, 2, -1).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=self.bias)
        return out.transpose(1, 2).reshape(b, s, -1)


def test_a_trained_bias_keeps_sdpa_and_its_gradient():
    torch.manual_seed(RNG.randrange(2**31))
    model, x = TrainedBias(), torch.randn(2, 6, 32)
    text = explain(model, x, options={"compiler": "eager"}).format()
    assert "0 rewritten" in text and "attn_mask requires grad" in text
    model(x).square().sum().backward()
    ref = model.bias.grad.clone()
    model.bias.grad = None
    torch.compile(model, backend="ditaccel", options={"compiler": "eager"})(x).square().sum().backward()
    assert model.bias.grad is not None
    torch.testing.assert_close(model.bias.grad, ref, rtol=1e-5, atol=1e-6)
