"""The pass pipeline on a real Dynamo graph: the analysis is frozen, the attention pass rewrites each
site once, and the later passes find the ops by overload and change only their plan argument."""
import dataclasses

import pytest
import torch

from ditcompile.config import resolve_config
from ditcompile.graph.analysis import analyze_graph
from ditcompile.ops import attention_op
from ditcompile.passes.attention import AttentionRewritePass
from ditcompile.passes.attention_quant import AttentionQuantPass
from ditcompile.passes.base import SITE_INDEX, PassContext, attention_nodes
from ditcompile.passes.manager import PassManager
from ditcompile.passes.sparse import SparseAttentionPass
from ditcompile.plans import parse_plan
from tests.models.zoo import get_tiny_model

OPTIONS = {"preset": "wan2.1", "sparse.enabled": True, "sparse.block_size": 16, "sparse.dense_blocks": [1],
           "attention.quant": "int8"}


def capture(name="wan2.1-tiny"):
    """The first Dynamo graph of a tiny model and its example inputs."""
    spec = get_tiny_model(name)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append((gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(spec.build(), backend=backend)(**spec.make_inputs())
    return graphs[0]


def fields_of(site):
    """A site's field values (shallow: FX nodes compare by identity)."""
    return tuple(getattr(site, f.name) for f in dataclasses.fields(site))


def sdpa_count(gm):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and "scaled_dot_product" in str(n.target))


def test_the_analysis_is_frozen():
    gm, example_inputs = capture()
    analysis = analyze_graph(gm, example_inputs)
    assert isinstance(analysis.attention, tuple) and isinstance(analysis.linear, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.attention[0].kind = "cross"
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.grid = None


def test_each_pass_changes_what_it_owns_and_nothing_else():
    gm, example_inputs = capture()
    config = resolve_config(OPTIONS)
    analysis = analyze_graph(gm, example_inputs, config.graph.token_grid, config.graph.text_position)
    ctx = PassContext(config, analysis, example_inputs)
    sites_before = [fields_of(s) for s in analysis.attention]
    assert sdpa_count(gm) == 4 and not attention_nodes(gm)

    AttentionRewritePass(config)(gm, ctx)
    ops = attention_nodes(gm)
    assert sdpa_count(gm) == 0 and [i for _, i, _ in ops] == [0, 1, 2, 3]  # one op per site, in order
    assert all(n.target is attention_op and n.meta[SITE_INDEX] == i for n, i, _ in ops)
    assert {p.describe() for _, _, p in ops} == {"dense/sdpa"}
    inputs_of = {n: n.args[:6] for n, _, _ in ops}

    sparse = SparseAttentionPass(config)(gm, ctx)
    after = attention_nodes(gm)
    assert [n for n, _, _ in after] == [n for n, _, _ in ops]        # the same nodes ...
    assert all(n.args[:6] == inputs_of[n] for n, _, _ in after)      # ... with the same tensors and flags
    plans = {analysis.site(i).module_path: p.describe() for _, i, p in after}
    assert plans == {"blocks.0.attn1": "sparse/radial, dense 10 steps", "blocks.0.attn2": "dense/sdpa",
                     "blocks.1.attn1": "dense/sdpa", "blocks.1.attn2": "dense/sdpa"}
    assert len(sparse.decisions) == 4 and sparse.rewritten == 0

    AttentionQuantPass(config)(gm, ctx)
    final = {analysis.site(i).module_path: parse_plan(n.args[6]) for n, i, _ in attention_nodes(gm)}
    assert {p.quant for p in final.values()} == {"int8"}
    assert final["blocks.0.attn1"].sparse is not None and final["blocks.0.attn2"].sparse is None
    assert [fields_of(s) for s in analysis.attention] == sites_before  # the analysis never changed


def test_the_manager_builds_the_pipeline_from_the_config():
    assert PassManager.from_config(resolve_config(None)).names() == ["attention", "lower_dense"]
    assert PassManager.from_config(resolve_config({"attention.lower_dense": False})).names() == ["attention"]
    assert PassManager.from_config(resolve_config(OPTIONS)).names() == ["attention", "sparse", "attention_quant",
                                                                        "lower_dense"]
    assert PassManager.from_config(resolve_config({**OPTIONS, "attention.enabled": False})).names() == []
    full = PassManager.from_config(resolve_config({**OPTIONS, "cache.enabled": True}))
    assert full.names() == ["attention", "sparse", "attention_quant", "lower_dense", "step_cache"]
