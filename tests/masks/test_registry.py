"""The policy registry: every policy's parameters validate themselves, the config and the plans
read the registry, and a new policy added to it runs through the whole backend untouched."""
import dataclasses
import json

import pytest
import torch

import ditcompile
from ditcompile.config import ConfigError, resolve_config
from ditcompile.geometry import TokenLayout
from ditcompile.kernels.block_mask import BlockSparseMask
from ditcompile.masks import POLICIES, PatternChoice, Policy, SparsePattern, parse_params, params_json
from ditcompile.ops import attention_op
from ditcompile.plans import AttentionPlan, SparseSpec
from ditcompile.runtime.state import ModelRuntime, StepInfo, step_scope
from ditcompile.step_cache_policies import CACHE_POLICIES
from tests.models.zoo import get_tiny_model

LAYOUT = TokenLayout.of((4, 4, 8))  # 4 frames of 32 tokens


def test_every_policy_has_valid_defaults_that_round_trip_through_json():
    assert {"radial", "spatial_temporal", "antidiagonal", "tile"} <= set(POLICIES)
    for name, policy in POLICIES.items():
        params = policy.params()
        assert parse_params(policy, json.loads(params_json(params))) == params, name
        statics = policy.static_patterns(LAYOUT, 16, params, "cpu")
        assert policy.data_dependent == (policy.choose is not None)
        assert statics or policy.data_dependent, name  # a static policy has a pattern to draw
        for pattern in statics:
            assert isinstance(pattern, SparsePattern) and pattern.seq_len == LAYOUT.total


def test_unknown_and_bad_parameters_name_the_policy_and_the_parameter():
    with pytest.raises(ValueError, match=r"sparse.tile: unknown parameter\(s\) \['tiles'\]; accepted: \['tile_size', "
                                         r"'window'\]"):
        parse_params(POLICIES["tile"], {"tiles": [1, 2, 3]})
    with pytest.raises(ValueError, match="sparse.spatial_temporal: reclassify_every must be an int >= 1"):
        parse_params(POLICIES["spatial_temporal"], {"reclassify_every": 0})
    with pytest.raises(ConfigError, match="sparse.antidiagonal: threshold must be a number in"):
        resolve_config({"sparse.antidiagonal": {"threshold": 1.5}})


def test_config_reads_the_registries():
    config = resolve_config("wan2.1")
    assert config.sparse.params_for("radial") == POLICIES["radial"].params(decay_factor=0.2, sink=True)
    assert config.sparse.params_for("tile") == POLICIES["tile"].params()  # no table: the defaults
    with pytest.raises(ConfigError, match=r"option 'sparse.policy' must be one of \['radial', 'spatial_temporal'"):
        resolve_config({"sparse.policy": "dense"})
    with pytest.raises(ConfigError, match=r"option 'cache.policy' must be one of \['fbcache', 'dbcache', 'teacache'\]"):
        resolve_config({"cache.policy": "nocache"})
    assert {"fbcache", "dbcache", "teacache"} <= set(CACHE_POLICIES)


def test_a_multi_pattern_choice_has_the_head_weighted_density():
    spatial, temporal = POLICIES["spatial_temporal"].static_patterns(LAYOUT, 16, POLICIES["spatial_temporal"].params(),
                                                                     "cpu")
    assignment = torch.tensor([[0, 1, 1], [0, 0, 0]])
    choice = PatternChoice((spatial, temporal), assignment)
    expected = (4 * spatial.density + 2 * temporal.density) / 6
    assert choice.density == pytest.approx(expected)
    assert choice.fits(2, 3) and not choice.fits(1, 3)


# ---------------------------------------------------------------------- a new policy, in this file only


@dataclasses.dataclass(frozen=True)
class BandParams:
    """width: query block i attends kv blocks i - width .. i + width (int >= 0)."""

    width: int = 0

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 0:
            raise ValueError(f"width must be an int >= 0, got {self.width!r}")


