"""What the approximate plans do under autograd: the step cache computes every step that
autograd records (exact gradients, warned once), sparse and int8 attention give the gradient of
exact attention (straight-through, warned once per site)."""
import copy
import json
import logging

import pytest
import torch

import ditcompile
from ditcompile.ops import attention_op
from ditcompile.plans import AttentionPlan, SparseSpec
from tests.models.zoo import get_tiny_model, run_model

pytest.importorskip("diffusers")
from ditcompile.demo import denoise  # noqa: E402


def _loss_and_grads(call, model, inputs, weights):
    """Loss of a 3-step denoising loop run with autograd, and d loss / d parameters."""
    latents = denoise(call, inputs, 3)
    loss = (latents * weights).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def test_step_cache_under_autograd_computes_every_step_and_gives_exact_gradients(caplog):
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=3)
    reference = copy.deepcopy(model)
    options = {"preset": spec.preset, "compiler": "eager", "strict": True, "cache.enabled": True,
               "cache.policy": "fbcache", "cache.threshold": 1e6, "cache.warmup_steps": 0}  # would reuse every step
    compiled = torch.compile(model, backend="ditaccel", options=options)
    call = lambda kw: run_model(compiled, kw)  # noqa: E731

    with torch.no_grad():  # inference: the cache reuses steps (what the threshold asks)
        denoise(call, inputs, 3)
    (stats,) = ditcompile.cache_stats(model)
    assert stats["current"][0]["reused"] == 2

    weights = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(5))
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        loss, grads = _loss_and_grads(call, model, inputs, weights)
        _loss_and_grads(call, model, inputs, weights)
    want_loss, want = _loss_and_grads(lambda kw: run_model(reference, kw), reference, inputs, weights)
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-4)
    compared = 0
    for g, w in zip(grads, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)
            compared += 1
    assert compared > 10
    # the calls autograd recorded (a graph of their own: grad mode is guarded) all computed
    graded = [s["current"][0] for s in ditcompile.cache_stats(model)[1:]]
    assert sum(s["reused"] for s in graded) == 0 and sum(s["computed"] for s in graded) == 3
    warnings = [r.getMessage() for r in caplog.records if "autograd is recording" in r.getMessage()]
    assert len(warnings) == 1 and "torch.no_grad()" in warnings[0]


def _qkv(seed, shape=(1, 2, 128, 16)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).requires_grad_(True) for _ in range(3)]


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_sparse_attention_backward_is_the_exact_gradient_and_says_so_once(kind, caplog):
    sparse = SparseSpec(policy="tile", params_json=json.dumps({"tile_size": [1, 4, 4], "window": [1, 1, 1]}), grid=(4, 4, 8),
                        block_size=16) if kind == "sparse" else None
    plan = AttentionPlan(site_path=f"grad.{kind}", backend="triton" if sparse else "sdpa", sparse=sparse)
    q, k, v = _qkv(1)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        for _ in range(2):
            out = attention_op(q, k, v, "bhsd", None, False, plan.to_json())
            got = torch.autograd.grad(out, (q, k, v), grad_out)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    want = torch.autograd.grad(exact, (q, k, v), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    if kind == "sparse":
        assert (out - exact).abs().max() > 1e-3  # the forward really is approximate
    warnings = [r.getMessage() for r in caplog.records if "straight-through" in r.getMessage()]
    assert len(warnings) == (1 if kind == "sparse" else 0)
    if warnings:
        assert "sparse attention at grad.sparse" in warnings[0]


def test_which_plans_are_approximate():
    from ditcompile.ops.attention import approximate_kind

    assert approximate_kind(AttentionPlan()) is None
    assert approximate_kind(AttentionPlan(backend="triton", quant="int8")) == "int8"
    assert approximate_kind(AttentionPlan(backend="triton", sparse=SparseSpec(
        policy="radial", params_json="{}", grid=(2, 4, 4), block_size=16))) == "sparse"


def test_step_cache_with_inductor_gives_exact_gradients_on_repeated_backward():
    """backward(retain_graph=True) then backward again through the step cache's pieces compiled
    by Inductor: both equal eager gradients (chained compiled pieces gave a wrong second one)."""
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    reference = copy.deepcopy(model)
    latents = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(9))
    x = latents.clone().requires_grad_(True)
    run_model(reference, dict(inputs, hidden_states=x)).sum().backward()
    compiled = torch.compile(model, backend="ditaccel", options={"preset": spec.preset, "cache.enabled": True})
    torch._dynamo.reset()
    y = latents.clone().requires_grad_(True)
    out = run_model(compiled, dict(inputs, hidden_states=y))
    out.sum().backward(retain_graph=True)
    first, y.grad = y.grad, None
    out.sum().backward()
    torch._dynamo.reset()
    torch.testing.assert_close(first, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.grad, x.grad, rtol=1e-4, atol=1e-5)
