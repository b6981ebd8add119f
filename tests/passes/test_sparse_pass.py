"""Sparse-attention plans: which sites go sparse, warm-up steps and dense layers, generations,
the fidelity guard, and the op against dense attention on inputs inside/outside a policy's support."""
import json
import logging
import subprocess
import sys

import pytest
import torch

import ditcompile
from ditcompile.demo import denoise
from ditcompile.ops import attention_op
from tests.models.zoo import get_tiny_model, run_model
from ditcompile.plans import AttentionPlan, SparseSpec
from ditcompile.runtime.state import ModelRuntime, StepInfo, step_scope

pytest.importorskip("triton")  # masks and the reference live beside the Triton kernel


def sparse_options(spec, **sparse):
    options = {"compiler": "eager", "strict": True, "sparse.enabled": True, "sparse.block_size": 16,
               "sparse.dense_steps": 0, "sparse.dense_blocks": [], "graph.token_grid": list(spec.expected.grid)}
    options.update({f"sparse.{k}": v for k, v in sparse.items()})
    if spec.preset != "manual":
        options["preset"] = spec.preset
    return options


def test_video_self_and_joint_sites_go_sparse_and_the_rest_say_why_not():
    spec = get_tiny_model("wan2.1-tiny")
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), options=sparse_options(spec, dense_blocks=[1]))
    rows = {r["module"]: r for r in report.graphs[0].rows()}
    assert rows["blocks.0.attn1"]["plan"] == "sparse/radial"
    assert rows["blocks.1.attn1"]["plan"] == "dense/sdpa" and "sparse.dense_blocks" in rows["blocks.1.attn1"]["note"]
    assert rows["blocks.0.attn2"]["plan"] == "dense/sdpa" and "cross attention" in rows["blocks.0.attn2"]["note"]

    spec = get_tiny_model("cogvideox-tiny")
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), options=sparse_options(spec, policy="tile"))
    assert {r["plan"] for r in report.graphs[0].rows()} == {"sparse/tile"}

    spec = get_tiny_model("latte-tiny")  # factorized: spatial/temporal sites stay dense
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), options=sparse_options(spec))
    assert all(r["plan"] == "dense/sdpa" for r in report.graphs[0].rows())


def test_mochi_joint_sites_run_sparse_and_a_dynamic_text_length_stays_dense_with_the_reason(monkeypatch):
    spec = get_tiny_model("mochi-tiny")
    model, inputs = spec.build(), spec.make_inputs()
    report = ditcompile.explain(model, **inputs, options=sparse_options(spec))
    joint = [r for r in report.graphs[0].rows() if r["kind"] == "joint"]
    assert joint and all(r["plan"].startswith("sparse/") for r in joint)  # the selection became key padding
    # a selection the rewrite does not understand keeps its data-dependent text length
    monkeypatch.setattr(ditcompile.backend, "rewrite_valid_token_selections", lambda gm: [])
    torch._dynamo.reset()
    report = ditcompile.explain(model, **inputs, options=sparse_options(spec))
    joint = [r for r in report.graphs[0].rows() if r["kind"] == "joint"]
    assert joint and all("text length varies at run time" in r["note"] for r in joint)


def test_warmup_steps_and_dense_blocks_run_dense_and_generations_restart():
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    compiled = torch.compile(model, backend="ditaccel", options=sparse_options(spec, dense_steps=2, dense_blocks=[0]))
    with torch.no_grad():
        denoise(lambda kw: run_model(compiled, kw), inputs, 5)
        first = ditcompile.sparse_stats(model)[0]["current"]
        denoise(lambda kw: run_model(compiled, kw), inputs, 5)  # the timestep goes up: a new generation
        stats = ditcompile.sparse_stats(model)[0]
    assert "blocks.0.attn1" not in first  # dense block: planned dense, never enters the sparse runtime
    assert (first["blocks.1.attn1"]["dense_calls"], first["blocks.1.attn1"]["sparse_calls"]) == (2, 3)
    assert stats["finished"][-1]["blocks.1.attn1"]["dense_calls"] == 2
    assert (stats["current"]["blocks.1.attn1"]["dense_calls"], stats["current"]["blocks.1.attn1"]["sparse_calls"]) == (2, 3)


def _frame_local_qkv(frames, hw, heads=2, dim=32, text=0, seed=0):
    """q/k whose attention lives within each frame: a strong per-frame key direction."""
    g = torch.Generator().manual_seed(seed)
    s = frames * hw
    frame_dirs = torch.randn(frames, dim, generator=g) * 4.0
    frame_of = torch.arange(s) // hw
    q = torch.randn(1, heads, s, dim, generator=g) * 0.1 + frame_dirs[frame_of]
    k = torch.randn(1, heads, s, dim, generator=g) * 0.1 + frame_dirs[frame_of]
    v = torch.randn(1, heads, s, dim, generator=g)
    return q, k, v


def _plan(policy, grid, params="{}", **kw):
    return AttentionPlan(site_path="test", backend="triton",
                         sparse=SparseSpec(policy=policy, params_json=params, grid=grid, block_size=16, **kw))