def _band_patterns(layout, block, p, device):
    n = -(-layout.total // block)
    i = torch.arange(n)
    blocks = (i[:, None] - i[None, :]).abs() <= p.width  # [NQB, NKB]
    mask = BlockSparseMask.from_dense_block_mask(blocks.to(device), block, block, layout.total, layout.total,
                                                 dense_q_range=layout.text_range, dense_kv_range=layout.text_range)
    return (SparsePattern(mask, None, name="band"),)


BAND = Policy(name="band", params=BandParams, static_patterns=_band_patterns, paper="a test policy")


@pytest.fixture
def band_policy(monkeypatch):
    monkeypatch.setitem(POLICIES, "band", BAND)
    yield BAND
    ditcompile.clear_caches()


def test_a_policy_added_to_the_registry_runs_through_config_passes_and_op(band_policy):
    config = resolve_config({"sparse.enabled": True, "sparse.policy": "band", "sparse.band": {"width": 1}})
    assert config.sparse.params_for("band") == BandParams(width=1)

    spec = get_tiny_model("wan2.1-tiny")  # grid 3x8x12 = 288 tokens: 18 blocks of 16
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), strict=True, options={
        "preset": "wan2.1", "compiler": "eager", "sparse.enabled": True, "sparse.policy": "band",
        "sparse.band": {"width": 1}, "sparse.block_size": 16, "sparse.dense_steps": 0, "sparse.dense_blocks": []})
    rows = {r["module"]: r for r in report.graphs[0].rows()}
    assert rows["blocks.0.attn1"]["plan"] == "sparse/band"
    assert rows["blocks.0.attn1"]["note"] == f"density {(18 + 2 * 17) / 18 ** 2:.3f}"  # 3 diagonals of 18 blocks

    # the op computes attention restricted to the band: compare with masked exact attention
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(3))
    plan = AttentionPlan(site_path="t", backend="triton", sparse=SparseSpec(
        policy="band", params_json=json.dumps({"width": 1}), grid=(4, 4, 8), block_size=16))
    out = attention_op(q, k, v, "bhsd", None, False, plan.to_json())
    block = torch.arange(128) // 16
    allowed = (block[:, None] - block[None, :]).abs() <= 1
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=allowed)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- a policy that breaks the invariant


def _shift_patterns(layout, block, p, device):
    """Query block i attends only kv block i + 1: the last query block attends nothing."""
    n = -(-layout.total // block)
    i = torch.arange(n)
    blocks = (i[None, :] - i[:, None]) == 1  # [NQB, NKB]
    mask = BlockSparseMask.from_dense_block_mask(blocks.to(device), block, block, layout.total, layout.total)
    return (SparsePattern(mask, None, name="shift"),)


@pytest.fixture
def shift_policy(monkeypatch):
    policy = Policy(name="shift", params=BandParams, static_patterns=_shift_patterns, paper="a broken test policy")
    monkeypatch.setitem(POLICIES, "shift", policy)
    yield policy
    ditcompile.clear_caches()


def test_a_pattern_that_drops_queries_is_refused_and_the_site_runs_dense_with_the_reason(shift_policy, caplog):
    spec = get_tiny_model("wan2.1-tiny")
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), strict=True, options={
        "preset": "wan2.1", "compiler": "eager", "sparse.enabled": True, "sparse.policy": "shift",
        "sparse.block_size": 16, "sparse.dense_steps": 0, "sparse.dense_blocks": []})
    rows = {r["module"]: r for r in report.graphs[0].rows()}
    row = rows["blocks.0.attn1"]
    assert row["plan"].startswith("dense") and "no valid sparse pattern" in row["note"]
    assert "query block 17" in row["note"] and "attends no key block" in row["note"]

    # at run time (a plan written for the policy): exact attention, warned once, never zero rows
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 96, 16, generator=g) for _ in range(3))
    plan = AttentionPlan(site_path="t.shift", backend="triton", sparse=SparseSpec(
        policy="shift", params_json=json.dumps({"width": 0}), grid=(2, 4, 12), block_size=16))
    caplog.clear()
    with caplog.at_level("WARNING", logger="ditcompile"):
        out = attention_op(q, k, v, "bhsd", None, False, plan.to_json())
        attention_op(q, k, v, "bhsd", None, False, plan.to_json())
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, expected)
    warnings = [r for r in caplog.records if "attends no key block" in r.getMessage()]
    assert len(warnings) == 1 and "runs dense" in warnings[0].getMessage()
    # inside a model call the site's stats say why it ran dense
    runtime = ModelRuntime()
    with step_scope(StepInfo(0, 0, 0, 1.0), runtime):
        inside = attention_op(q, k, v, "bhsd", None, False, plan.to_json())
    torch.testing.assert_close(inside, expected)
    stats = runtime.sparse.summary()["t.shift"]
    assert (stats["sparse_calls"], stats["dense_calls"]) == (0, 1)
    assert "query block 5" in stats["invalid_pattern"]
