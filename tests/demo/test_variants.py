"""The demo's variant list: which rows run, and that each enables exactly its families."""
import random

import pytest

from ditcompile.config import resolve_config
from ditcompile.config import ConfigError
from ditcompile.demo.variants import (QUICK_KEYS, VARIANT_KEYS, as_run, demo_variants, dense_warmup_steps,
                                         select_variants)

RNG = random.Random()


def test_default_and_quick_lists():
    steps = RNG.randint(1, 50)
    assert [v.key for v in select_variants(None, steps)] == list(VARIANT_KEYS)
    assert [v.key for v in select_variants(None, steps, quick=True)] == list(QUICK_KEYS)
    assert "compile" not in QUICK_KEYS and "eager" in QUICK_KEYS


def test_subset_keeps_table_order_and_always_has_eager():
    keys = RNG.sample([k for k in VARIANT_KEYS if k != "eager"], 2)
    chosen = [v.key for v in select_variants(keys, 10)]
    assert chosen[0] == "eager"
    assert chosen[1:] == [k for k in VARIANT_KEYS if k in keys]


@pytest.mark.parametrize("keys, message", [(["cache", "nope"], "unknown variant 'nope'"),
                                           (["int8", "int8"], "variant 'int8' is given twice"),
                                           ("cache", "variants must be a list of keys"),
                                           (3, "variants must be a list of keys")])
def test_bad_keys(keys, message):
    with pytest.raises(ValueError, match=message):
        select_variants(keys, 10)


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 23])
def test_each_variant_enables_exactly_its_families(steps):
    """Resolved through the real config: the options do what the row's title says."""
    for variant in demo_variants(steps).values():
        if variant.compiler != "ditaccel":
            assert variant.options == {} and variant.families == ()
            continue
        cfg = resolve_config(variant.options)
        assert cfg.cache.enabled == variant.cached
        assert cfg.sparse.enabled == variant.sparse
        assert cfg.attention.quant == variant.quant
        assert cfg.strict, "a failing pass must not show as a silently dense row"
        if variant.sparse:
            assert cfg.sparse.dense_steps == dense_warmup_steps(steps)
            assert 1 <= cfg.sparse.dense_steps <= max(1, steps)
            assert variant.key != "sparse" or f"({cfg.sparse.dense_steps} dense)" in variant.title


def test_dense_warmup_is_a_fifth_of_the_steps():
    for steps in range(1, 60):
        assert dense_warmup_steps(steps) == max(1, round(steps / 5))


def test_as_run_names_rows_after_what_the_options_enable():
    """An override that turns a family on or off, or changes the warm-up, shows in the row."""
    variants = demo_variants(10)
    run, cfg = as_run(variants["cache"], "eager", {"sparse.enabled": True, "sparse.block_size": 16})
    assert run.families == ("cache", "sparse") and run.sparse and cfg.sparse.enabled
    assert run.title == "ditaccel step cache + sparse (0 dense)"
    run, _ = as_run(variants["sparse"], "inductor", {"sparse.dense_steps": 0})
    assert run.title == "ditaccel sparse (0 dense)" and run.options["compiler"] == "inductor"
    run, _ = as_run(variants["all"], "eager", {"attention.quant": "none", "cache.enabled": False})
    assert run.families == ("sparse",) and run.quant == "none" and not run.cached
    run, _ = as_run(variants["int8"], "eager", {"attention.quant": "none"})
    assert run.title == "ditaccel dense" and run.families == ()
    assert as_run(variants["eager"], "eager", {"sparse.enabled": True}) == (variants["eager"], None)
    with pytest.raises(ConfigError, match="cache.threshold"):
        as_run(variants["cache"], "eager", {"cache.threshold": -1})
