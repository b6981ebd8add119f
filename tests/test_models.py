"""The backend on every tiny model of the zoo: sites found, kinds, grid, text, equality with eager.

Each check compares the backend with an independent observation: attention calls are counted
by instrumenting eager execution, kinds and grids come from the zoo's description of each
model, and outputs are compared with the eager model on fresh random inputs.
"""

import pytest
import torch

import ditcompile
from tests.models.zoo import TINY_MODELS, get_tiny_model, run_model

from .attention_counting import ExecutedAttention, count_eager_attention

MODELS = sorted(TINY_MODELS)


def options_for(spec, **extra):
    options = {"compiler": "eager", "strict": True, **extra}
    if spec.preset != "manual":
        options["preset"] = spec.preset
    return options


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    spec = get_tiny_model(request.param)
    torch.manual_seed(0)
    model = spec.build()
    report = ditcompile.explain(model, **spec.make_inputs(seed=1), options=options_for(spec), strict=True,
                                fullgraph=spec.expected.fullgraph)
    return spec, model, report


def compile_like_case(spec, model, **options):
    """fullgraph=True where the model traces into one graph (Mochi only does with fullgraph=True:
    Dynamo then captures its torch.nonzero text selection with unbacked sizes)."""
    return torch.compile(model, backend="ditaccel", options=options_for(spec, **options),
                         fullgraph=spec.expected.fullgraph)


def test_every_attention_call_is_found(case, monkeypatch):
    spec, model, report = case
    inputs = spec.make_inputs(seed=2)
    eager_calls = count_eager_attention(model, inputs).total
    assert eager_calls > 0
    if spec.expected.fullgraph:
        assert len(report.graphs) == 1
        assert len(report.sites) == eager_calls
    # Whatever the graph structure, every attention call executed by the compiled model is
    # either our op or an original call that the report lists as kept. Dense sites are lowered
    # back to aten SDPA by default (tests/passes/test_lower_dense.py); keeping the op here makes
    # every site that was found visible as a call of ours.
    torch._dynamo.reset()
    compiled = compile_like_case(spec, model, **{"attention.lower_dense": False})
    with torch.no_grad():
        run_model(compiled, inputs)  # compile before counting
        executed = ExecutedAttention(monkeypatch)
        run_model(compiled, inputs)
    assert executed.ours + executed.kept == eager_calls
    kept_sites = [s for s in report.sites if not s.supported]
    assert executed.ours > 0 or not [s for s in report.sites if s.supported]
    if not kept_sites:
        assert executed.kept == 0


def test_kinds_match_the_model_description(case):
    spec, model, report = case
    expected = spec.expected
    for site in report.sites:
        kind = expected.kind_of(site.module_path)
        if kind is None:
            continue  # auxiliary attention not described by the zoo
        if kind in ("text_self", "pool"):
            assert site.tokens != "video", site
            continue
        assert site.kind == kind, f"{site.module_path}: found {site.kind}, expected {kind}"
        if kind == "joint":
            assert site.text is not None and site.text.position == expected.text_position, site
            if site.text.length is not None:  # None: varies at run time (Mochi's valid text tokens)
                assert site.text.length == expected.text_tokens
                assert site.q_len == expected.video_tokens + expected.text_tokens
    described = set(expected.attention_modules(model))
    assert described <= {s.module_path for s in report.sites}, "an attention module was not found"


def test_token_grid(case):
    spec, model, report = case
    grid = report.graphs[0].analysis.grid
    if spec.expected.latent_layout == "BSC" and grid is None:
        # packed tokens with data-dependent positions (Flux): not discoverable; the option sets it
        torch._dynamo.reset()
        report = ditcompile.explain(model, **spec.make_inputs(seed=1), fullgraph=spec.expected.fullgraph,
                                    options=options_for(spec, **{"graph.token_grid": list(spec.expected.grid)}))
        grid = report.graphs[0].analysis.grid
        assert grid.source == "option graph.token_grid"
    assert (grid.frames, grid.height, grid.width) == tuple(spec.expected.grid)
    assert report.graphs[0].analysis.num_video_tokens == spec.expected.video_tokens


def test_output_equals_eager(case):
    spec, model, report = case
    assert report.rewritten == sum(s.supported for s in report.sites)
    torch._dynamo.reset()
    compiled = compile_like_case(spec, model)
    with torch.no_grad():
        for seed in (3, 4):
            inputs = spec.make_inputs(batch_size=2, seed=seed)
            expected = run_model(model, inputs)
            torch.testing.assert_close(run_model(compiled, inputs), expected, rtol=1e-5, atol=1e-5)


def test_fullgraph_has_no_break_from_the_backend(case):
    spec, model, _ = case
    inputs = spec.make_inputs(seed=5)
    graphs = {}
    for backend in ("eager", "ditaccel"):
        torch._dynamo.reset()
        count = []

        def counting(gm, example_inputs, backend=backend):
            count.append(1)
            if backend == "eager":
                return gm.forward
            return ditcompile.ditaccel_backend(gm, example_inputs, options=options_for(spec))

        with torch.no_grad():
            run_model(torch.compile(model, backend=counting, fullgraph=spec.expected.fullgraph), inputs)
        graphs[backend] = len(count)
    assert graphs["ditaccel"] == graphs["eager"]
    if spec.expected.fullgraph:
        assert graphs["ditaccel"] == 1


def test_model_with_graph_breaks_is_reported_per_graph_and_stays_exact():
    """Mochi traced as Dynamo does by default (graph.capture_dynamic_output_shape_ops=false):
    Dynamo breaks at torch.nonzero; the joint attention runs outside every graph. Each graph is
    reported, and the output still equals eager."""
    spec = get_tiny_model("mochi-tiny")
    torch.manual_seed(0)
    model = spec.build()
    inputs = spec.make_inputs(seed=6)
    options = options_for(spec, **{"graph.capture_dynamic_output_shape_ops": False})
    report = ditcompile.explain(model, **inputs, options=options)
    assert len(report.graphs) > 1 and "graph breaks" in report.format()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options=options)
    with torch.no_grad():
        torch.testing.assert_close(run_model(compiled, inputs), run_model(model, inputs), rtol=1e-5, atol=1e-5)
