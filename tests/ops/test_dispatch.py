"""The op's run-time dispatch: which implementation runs a plan, and its fallbacks."""
import logging

import pytest
import torch

import ditcompile
from ditcompile import ops
from ditcompile.kernels.attention.flash_fwd import unsupported_reason
from ditcompile.ops.impl.exact import sdpa
from ditcompile.ops import attention_op
from tests.models.zoo import get_tiny_model, run_model
from ditcompile.plans import AttentionPlan

pytest.importorskip("triton")  # the plans under test name the Triton kernel (its reference runs on the CPU)


def _qkv(layout, seed, b=2, h=3, s=37, d=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (b, h, s, d) if layout == "bhsd" else (b, s, h, d)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    k = k + 3.0 * torch.randn(d, generator=g, dtype=torch.float64)  # a per-channel K offset (smoothing matters)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _exact(q, k, v, layout):
    return sdpa(q.double(), k.double(), v.double(), layout, None, False)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_triton_plan_on_cpu_runs_the_reference_and_matches_exact_attention(layout):
    q, k, v = _qkv(layout, seed=1)
    plan = AttentionPlan(backend="triton", site_path="t").to_json()
    out = attention_op(q, k, v, layout, None, False, plan)
    assert out.shape == q.shape and out.is_contiguous()
    assert _rel(out, _exact(q, k, v, layout)) < 1e-5


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("seq", [37, 128])  # 128: a whole number of quantization blocks (no padding copy)
def test_int8_plan_on_cpu_emulates_the_kernel_quantization(layout, seq):
    from ditcompile.kernels.attention.reference import int8_attention_reference

    q, k, v = _qkv(layout, seed=2, s=seq, dtype=torch.bfloat16)
    plan = AttentionPlan(backend="triton", quant="int8", site_path="t").to_json()
    out = attention_op(q, k, v, layout, None, False, plan)
    error = _rel(out, _exact(q, k, v, layout))
    assert 1e-4 < error < 4e-2  # quantized (not exact), within the 8-bit accuracy target
    torch.testing.assert_close(out, int8_attention_reference(q, k, v, None, layout=layout))


def test_unsupported_inputs_fall_back_to_sdpa_and_log_once(caplog):
    ops.clear_caches()
    q, k, v = _qkv("bhsd", seed=3)
    plan = AttentionPlan(backend="triton", site_path="blocks.0.attn1").to_json()
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        for _ in range(3):
            out = attention_op(q, k, v, "bhsd", None, True, plan)  # causal: not in the kernel
    torch.testing.assert_close(out, sdpa(q, k, v, "bhsd", None, True))
    messages = [r.getMessage() for r in caplog.records if "instead of the Triton kernel" in r.getMessage()]
    assert len(messages) == 1 and "blocks.0.attn1" in messages[0] and "causal" in messages[0]


def test_head_dim_above_the_kernel_limit_falls_back():
    q, k, v = _qkv("bhsd", seed=4, d=160)
    assert "head dim 160" in unsupported_reason(q, k, v, False)


def test_plan_rejects_quant_without_triton():
    with pytest.raises(ValueError, match="needs backend 'triton'"):
        AttentionPlan(backend="sdpa", quant="int8")
    with pytest.raises(ValueError, match="backend 'cudnn' is not one of"):
        AttentionPlan(backend="cudnn")


def test_int8_option_reaches_every_plan_and_stays_close_to_eager():
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    options = {"preset": "wan2.1", "attention.quant": "int8", "compiler": "eager", "strict": True}
    report = ditcompile.explain(model, **inputs, options=options)
    assert {row["plan"] for row in report.graphs[0].rows()} == {"dense/triton/int8"}
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options=options)
    with torch.no_grad():
        expected, got = run_model(model, inputs), run_model(compiled, inputs)
    error = _rel(got, expected)
    assert 0 < error < 5e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("quant", ["none", "int8"])
def test_triton_plan_on_cuda_runs_the_kernel(quant):
    q, k, v = (t.cuda() for t in _qkv("bshd", seed=5, d=64, s=300, dtype=torch.bfloat16))
    plan = AttentionPlan(backend="triton", quant=quant, site_path="t").to_json()
    out = attention_op(q, k, v, "bshd", None, False, plan)
    assert _rel(out, _exact(q, k, v, "bshd")) < (1e-2 if quant == "none" else 4e-2)
