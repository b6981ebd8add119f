"""Valid-token selection before attention (issue 16): Mochi's `torch.nonzero` text selection is
traced into one graph under a default `torch.compile(backend="ditaccel")` and rewritten as a
key-padding mask on static shapes.

References: the eager model (outputs, on padded, unpadded, holed and empty prompts, batch 1 and
2), the eager count of attention calls, and Dynamo's own graph count with its default config.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ditcompile
from ditcompile.graph.valid_tokens import rewrite_valid_token_selections
from tests.attention_counting import ExecutedAttention, count_eager_attention
from tests.models.zoo import get_tiny_model, run_model

MASKS = {  # 10 text tokens; batch 2 rows
    "unpadded": [[1] * 10, [1] * 10],
    "padded": [[1] * 7 + [0] * 3, [1] * 4 + [0] * 6],
    "holes": [[1, 0, 1, 1, 0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]],
    "empty": [[0] * 10, [1] * 2 + [0] * 8],
}


def mochi_inputs(spec, batch_size: int, mask: str, seed: int) -> dict:
    inputs = spec.make_inputs(batch_size=batch_size, seed=seed)
    inputs["encoder_attention_mask"] = torch.tensor(MASKS[mask][:batch_size], dtype=torch.bool)
    return inputs


@pytest.fixture(scope="module")
def mochi():
    spec = get_tiny_model("mochi-tiny")
    torch.manual_seed(0)
    return spec, spec.build()


class GraphCount:
    """A backend that counts Dynamo graphs, then hands each to ditaccel (or runs it as traced)."""

    def __init__(self, options=None, ours: bool = True):
        self.graphs = 0
        self.options, self.ours = options, ours
        if ours:
            self.trace_context_for = lambda _options: ditcompile.backend.trace_context_for(options)

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if not self.ours:
            return gm.forward
        return ditcompile.ditaccel_backend(gm, example_inputs, options=self.options)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_default_compile_rewrites_every_joint_site_in_one_graph_and_equals_eager(mochi, monkeypatch, batch_size):
    spec, model = mochi
    options = {"preset": "mochi", "compiler": "eager", "strict": True}
    inputs = mochi_inputs(spec, batch_size, "padded", seed=1)
    eager_calls = count_eager_attention(model, inputs).total
    report = ditcompile.explain(model, **inputs, options=options)  # no fullgraph, no flags
    assert len(report.graphs) == 1
    rows = report.graphs[0].rows()
    assert len(rows) == eager_calls and all(r["plan"] != "original" for r in rows)
    joint = [r for r in rows if r["kind"] == "joint"]
    assert len(joint) == 2 * batch_size  # two blocks, one call per batch element as in eager
    assert all(r["text"] == "text after (10)" and "key-padding" in r["plan"] for r in joint)
    assert any("valid-token selection" in n for n in report.graphs[0].notes)
    assert not any("data-dependent" in n for n in report.graphs[0].notes)

    torch._dynamo.reset()
    counting = GraphCount(options)
    compiled = torch.compile(model, backend=counting)
    opaque = torch.compile(model, backend="ditaccel", options={**options, "attention.lower_dense": False})
    with torch.no_grad():
        for mask in MASKS:
            inputs = mochi_inputs(spec, batch_size, mask, seed=2)
            expected = run_model(model, inputs)
            torch.testing.assert_close(run_model(compiled, inputs), expected, rtol=1e-5, atol=1e-5)
            run_model(opaque, inputs)
            executed = ExecutedAttention(monkeypatch)
            torch.testing.assert_close(run_model(opaque, inputs), expected, rtol=1e-5, atol=1e-5)
            assert executed.ours == eager_calls and executed.kept == 0, mask
            monkeypatch.undo()
    assert counting.graphs == 1  # one graph for every mask: no recompile per valid length


def test_dynamo_default_still_breaks_and_the_capture_is_scoped_to_ditaccel(mochi):
    spec, model = mochi
    inputs = mochi_inputs(spec, 2, "padded", seed=3)
    torch._dynamo.reset()
    plain = GraphCount(ours=False)
    with torch.no_grad():
        run_model(torch.compile(model, backend=plain), inputs)
    assert plain.graphs > 1  # Dynamo's own default: a break at torch.nonzero
    assert torch._dynamo.config.capture_dynamic_output_shape_ops is False
    torch._dynamo.reset()
    off = GraphCount({"preset": "mochi", "compiler": "eager", "graph.capture_dynamic_output_shape_ops": False})
    with torch.no_grad():
        out = run_model(torch.compile(model, backend=off), inputs)
    assert off.graphs == plain.graphs
    torch.testing.assert_close(out, run_model(model, inputs), rtol=1e-5, atol=1e-5)
    assert torch._dynamo.config.capture_dynamic_output_shape_ops is False


def test_preset_plans_and_step_cache_apply_to_mochi(mochi):
    spec, model = mochi
    options = {"preset": "mochi", "compiler": "eager", "strict": True, "sparse.enabled": True,
               "sparse.min_tokens": 0, "sparse.dense_steps": 0, "attention.quant": "int8", "cache.enabled": True,
               "cache.threshold": 0.5}
    inputs = mochi_inputs(spec, 2, "padded", seed=4)
    report = ditcompile.explain(model, **inputs, options=options)
    assert len(report.graphs) == 1
    joint = [r for r in report.graphs[0].rows() if r["kind"] == "joint"]
    assert joint and all(r["plan"].startswith("sparse/") and "int8" in r["plan"] for r in joint)
    assert "note: step cache teacache" in report.format()  # the graph splits at block boundaries

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options=options)
    ditcompile.new_generation(compiled)
    with torch.no_grad():
        for t in (999.0, 990.0, 980.0, 970.0):
            inputs["timestep"] = torch.full((2,), t)
            run_model(compiled, inputs)
    (state,) = ditcompile.cache_stats(compiled)
    (branch,) = state["current"].values()
    assert branch["computed"] + branch["reused"] == 4 and branch["pattern"][0] is True  # decisions made


class TextFirstBooleanIndex(nn.Module):
    """Another spelling: text before video, selected with a boolean mask (`x[:, :, m]`), one
    batch element at a time, padded back to the full length."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.ctx_qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask):
        b, s, c = hidden_states.shape
        t = encoder_hidden_states.shape[1]
        q, k, v = (x.unflatten(2, (self.heads, -1)).transpose(1, 2) for x in self.qkv(hidden_states).chunk(3, -1))
        cq, ck, cv = (x.unflatten(2, (self.heads, -1)).transpose(1, 2)
                      for x in self.ctx_qkv(encoder_hidden_states).chunk(3, -1))
        outs = []
        for i in range(b):
            m = encoder_attention_mask[i]
            qi = torch.cat([cq[i:i + 1, :, m], q[i:i + 1]], dim=2)
            ki = torch.cat([ck[i:i + 1, :, m], k[i:i + 1]], dim=2)
            vi = torch.cat([cv[i:i + 1, :, m], v[i:i + 1]], dim=2)
            o = F.scaled_dot_product_attention(qi, ki, vi)
            outs.append(F.pad(o, (0, 0, 0, s + t - o.size(2))))
        o = torch.cat(outs).transpose(1, 2).flatten(2)
        return self.out(o)


