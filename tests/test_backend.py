"""The backend as users meet it: entry point, options, the custom op, Inductor, CLI and demo."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ditcompile
from ditcompile.ops import attention_op
from ditcompile.plans import AttentionPlan, parse_plan
from tests.models.zoo import get_tiny_model, run_model

REPO = Path(__file__).resolve().parents[1]


def test_backend_is_registered_by_entry_point_without_import():
    code = ("import torch, sys\n"
            "from torch._dynamo.backends.registry import lookup_backend\n"
            "fn = lookup_backend('ditaccel')\n"
            "assert 'ditcompile' in fn.__module__, fn\n"
            "m = torch.nn.Linear(4, 4)\n"
            "out = torch.compile(m, backend='ditaccel', options={'compiler': 'eager'})(torch.ones(2, 4))\n"
            "print('ok', tuple(out.shape))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ok (2, 4)" in result.stdout


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("causal, scale", [(False, None), (True, 0.3)])
def test_attention_op_passes_opcheck_and_matches_sdpa(layout, causal, scale):
    torch.manual_seed(0)
    shape = (2, 3, 7, 8) if layout == "bhsd" else (2, 7, 3, 8)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    plan = AttentionPlan(site_path="test").to_json()
    torch.library.opcheck(attention_op, (q, k, v, layout, scale, causal, plan))
    out = attention_op(q, k, v, layout, scale, causal, plan)
    tq, tk, tv = (t.transpose(1, 2) for t in (q, k, v)) if layout == "bshd" else (q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, scale=scale)
    ref = ref.transpose(1, 2) if layout == "bshd" else ref
    torch.testing.assert_close(out, ref)
    assert out.is_contiguous()
    # gradients through the op equal SDPA's
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_attention_op_rejects_bad_arguments():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="layout must be one of"):
        attention_op(q, q, q, "sbhd", None, False, AttentionPlan().to_json())
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention_op(q[0], q, q, "bhsd", None, False, AttentionPlan().to_json())
    with pytest.raises(ValueError, match="not JSON"):
        parse_plan("dense")
    with pytest.raises(ValueError, match="unknown fields"):
        parse_plan('{"method": "dense", "colour": "radial"}')
    with pytest.raises(ValueError, match="mask 'radial' is not one of"):
        parse_plan('{"method": "dense", "mask": "radial"}')
    with pytest.raises(ValueError, match="method"):
        parse_plan('{"method": "magic"}')


def test_bad_options_raise_a_clear_error_through_torch_compile():
    model = torch.nn.Linear(4, 4)
    compiled = torch.compile(model, backend="ditaccel", options={"attention.enabeld": False})
    with pytest.raises(Exception, match=r"unknown option 'attention.enabeld'.*Did you mean 'attention.enabled'"):
        compiled(torch.randn(2, 4))


def test_preset_name_as_options_string():
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs(seed=3)
    report = ditcompile.explain(model, **inputs, options="wan2.1", strict=True)
    assert report.graphs[0].preset == "wan2.1" and report.rewritten == 4


def test_attention_pass_can_be_disabled():
    spec = get_tiny_model("wan2.1-tiny")
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), options={"attention.enabled": False}, strict=True)
    graph = report.graphs[0]
    assert graph.pipeline == [] and report.rewritten == 0
    assert {row["note"] for row in graph.rows()} == {"no pass ran"}


def test_report_is_logged_at_info(caplog):
    model = get_tiny_model("manual-dit-tiny")
    with caplog.at_level("INFO", logger="ditcompile"):
        compiled = torch.compile(model.build(), backend="ditaccel", options={"compiler": "eager"})
        with torch.no_grad():
            run_model(compiled, model.make_inputs())
    assert "attention sites:" in caplog.text and "blocks.0.attn1" in caplog.text


@pytest.mark.inductor
@pytest.mark.parametrize("name", ["wan2.1-tiny", "manual-dit-tiny"])
def test_inductor_output_equals_eager(name):
    spec = get_tiny_model(name)
    torch.manual_seed(0)
    model = spec.build()
    options = {"strict": True}
    if spec.preset != "manual":
        options["preset"] = spec.preset
    compiled = torch.compile(model, backend="ditaccel", options=options, fullgraph=True)
    with torch.no_grad():
        for seed in (0, 1):
            inputs = spec.make_inputs(batch_size=2, seed=seed)
            torch.testing.assert_close(run_model(compiled, inputs), run_model(model, inputs), rtol=1e-4, atol=1e-5)


def test_cli_explain_prints_the_table_and_json():
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "explain", "--model", "flux-tiny",
                          "-o", "graph.token_grid=[1,4,6]"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "token grid: 1x4x6 (option graph.token_grid)" in out.stdout
    assert "single_transformer_blocks.0.attn" in out.stdout and "text before" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "explain", "--model", "tests.models.manual_dit:EXAMPLE",
                          "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    data = json.loads(out.stdout)
    assert [r["pattern"] for r in data["graphs"][0]["attention"]][:2] == ["matmul-softmax-matmul", "baddbmm-softmax-bmm"]


def test_cli_reports_bad_options_and_models():
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "explain", "--model", "wan2.1-tiny",
                          "-o", "compiler=tvm"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "option 'compiler' must be one of ['inductor', 'eager']" in out.stderr
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "explain", "--model", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "unknown model 'nope'" in out.stderr


def test_demo_loop_matches_eager_with_the_eager_compiler():
    from ditcompile.demo import run_demo

    result = run_demo("wan2.1-tiny", steps=3, compiler="eager", device="cpu")
    assert result.max_abs_diff < 1e-4 and result.rel_l2_diff < 1e-5
    text = result.format()
    assert "3-step flow-matching loop" in text and "relative L2" in text
    assert "blocks.1.attn2" in result.report


def test_cuda_graphs_are_turned_off_when_plans_depend_on_the_step(monkeypatch, caplog):
    """Mode "reduce-overhead" asks Inductor for CUDA graphs; a replayed graph would not see the
    denoising step, so sparse (or cached) plans turn them off and the report says so."""
    import torch._inductor.compile_fx as compile_fx_module

    seen = []

    def fake_compile_fx(gm, example_inputs, config_patches=None, **kwargs):
        seen.append(dict(config_patches or {}))
        return gm.forward

    monkeypatch.setattr(compile_fx_module, "compile_fx", fake_compile_fx)
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs()
    for sparse in (False, True):
        torch._dynamo.reset()
        options = {"preset": "wan2.1", "strict": True, "sparse.enabled": sparse, "sparse.block_size": 16,
                   "mode": "reduce-overhead"}
        with caplog.at_level("INFO", logger="ditcompile"), torch.no_grad():
            run_model(torch.compile(model, backend="ditaccel", options=options), inputs)
    assert seen[0]["triton.cudagraphs"] is True and seen[1]["triton.cudagraphs"] is False
    assert "CUDA graphs off" in caplog.text


def test_explain_leaves_no_state_and_no_compiled_code_behind():
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    options = {"preset": "wan2.1", "compiler": "eager", "cache.enabled": True}
    for _ in range(torch._dynamo.config.recompile_limit + 2):  # more explains than Dynamo's recompile limit
        assert ditcompile.explain(model, **inputs, options=options).rewritten == 4
    assert ditcompile.cache_stats(model) == []  # explain's run-time state went with it
    with torch.no_grad():
        got = run_model(torch.compile(model, backend="ditaccel", options=options), inputs)
    (stats,) = ditcompile.cache_stats(model)  # the user's compile still runs ditaccel, not eager
    assert stats["current"][0]["computed"] == 1
    torch.testing.assert_close(got, run_model(model, inputs))


def test_an_enabled_feature_that_a_graph_cannot_use_is_said_at_warning_level(caplog):
    import logging

    spec = get_tiny_model("flux-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    with caplog.at_level(logging.WARNING, logger="ditcompile"), torch.no_grad():
        run_model(torch.compile(model, backend="ditaccel", options={"preset": "flux", "compiler": "eager",
                                                                   "sparse.enabled": True}), inputs)
    assert "sparse.enabled, but no attention site of this graph runs sparse: dense: token grid unknown" in caplog.text
    caplog.clear()
    wan = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = wan.build(), wan.make_inputs(seed=1)
    model.compile_repeated_blocks(backend="ditaccel", options={"preset": "wan2.1", "compiler": "eager",
                                                               "cache.enabled": True})
    with caplog.at_level(logging.WARNING, logger="ditcompile"), torch.no_grad():
        run_model(model, inputs)
    assert "cache.enabled, but this graph runs every step" in caplog.text
    assert "the step cache needs the whole model in one compiled graph" in caplog.text
