"""Unit tests of the graph analysis on small hand-written modules (no diffusers)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ditcompile
from ditcompile.graph.module_path import block_of, normalize_module_path


def explain(model, *args, dynamic=None, **options):
    return ditcompile.explain(model, *args, options=dict(compiler="eager", **options), strict=True, dynamic=dynamic)


class SDPA(nn.Module):
    """[B,S,H,D] projections permuted to [B,H,S,D], the way diffusers dispatches attention."""

    def __init__(self, dim=32, heads=4, mask=False, dropout=0.0, gqa=False, causal=False):
        super().__init__()
        self.heads, self.mask, self.dropout, self.gqa, self.causal = heads, mask, dropout, gqa, causal
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, dim // 2 if gqa else dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        b, s, _ = x.shape
        ctx = x if context is None else context
        q = self.to_q(x).unflatten(2, (self.heads, -1))
        kv = self.to_kv(ctx).unflatten(2, (self.heads // 2 if self.gqa else self.heads, -1))
        mask = torch.ones(s, ctx.shape[1], dtype=torch.bool).tril() if self.mask else None
        o = F.scaled_dot_product_attention(q.transpose(1, 2), kv.transpose(1, 2), kv.transpose(1, 2),
                                           attn_mask=mask, dropout_p=self.dropout, is_causal=self.causal,
                                           enable_gqa=self.gqa)
        return self.out(o.transpose(1, 2).flatten(2))


class Manual(nn.Module):
    """softmax(q k^T / sqrt(d)) v in [B,H,S,D], plus a baddbmm variant on [B*H,S,D]."""

    def __init__(self, dim=32, heads=4, folded=False, additive_mask=False):
        super().__init__()
        self.heads, self.folded, self.additive_mask = heads, folded, additive_mask
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        b, s, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B,H,S,D]
        d = q.shape[-1]
        if self.folded:
            q, k, v = (t.reshape(b * self.heads, s, d) for t in (q, k, v))
            scores = torch.baddbmm(torch.empty(b * self.heads, s, s), q, k.transpose(-1, -2), beta=0, alpha=d ** -0.5)
            out = torch.bmm(scores.softmax(dim=-1), v).view(b, self.heads, s, d)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
            if self.additive_mask:
                scores = scores + torch.zeros(s, s)
            out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
        return out.transpose(1, 2).reshape(b, s, c)


def _one_site(report):
    assert len(report.sites) == 1
    return report.graphs[0], report.sites[0]


def test_sdpa_bshd_site_is_rewritten_and_matches_eager():
    torch.manual_seed(0)
    model, x = SDPA().eval(), torch.randn(2, 10, 32)
    graph, site = _one_site(explain(model, x))
    assert (site.pattern, site.layout, site.kind) == ("sdpa", "bshd", "self")
    assert (site.batch, site.heads, site.head_dim, site.q_len, site.kv_len) == (2, 4, 8, 10, 10)
    assert graph.rows()[0]["plan"] == "dense/sdpa"
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_cross_attention_kind_and_lengths():
    torch.manual_seed(0)
    model = SDPA().eval()
    _, site = _one_site(explain(model, torch.randn(1, 10, 32), torch.randn(1, 7, 32)))
    assert (site.kind, site.q_len, site.kv_len) == ("cross", 10, 7)


def test_sdpa_with_a_mask_is_rewritten_with_the_mask():
    """A [S, S] bool mask (here a causal tril built in the graph) travels to the op: dense plan, exact."""
    torch.manual_seed(0)
    model, x = SDPA(mask=True).eval(), torch.randn(1, 6, 32)
    graph, site = _one_site(explain(model, x))
    assert site.supported and site.mask_kind == "dense"
    assert graph.rows()[0]["plan"] == "dense/sdpa+dense mask"
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, reason", [
    (dict(dropout=0.1), "dropout_p=0.1"),
    (dict(gqa=True), "enable_gqa"),
])
def test_unsupported_sdpa_sites_are_kept_with_a_reason(kwargs, reason):
    torch.manual_seed(0)
    model, x = SDPA(**kwargs).eval(), torch.randn(1, 6, 32)
    graph, site = _one_site(explain(model, x))
    assert not site.supported and reason in site.reason
    row = graph.rows()[0]
    assert row["plan"] == "original" and reason in row["note"]
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        torch.manual_seed(1)
        out = compiled(x)
        torch.manual_seed(1)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


def test_causal_sdpa_is_rewritten_with_is_causal():
    torch.manual_seed(0)
    model, x = SDPA(causal=True).eval(), torch.randn(1, 9, 32)
    _, site = _one_site(explain(model, x))
    assert site.supported and site.is_causal
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("folded", [False, True])
def test_manual_attention_is_matched_with_its_scale(folded):
    torch.manual_seed(0)
    model, x = Manual(folded=folded).eval(), torch.randn(2, 12, 32)
    graph, site = _one_site(explain(model, x))
    assert site.pattern == ("baddbmm-softmax-bmm" if folded else "matmul-softmax-matmul")
    assert site.heads == 4 and site.head_dim == 8 and site.q_len == 12
    assert site.scale == pytest.approx(8 ** -0.5)
    assert site.folded_heads is folded
    assert graph.passes[0].rewritten == 1
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_manual_attention_with_additive_mask_is_kept():
    model, x = Manual(additive_mask=True).eval(), torch.randn(1, 5, 32)
    _, site = _one_site(explain(model, x))
    assert not site.supported and "additive" in site.reason


class Joint(nn.Module):
    """MM-DiT joint attention: text and video projected separately, concatenated on seq."""

    def __init__(self, text_first: bool, dim=32, heads=2):
        super().__init__()
        self.text_first, self.heads = text_first, heads
        self.video_qkv, self.text_qkv = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.patch = nn.Conv3d(4, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))

    def forward(self, hidden_states, encoder_hidden_states):
        x = self.patch(hidden_states).flatten(2).transpose(1, 2)  # [B, F*H*W, C]
        vq = self.video_qkv(x).unflatten(2, (3, self.heads, -1))
        tq = self.text_qkv(encoder_hidden_states).unflatten(2, (3, self.heads, -1))
        parts = (tq, vq) if self.text_first else (vq, tq)
        qkv = torch.cat(parts, dim=1)  # [B, S_text + S_video, 3, H, D]
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


@pytest.mark.parametrize("text_first", [True, False])
def test_joint_attention_text_position_and_grid(text_first):
    torch.manual_seed(0)
    model = Joint(text_first).eval()
    video, text = torch.randn(1, 4, 2, 6, 8), torch.randn(1, 5, 32)
    report = explain(model, video, text)
    _, site = _one_site(report)
    grid = report.graphs[0].analysis.grid
    assert (grid.frames, grid.height, grid.width) == (2, 3, 4)
    assert site.kind == "joint" and site.q_len == 2 * 3 * 4 + 5
    assert site.text.position == ("before" if text_first else "after") and site.text.length == 5
    assert site.text.token_range(site.q_len) == ((0, 5) if text_first else (24, 29))


class Factorized(nn.Module):
    """Latte-style: spatial attention with batch B*F, temporal attention with batch B*H*W."""

    def __init__(self, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(4, dim, 2, stride=2)
        self.spatial = SDPA(dim, heads=2)
        self.temporal = SDPA(dim, heads=2)

    def forward(self, hidden_states):  # [B, C, F, H, W]
        b, c, f, h, w = hidden_states.shape
        x = self.patch(hidden_states.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # [B*F, D, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B*F, h*w, D]
        x = self.spatial(x)
        hw, d = x.shape[1], x.shape[2]
        x = x.view(b, f, hw, d).transpose(1, 2).reshape(b * hw, f, d)
        return self.temporal(x)


def test_spatial_and_temporal_kinds_in_factorized_attention():
    torch.manual_seed(0)
    report = explain(Factorized().eval(), torch.randn(2, 4, 3, 4, 6))
    grid = report.graphs[0].analysis.grid
    assert (grid.frames, grid.height, grid.width) == (3, 2, 3)
    assert [s.kind for s in report.sites] == ["spatial", "temporal"]
    assert [s.module_path for s in report.sites] == ["spatial", "temporal"]


def test_linear_sites_only_for_parameter_weights():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 16)

        def forward(self, x, w):
            return F.linear(self.proj(x), w)  # the second weight is an input, not a parameter

    report = explain(M().eval(), torch.randn(3, 5, 8), torch.randn(4, 16))
    (linear,) = report.graphs[0].analysis.linear
    assert (linear.module_path, linear.in_features, linear.out_features, linear.tokens) == ("proj", 8, 16, 15)


def test_model_without_attention_passes_through_with_a_note():
    model, x = nn.Sequential(nn.Linear(4, 4), nn.GELU()).eval(), torch.randn(2, 4)
    report = explain(model, x)
    assert report.sites == [] and "no attention" in report.format()
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager"})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("folded", [False, True])
def test_dynamic_shapes_are_rewritten_and_reported_symbolically(folded):
    torch.manual_seed(0)
    model = Manual(folded=folded).eval()
    compiled = torch.compile(model, backend="ditaccel", dynamic=True, options={"compiler": "eager", "strict": True})
    report = explain(model, torch.randn(2, 10, 32), dynamic=True)
    site = report.sites[0]
    assert site.supported and site.q_len is None and "Sq=s" in site.shape_text
    assert report.graphs[0].analysis.dynamic and report.rewritten == 1
    with torch.no_grad():
        for s in (10, 17, 33):
            x = torch.randn(2, s, 32)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_dynamic_float_dropout_is_kept_with_a_reason():
    # dynamic=True turns the float attribute `self.dropout` into a graph input read with .item()
    torch.manual_seed(0)
    model = SDPA().eval()
    report = explain(model, torch.randn(2, 10, 32), dynamic=True)
    assert not report.sites[0].supported and "dropout_p is computed at run time" in report.sites[0].reason
    compiled = torch.compile(model, backend="ditaccel", dynamic=True, options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        x = torch.randn(3, 7, 32)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_graph_break_gives_one_report_per_graph():
    class Breaks(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = SDPA(), SDPA()

        def forward(self, x):
            x = self.a(x)
            torch._dynamo.graph_break()
            return self.b(x)

    torch.manual_seed(0)
    model, x = Breaks().eval(), torch.randn(1, 6, 32)
    report = explain(model, x)
    assert len(report.graphs) == 2 and [len(g.analysis.attention) for g in report.graphs] == [1, 1]
    assert "graph breaks" in report.format()
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_attention_skip_option_keeps_matching_sites():
    model, x = SDPA().eval(), torch.randn(1, 6, 32)
    graph, site = _one_site(explain(model, x, **{"attention.skip": [".*"]}))
    assert graph.rows()[0]["plan"] == "original" and "attention.skip" in graph.rows()[0]["note"]


def test_a_failing_pass_leaves_the_graph_unchanged_and_reports_it(monkeypatch, caplog):
    from ditcompile.passes import attention as attention_pass

    def boom(graph, site, plan, grid=None):
        raise RuntimeError("planner exploded")

    monkeypatch.setattr(attention_pass, "rewrite_site", boom)
    torch.manual_seed(0)
    model, x = SDPA().eval(), torch.randn(1, 6, 32)
    report = ditcompile.explain(model, x)  # not strict: falls back
    assert "planner exploded" in report.graphs[0].error
    assert "runs unchanged" in report.format()
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": "eager"})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    with pytest.raises(Exception, match="planner exploded"):
        ditcompile.explain(model, x, strict=True)


@pytest.mark.parametrize("raw, path", [
    ("L['self'].__dict__['_modules']['blocks'].0.attn1", "blocks.0.attn1"),
    ("L['self'].transformer_blocks[3].attn", "transformer_blocks.3.attn"),
    ("L['self']", ""),
    ("getattr(L['self'].blocks, '0').attn1", "blocks.0.attn1"),
])
def test_module_path_spellings(raw, path):
    assert normalize_module_path(raw) == path


def test_block_of_path():
    ref = block_of("single_transformer_blocks.12.attn.to_q")
    assert (ref.container, ref.index, ref.path) == ("single_transformer_blocks", 12, "single_transformer_blocks.12")
    assert block_of("proj_out") is None


class ControlledDiT(nn.Module):
    """A DiT forward with the inputs real pipelines pass: per-token timesteps [B, S], text, a pooled
    projection, ControlNet residuals (they change every step), token ids and rotary tables."""

    def __init__(self, dim=16):
        super().__init__()
        self.proj, self.attn = nn.Linear(dim, dim), SDPA(dim, heads=2)

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections,
                controlnet_block_samples, img_ids, image_rotary_emb):
        x = self.proj(hidden_states) + timestep[..., None] * 1e-3 + pooled_projections[:, None]
        x = x + controlnet_block_samples[0] + img_ids.sum() * 0 + image_rotary_emb.mean()
        return self.attn(x, encoder_hidden_states)


def test_graph_inputs_are_given_their_roles_by_name_and_shape():
    from ditcompile.graph.analysis import analyze_graph

    captured = []

    def capture(gm, example_inputs):
        captured.append((gm, example_inputs))
        return gm.forward

    b, s, d = 2, 12, 16
    args = (torch.randn(b, s, d), torch.full((b, s), 500.0), torch.randn(b, 5, d), torch.randn(b, d),
            [torch.randn(b, s, d)], torch.zeros(s, 3), torch.randn(s, 4))
    torch._dynamo.reset()
    torch.compile(ControlledDiT(d), backend=capture)(*args)
    (gm, example_inputs), = captured
    analysis = analyze_graph(gm, example_inputs)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert "timestep" in names[analysis.timestep_input]  # a [B, S] per-token timestep
    assert "hidden_states" in names[analysis.main_input_index]
    conditions = sorted(names[i] for i in analysis.condition_inputs)
    assert [c for c in conditions if "encoder_hidden_states" in c or "pooled_projections" in c] == conditions
    assert len(conditions) == 2  # not the ControlNet residuals, token ids, rotary tables or parameters