def test_boolean_index_and_text_first_are_rewritten_too():
    torch.manual_seed(0)
    model = TextFirstBooleanIndex()
    counting = GraphCount({"compiler": "eager", "strict": True})
    compiled = torch.compile(model, backend=counting)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for mask in MASKS.values():
            x, ctx = torch.randn(2, 12, 32, generator=g), torch.randn(2, 10, 32, generator=g)
            m = torch.tensor(mask, dtype=torch.bool)
            torch.testing.assert_close(compiled(x, ctx, m), model(x, ctx, m), rtol=1e-5, atol=1e-5)
    assert counting.graphs == 1
    report = ditcompile.explain(model, x, ctx, m, options={"compiler": "eager", "strict": True})
    assert len(report.graphs) == 1 and len(report.sites) == 2
    assert all("key-padding" in r["plan"] for r in report.graphs[0].rows())


class UnpaddedSelection(nn.Module):
    """The selected attention's output is used at its data-dependent length (no pad back): not
    the pattern; the selection stays and the report says a data-dependent size is kept."""

    def forward(self, q, k, v, mask):
        idx = torch.nonzero(mask).flatten()
        o = F.scaled_dot_product_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx])
        return o.sum(dim=2)


def test_a_selection_that_does_not_fit_stays_and_is_reported():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=g) for _ in range(3))
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    model = UnpaddedSelection()
    report = ditcompile.explain(model, q, k, v, mask, options={"compiler": "eager"})
    notes = [n for g_ in report.graphs for n in g_.notes]
    assert any("data-dependent size kept: torch.nonzero" in n for n in notes), notes
    torch._dynamo.reset()
    out = torch.compile(model, backend="ditaccel", options={"compiler": "eager"})(q, k, v, mask)
    torch.testing.assert_close(out, model(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_rewrite_leaves_graphs_without_the_pattern_alone():
    def f(x, y):
        return F.scaled_dot_product_attention(torch.cat([x, y], dim=2), x.repeat(1, 1, 2, 1), x.repeat(1, 1, 2, 1))

    gm = torch.fx.symbolic_trace(f)
    before = str(gm.graph)
    assert rewrite_valid_token_selections(gm) == [] and str(gm.graph) == before


def test_mochi_through_inductor_equals_eager(mochi):
    spec, model = mochi
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options={"preset": "mochi"})
    with torch.no_grad():
        for mask in ("padded", "holes"):
            inputs = mochi_inputs(spec, 2, mask, seed=7)
            torch.testing.assert_close(run_model(compiled, inputs), run_model(model, inputs), rtol=1e-5, atol=1e-5)


class _JointBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x, text, key_padding):
        h = torch.cat([x, text], dim=1)
        q, k, v = self.qkv(h).unflatten(2, (3, 2, 8)).permute(2, 0, 3, 1, 4)
        o = self.o(F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding).transpose(1, 2).flatten(2))
        return x + o[:, :x.shape[1]], text + o[:, x.shape[1]:]