def test_sparse_matches_dense_when_attention_lives_in_the_support_and_the_guard_catches_it_when_not():
    grid = (4, 4, 8)  # 4 frames of 32 tokens: a frame is two 16-token blocks
    q, k, v = _frame_local_qkv(4, 32)
    dense = attention_op(q, k, v, "bhsd", None, False, AttentionPlan().to_json())
    spatial_plan = _plan("spatial_temporal", grid, params=json.dumps({"frame_window": 0}), guard_every=1)
    runtime = ModelRuntime()
    with step_scope(StepInfo(0, 0, 0, 999.0), runtime):
        out = attention_op(q, k, v, "bhsd", None, False, spatial_plan.to_json())
    site = runtime.sparse.site("test", 0, tuple(q.shape))  # this generation's state of the site at q's shape
    assert ((out - dense).norm() / dense.norm()) < 1e-3
    assert (site.choice.assignment == 0).all()  # every head classified spatial (pattern 0)
    assert site.guard_errors[0][1] < 1e-3 and site.dense_from_step is None

    # a tile pattern one tile wide in time cannot see other frames: on attention that lives
    # across frames (same position), the guard measures a large error and turns the site dense
    g = torch.Generator().manual_seed(1)
    pos_dirs = torch.randn(32, 32, generator=g) * 4.0
    pos_of = torch.arange(128) % 32
    q2 = torch.randn(1, 2, 128, 32, generator=g) * 0.1 + pos_dirs[pos_of]
    k2 = torch.randn(1, 2, 128, 32, generator=g) * 0.1 + pos_dirs[pos_of]
    plan = _plan("tile", grid, params=json.dumps({"tile_size": [1, 4, 4], "window": [1, 1, 1]}), guard_every=1,
                 guard_budget=0.05)
    runtime = ModelRuntime()
    dense2 = attention_op(q2, k2, v, "bhsd", None, False, AttentionPlan().to_json())
    with step_scope(StepInfo(0, 3, 0, 500.0), runtime):
        out2 = attention_op(q2, k2, v, "bhsd", None, False, plan.to_json())
    site = runtime.sparse.site("test", 0, tuple(q2.shape))
    assert site.guard_errors[0][1] > 0.3 and site.dense_from_step == 3
    torch.testing.assert_close(out2, dense2)  # the guard returned dense attention for this call
    with step_scope(StepInfo(0, 4, 0, 400.0), runtime):
        attention_op(q2, k2, v, "bhsd", None, False, plan.to_json())
    assert site.dense_calls == 1 and site.sparse_calls == 1


@pytest.mark.parametrize("policy, params", [("radial", {"decay_factor": 1.0}), ("antidiagonal", {"stride": 4, "threshold": 0.99}),
                                            ("tile", {"tile_size": [1, 4, 8], "window": [3, 3, 3]})])
def test_each_policy_runs_through_the_op_in_both_layouts_with_text(policy, params):
    grid = (4, 4, 8)
    q, k, v = _frame_local_qkv(4, 32, seed=2)
    text = torch.randn(1, 2, 10, 32, generator=torch.Generator().manual_seed(3))
    q, k, v = (torch.cat([text, t], dim=2) for t in (q, k, v))  # text before the video
    plan = _plan(policy, grid, params=json.dumps(params), text_position="before", text_length=10)
    dense = attention_op(q, k, v, "bhsd", None, False, AttentionPlan().to_json())
    with step_scope(StepInfo(0, 0, 0, 1.0), ModelRuntime()):
        bhsd = attention_op(q, k, v, "bhsd", None, False, plan.to_json())
        bshd = attention_op(*(t.transpose(1, 2).contiguous() for t in (q, k, v)), "bshd", None, False, plan.to_json())
    torch.testing.assert_close(bshd.transpose(1, 2), bhsd, rtol=1e-5, atol=1e-5)
    # text rows are dense: they equal dense attention exactly
    torch.testing.assert_close(bhsd[:, :, :10], dense[:, :, :10], rtol=1e-5, atol=1e-5)
    assert ((bhsd - dense).norm() / dense.norm()) < 0.2


def test_guard_switch_is_logged_and_reported(caplog):
    spec = get_tiny_model("wan2.1-tiny")  # random weights attend almost uniformly: a tight guard trips
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=4)
    options = sparse_options(spec, policy="tile", tile={"tile_size": [1, 4, 4], "window": [1, 1, 1]},
                             guard_every=1, guard_budget=0.01)
    compiled = torch.compile(model, backend="ditaccel", options=options)
    with caplog.at_level(logging.INFO, logger="ditcompile"), torch.no_grad():
        out = denoise(lambda kw: run_model(compiled, kw), inputs, 3)
        reference = denoise(lambda kw: run_model(model, kw), inputs, 3)
    stats = ditcompile.sparse_stats(model)[0]["current"]
    assert all(s["dense_from_step"] == 0 for s in stats.values())
    assert "sparse guard" in caplog.text
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)  # dense from the first check on


def test_masks_cli_writes_a_png_with_density(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "masks", "--preset", "wan2.1", "--grid", "5x6x8",
                          "-o", "sparse.block_size=16", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    png = tmp_path / "wan2.1_radial_5x6x8.png"
    assert png.is_file() and png.stat().st_size > 0 and "density" in out.stdout


def test_grid_for_resolution_follows_the_vae_and_patch():
    from ditcompile.cli import grid_for_resolution

    assert grid_for_resolution("wan2.1", "480x832x81") == (21, 30, 52)
    assert grid_for_resolution("hunyuan_video", "720x1280x129") == (33, 45, 80)
    assert grid_for_resolution("flux", "1024x1024x1") == (1, 64, 64)


def test_unknown_policy_parameters_raise_a_clear_error():
    spec = get_tiny_model("wan2.1-tiny")
    with pytest.raises(Exception, match=r"sparse.radial: unknown parameter\(s\) \['bandwidth'\]; accepted: \['band'"):
        ditcompile.explain(spec.build(), **spec.make_inputs(), options=sparse_options(spec, radial={"bandwidth": 2}))


def test_static_plan_density_is_reported():
    spec = get_tiny_model("wan2.1-tiny")
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), options=sparse_options(spec))
    note = {r["module"]: r["note"] for r in report.graphs[0].rows()}["blocks.0.attn1"]
    assert note.startswith("density 0.") or note == "density 1.000"
