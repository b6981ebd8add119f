"""All pass families together (sparse + 8-bit attention + step cache), through Inductor."""
import pytest
import torch

import ditcompile
from ditcompile.demo import denoise
from tests.models.zoo import get_tiny_model, run_model

pytest.importorskip("triton")

OPTIONS = {"preset": "wan2.1", "strict": True, "sparse.enabled": True, "sparse.block_size": 16,
           "sparse.dense_steps": 1, "sparse.dense_blocks": [], "attention.quant": "int8",
           "cache.enabled": True, "cache.policy": "fbcache", "cache.threshold": 0.15, "cache.warmup_steps": 0}


def _run(model, inputs, compiler):
    torch._dynamo.reset()
    ditcompile.new_generation(model)
    compiled = torch.compile(model, backend="ditaccel", options={**OPTIONS, "compiler": compiler})
    with torch.no_grad():
        out = denoise(lambda kw: run_model(compiled, kw), inputs, 8)
    cache = ditcompile.cache_stats(model)[0]["current"][0]["pattern"]
    sparse = {k: (v["sparse_calls"], v["dense_calls"]) for k, v in ditcompile.sparse_stats(model)[0]["current"].items()}
    return out, cache, sparse


@pytest.mark.inductor
def test_sparse_int8_and_cache_compose_and_inductor_matches_the_eager_graph():
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    with torch.no_grad():
        reference = denoise(lambda kw: run_model(model, kw), inputs, 8)
    eager_graph, eager_cache, eager_sparse = _run(model, inputs, "eager")
    inductor, cache, sparse = _run(model, inputs, "inductor")
    assert False in cache and cache == eager_cache          # the cache really skipped steps
    assert sparse == eager_sparse and all(s > 0 for s, _ in sparse.values())  # sparse ran after warm-up
    torch.testing.assert_close(inductor, eager_graph, rtol=1e-4, atol=1e-4)
    error = ((inductor - reference).norm() / reference.norm()).item()
    assert 0 < error < 0.05  # approximate, and close to the dense eager model


@pytest.mark.inductor
def test_sparse_plans_with_warmup_through_inductor_match_the_eager_graph():
    """The step-tracking wrapper around an Inductor-compiled graph (no step cache)."""
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=2)
    options = {"preset": "wan2.1", "strict": True, "sparse.enabled": True, "sparse.block_size": 16,
               "sparse.dense_steps": 2, "sparse.dense_blocks": []}
    outputs, stats = {}, {}
    for compiler in ("eager", "inductor"):
        torch._dynamo.reset()
        ditcompile.new_generation(model)
        compiled = torch.compile(model, backend="ditaccel", options={**options, "compiler": compiler})
        with torch.no_grad():
            outputs[compiler] = denoise(lambda kw: run_model(compiled, kw), inputs, 5)
        stats[compiler] = {k: (v["sparse_calls"], v["dense_calls"])
                           for k, v in ditcompile.sparse_stats(model)[0]["current"].items()}
    assert stats["inductor"] == stats["eager"] == {"blocks.0.attn1": (3, 2), "blocks.1.attn1": (3, 2)}
    torch.testing.assert_close(outputs["inductor"], outputs["eager"], rtol=1e-4, atol=1e-5)