class ValidTokensFirst(nn.Module):
    """HunyuanVideo 1.5 / HunyuanImage 2.1 style: each prompt's valid tokens are moved first with
    boolean indexing (invalid ones after, zeroed) before the blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_JointBlock(), _JointBlock()])

    def forward(self, x, text, text_mask, text_2, text_mask_2):
        new_t, new_m = [], []
        for t1, m1, t2, m2 in zip(text, text_mask, text_2, text_mask_2):
            new_t.append(torch.cat([t2[m2], t1[m1], t2[~m2], torch.zeros_like(t1[~m1])], dim=0))
            new_m.append(torch.cat([m2[m2], m1[m1], m2[~m2], m1[~m1]], dim=0))
        text, mask = torch.stack(new_t), torch.stack(new_m)
        key_padding = F.pad(mask, (x.shape[1], 0), value=True)[:, None, None, :]
        for block in self.blocks:
            x, text = block(x, text, key_padding)
        return x


def test_a_reorder_before_the_blocks_traces_as_with_dynamos_default():
    """The capture does not make such a model worse: Dynamo still breaks where the reordered
    lengths reach attention, the blocks compile on their own with static shapes as without the
    capture, and outputs equal eager."""
    torch.manual_seed(0)
    model = ValidTokensFirst()
    g = torch.Generator().manual_seed(8)
    x, t, t2 = torch.randn(2, 12, 16, generator=g), torch.randn(2, 6, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    masks = (torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1]]).bool(), torch.tensor([[1, 1, 0, 0], [0] * 4]).bool())
    formats = []
    for capture in (True, False):
        torch._dynamo.reset()
        options = {"compiler": "eager", "graph.capture_dynamic_output_shape_ops": capture}
        report = ditcompile.explain(model, x, t, masks[0], t2, masks[1], options=options)
        formats.append([r["plan"] for g_ in report.graphs for r in g_.rows()])
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="ditaccel", options=options)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, t, *masks[:1], t2, masks[1]), model(x, t, masks[0], t2, masks[1]),
                                       rtol=1e-5, atol=1e-5)
    assert formats[0] == formats[1] and formats[0] and all("key-padding" in p for p in formats[0])


class Spelling(nn.Module):
    """One valid-token selection spelled several ways; `nonzero(m)[0]` (the first valid index,
    one row) is not a selection of all valid tokens and must be left alone."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, q, k, v, m):
        idx = {"nonzero_first_row": lambda: torch.nonzero(m)[0],
               "as_tuple": lambda: torch.nonzero(m, as_tuple=True)[0],
               "where": lambda: torch.where(m)[0],
               "argwhere": lambda: torch.argwhere(m).flatten(),
               "bool": lambda: m}[self.how]()
        s = q.shape[2]
        o = F.scaled_dot_product_attention(*(torch.cat([x, x[:, :, idx]], dim=2) for x in (q, k, v)))
        return F.pad(o, (0, 0, 0, 2 * s - o.size(2)))


@pytest.mark.parametrize("how,rewritten", [("nonzero_first_row", False), ("as_tuple", True), ("where", True),
                                           ("argwhere", True), ("bool", True)])
def test_spellings_of_the_selection(how, rewritten):
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    model = Spelling(how)
    for mask in ([1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0]):
        m = torch.tensor(mask, dtype=torch.bool)
        torch._dynamo.reset()
        report = ditcompile.explain(model, q, k, v, m, options={"compiler": "eager"})
        notes = [n for g_ in report.graphs for n in g_.notes]
        assert ("key-padding" in report.graphs[0].rows()[0]["plan"]) is rewritten, notes
        # a rewritten selection leaves no data-dependent op behind; one left alone is reported
        assert any(n.startswith("data-dependent size kept") for n in notes) is (not rewritten), notes
        torch._dynamo.reset()
        out = torch.compile(model, backend="ditaccel", options={"compiler": "eager"})(q, k, v, m)
        torch.testing.assert_close(out, model(q, k, v, m), rtol=1e-5, atol=1e-5)


