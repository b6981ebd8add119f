"""The one implementation decision (select_impl), the warn-once helper and clear_caches()."""
import logging

import pytest
import torch

import ditcompile
from ditcompile.masks import generate_radial_mask
from ditcompile.ops.select import REFERENCE, SDPA, WarnOnce, select_impl
from ditcompile.plans import AttentionPlan, parse_plan


def _qkv(d=32, dtype=torch.float32):
    q = torch.randn(1, 2, 20, d, dtype=dtype)
    return q, q.clone(), q.clone()


@pytest.mark.parametrize("backend, causal, block_sparse, d, dtype, impl, fallback", [
    ("sdpa", False, False, 32, torch.float32, SDPA, None),
    ("sdpa", True, False, 32, torch.float32, SDPA, None),
    ("triton", False, False, 32, torch.float32, REFERENCE, None),   # the CPU runs the kernel's reference
    ("triton", True, False, 32, torch.float32, SDPA, "causal attention"),
    ("triton", False, False, 160, torch.float32, SDPA, "head dim 160 > 128"),
    ("triton", False, False, 32, torch.float64, SDPA, "dtype torch.float64"),
    ("triton", False, True, 32, torch.float32, REFERENCE, None),
    ("triton", False, True, 160, torch.float32, REFERENCE, None),   # block-sparse on the CPU: the reference
])
def test_select_impl_on_the_cpu(backend, causal, block_sparse, d, dtype, impl, fallback):
    q, k, v = _qkv(d, dtype)
    choice = select_impl(q, k, v, is_causal=causal, backend=backend, block_sparse=block_sparse)
    assert (choice.impl, choice.fallback) == (impl, fallback)


def test_warn_once_per_key_bounded_and_clearable(caplog):
    warn = WarnOnce(limit=2)
    with caplog.at_level(logging.WARNING, logger="ditcompile"):
        for key in ("a", "a", "b", "a"):
            warn((key,), "fallback %s", key)
        assert [r.getMessage() for r in caplog.records] == ["fallback a", "fallback b"]
        warn(("c",), "fallback %s", "c")  # a third key: the bounded set starts over
        warn(("a",), "fallback %s", "a")
        warn.clear()
        warn(("c",), "fallback %s", "c")
    assert [r.getMessage() for r in caplog.records][2:] == ["fallback c", "fallback a", "fallback c"]


def test_clear_caches_drops_patterns_and_parsed_plans():
    pattern = generate_radial_mask((2, 4, 8), block_m=16, block_n=16)
    assert generate_radial_mask((2, 4, 8), block_m=16, block_n=16) is pattern  # cached
    parse_plan(AttentionPlan(site_path="cache-test").to_json())
    assert parse_plan.cache_info().currsize > 0
    ditcompile.clear_caches()
    assert parse_plan.cache_info().currsize == 0
    again = generate_radial_mask((2, 4, 8), block_m=16, block_n=16)
    assert again is not pattern and torch.equal(again.mask.to_dense_block_mask(), pattern.mask.to_dense_block_mask())
