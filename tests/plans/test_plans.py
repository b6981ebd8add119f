"""Plans: canonical JSON round trip, validation where the plan is built, ditaccel 0.1 plans."""
import json

import pytest

from ditcompile.geometry import TokenLayout
from ditcompile.masks import RadialParams, params_json
from ditcompile.plans import PLAN_VERSION, AttentionPlan, SparseSpec, parse_plan


def _sparse(**kw):
    return SparseSpec(**{"policy": "radial", "params_json": params_json(RadialParams(decay_factor=0.5)),
                         "grid": (3, 4, 6), "block_size": 16, **kw})


def test_round_trip_is_exact_and_canonical():
    plans = [AttentionPlan(), AttentionPlan(site_path="blocks.0.attn1", backend="triton", quant="int8"),
             AttentionPlan(site_path="b.1", backend="triton", sparse=_sparse(text_position="after", text_length=5,
                                                                              dense_steps=2, guard_every=3))]
    for plan in plans:
        text = plan.to_json()
        assert json.loads(text)["version"] == PLAN_VERSION
        assert parse_plan(text) == plan and parse_plan(text).to_json() == text
    assert AttentionPlan(site_path="x").to_json() == AttentionPlan(site_path="x").to_json()
    assert plans[2].method == "sparse" and plans[1].method == "dense"
    assert plans[2].sparse.policy_params == RadialParams(decay_factor=0.5)


def test_token_layout_of_a_spec():
    assert _sparse(text_position="before", text_length=7).token_layout == TokenLayout(3, 4, 6, 7, True)
    assert _sparse(text_position="after", text_length=7).token_layout.text_range == (72, 79)
    assert _sparse().token_layout.text_range is None


def test_dense_fallback_keeps_quant_and_drops_sparse():
    plan = AttentionPlan(site_path="s", backend="triton", sparse=_sparse())
    assert plan.dense_fallback() == AttentionPlan(site_path="s", backend="sdpa")
    quant = AttentionPlan(site_path="s", backend="triton", quant="int8", sparse=_sparse())
    assert quant.dense_fallback() == AttentionPlan(site_path="s", backend="triton", quant="int8")


@pytest.mark.parametrize("make, message", [
    (lambda: _sparse(policy="magic"), "policy 'magic' is not one of"),
    (lambda: _sparse(grid=(4, 4)), "3-D grid"),
    (lambda: _sparse(block_size=24), "block_m must be a positive multiple of 16"),
    (lambda: _sparse(params_json='{"band": -1}'), "sparse.radial: band must be an int >= 0"),
    (lambda: _sparse(params_json='{"bandwidth": 2}'), r"unknown parameter\(s\) \['bandwidth'\]"),
    (lambda: _sparse(guard_budget=float("nan")), "guard_budget"),
    (lambda: AttentionPlan(backend="sdpa", sparse=_sparse()), "needs backend 'triton'"),
])
def test_invalid_plans_fail_where_they_are_built(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_version_1_plans_of_ditaccel_0_1_still_parse():
    dense_v1 = ('{"backend":"triton","block_size":128,"dense_steps":0,"grid":[],"guard_budget":0.05,"guard_every":0,'
                '"guard_rows":64,"method":"dense","params":"{}","policy":"","quant":"int8","site":"blocks.0.attn1",'
                '"text_length":0,"text_position":""}')
    assert parse_plan(dense_v1) == AttentionPlan(site_path="blocks.0.attn1", backend="triton", quant="int8")
    sparse_v1 = ('{"backend":"triton","block_size":16,"dense_steps":2,"grid":[3,4,6],"guard_budget":0.05,'
                 '"guard_every":1,"guard_rows":64,"method":"sparse","params":"{\\"decay_factor\\": 0.5}",'
                 '"policy":"radial","quant":"none","site":"b.0","text_length":5,"text_position":"after"}')
    plan = parse_plan(sparse_v1)
    assert plan.site_path == "b.0" and plan.sparse.dense_steps == 2 and plan.sparse.text_length == 5
    assert plan.sparse.policy_params == RadialParams(decay_factor=0.5)
    with pytest.raises(ValueError, match="version 9 is not supported"):
        parse_plan('{"version": 9}')
    with pytest.raises(ValueError, match="invalid sparse part"):
        parse_plan('{"version": 2, "sparse": {"policy": "radial", "grid": [1, 1, 1], "mask": 1}}')