def test_dynamic_shapes_keep_the_rewrite(mochi):
    spec, model = mochi
    options = {"preset": "mochi", "compiler": "eager", "strict": True}
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options=options)  # automatic dynamic after a resize
    with torch.no_grad():
        for latent in ((3, 8, 12), (3, 8, 16), (2, 12, 12)):
            inputs = spec.make_inputs(batch_size=2, seed=12, latent=latent)
            inputs["encoder_attention_mask"] = torch.tensor(MASKS["holes"], dtype=torch.bool)
            torch.testing.assert_close(run_model(compiled, inputs), run_model(model, inputs), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    report = ditcompile.explain(model, **inputs, options=options, dynamic=True)
    notes = [n for g_ in report.graphs for n in g_.notes]
    assert len(report.graphs) == 1 and not any(n.startswith("data-dependent") for n in notes), notes
    assert sum("key-padding" in r["plan"] for r in report.graphs[0].rows()) == 5  # pooler + 2 blocks x 2
    # a resize recompiles with symbolic video sizes (the text keeps its length): the per-frame patch
    # embedding gives the grid at run time, so the joint sites stay joint and run sparse
    sparse = {**options, "sparse.enabled": True, "sparse.min_tokens": 0, "sparse.dense_steps": 0,
              "sparse.block_size": 16}
    torch._dynamo.reset()
    for latent in ((3, 8, 12), (2, 8, 16)):
        report = ditcompile.explain(model, **spec.make_inputs(batch_size=2, seed=15, latent=latent), options=sparse)
    assert report.graphs[0].analysis.dynamic
    joint = [r for r in report.graphs[0].rows() if r["module"].startswith("transformer_blocks")]
    assert len(joint) == 4 and all(r["kind"] == "joint" and r["plan"].startswith("sparse/") for r in joint), \
        report.format()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options=sparse)
    ditcompile.new_generation(compiled)
    with torch.no_grad():
        for latent in ((3, 8, 12), (2, 8, 16), (3, 12, 12)):
            inputs = spec.make_inputs(batch_size=2, seed=15, latent=latent)
            inputs["timestep"] = torch.full((2,), 900.0)  # one step for the batch: the step is known
            out = run_model(compiled, inputs)
            assert out.shape == run_model(model, inputs).shape and torch.isfinite(out).all()
    calls = sum(s["sparse_calls"] for state in ditcompile.sparse_stats(compiled) for s in state["current"].values())
    assert calls == 3 * 4  # every call of the 4 joint sites ran sparse, at each of the 3 resolutions


def test_mochi_step_cache_through_inductor(mochi):
    """The split pieces hold Mochi's `torch.autocast` region (its rotary embedding): compiled by
    Inductor directly, per input signature. Threshold 0 computes every step: equal to eager."""
    spec, model = mochi
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ditaccel", options={"preset": "mochi", "cache.enabled": True,
                                                                 "cache.threshold": 0.0})
    inputs = mochi_inputs(spec, 2, "padded", seed=13)
    with torch.no_grad():
        for t in (999.0, 990.0):
            inputs["timestep"] = torch.full((2,), t)
            torch.testing.assert_close(run_model(compiled, inputs), run_model(model, inputs), rtol=1e-5, atol=1e-5)
    (state,) = ditcompile.cache_stats(compiled)
    assert sum(b["computed"] for b in state["current"].values()) == 2


def test_a_partial_backend_traces_with_its_options():
    import functools
    spec = get_tiny_model("mochi-tiny")
    torch.manual_seed(0)
    model = spec.build()
    inputs = mochi_inputs(spec, 1, "padded", seed=14)
    graphs = []

    def counting(gm, example_inputs, **kwargs):
        graphs.append(gm)
        return ditcompile.ditaccel_backend(gm, example_inputs, **kwargs)

    counting.trace_context_for = ditcompile.backend.trace_context_for
    for capture, expect_one in ((True, True), (False, False)):
        graphs.clear()
        torch._dynamo.reset()
        backend = functools.partial(counting, options={"compiler": "eager",
                                                       "graph.capture_dynamic_output_shape_ops": capture})
        with torch.no_grad():
            run_model(torch.compile(model, backend=backend), inputs)
        assert (len(graphs) == 1) is expect_one, len(graphs)
