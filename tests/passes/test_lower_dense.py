"""Dense lowering (issue 15): with plain dense plans the backend hands Inductor aten SDPA, not
`ditaccel::attention`; plans that need our runtime keep the op; nothing reads tensor values on
the host where CUDA graphs may capture the call.

The references are independent of the backend: the post-grad graph plain `torch.compile` hands
Inductor, the model's eager output, the eager count of attention calls, and aten's own list of
operations that read a tensor on the host.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.utils._python_dispatch import TorchDispatchMode

import ditcompile
import ditcompile.backend as backend_mod
from ditcompile.autotune import Autotuner, TuneKey, recording
from ditcompile.kernels.attention.flash_fwd import sparse_flash_attention
from ditcompile.kernels.attention.reference import key_bias_from_mask
from ditcompile.ops import attention_op
from ditcompile.ops.impl.masks import CallMask
from ditcompile.ops.tunables import DENSE, TUNABLES, AttentionProblem
from ditcompile.plans import AttentionPlan
from tests.attention_counting import count_eager_attention
from tests.models.zoo import get_tiny_model, run_model

HOST_READS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero"}
"""aten operations that copy a tensor's value to the host: a device sync, forbidden while a CUDA
graph is being captured (`.item()`, `bool(t)`, `int(t)`, `t.tolist()` all become the first)."""


class _PostGradOps(CustomGraphPass):
    """Inductor's post-grad custom pass that records the call targets of every graph it sees."""

    def __init__(self) -> None:
        self.graphs: list[Counter] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.graphs.append(Counter(str(n.target) for n in graph.nodes if n.op == "call_function"))

    def uuid(self):
        return None  # never cached: the pass must see every compile


def post_grad_ops(compile_model, inputs: dict) -> tuple[Counter, torch.Tensor]:
    """The aten calls of every graph Inductor compiled for one call of `compile_model()`'s result
    (summed over graphs), and the call's output."""
    capture = _PostGradOps()
    torch._dynamo.reset()
    with torch._inductor.config.patch(post_grad_custom_post_pass=capture, fx_graph_cache=False), torch.no_grad():
        out = run_model(compile_model(), inputs)
    assert capture.graphs, "Inductor compiled nothing"
    return sum(capture.graphs, Counter()), out


def sdpa_calls(ops: Counter) -> int:
    return sum(n for target, n in ops.items() if "scaled_dot_product" in target)


def ditaccel_calls(ops: Counter) -> int:
    return sum(n for target, n in ops.items() if "ditaccel" in target)


def test_dense_defaults_hand_inductor_the_graph_plain_torch_compile_hands_it():
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs(seed=11)
    eager_calls = count_eager_attention(model, inputs).sdpa
    with torch.no_grad():
        eager = run_model(model, inputs)
    plain, plain_out = post_grad_ops(lambda: torch.compile(model), inputs)
    ours, ours_out = post_grad_ops(lambda: torch.compile(model, backend="ditaccel"), inputs)
    opaque, _ = post_grad_ops(lambda: torch.compile(model, backend="ditaccel",
                                                    options={"attention.lower_dense": False}), inputs)
    assert ditaccel_calls(opaque) == eager_calls  # the capture does see our op when it is there
    assert ours == plain  # the same aten operations, copies included: nothing added, nothing lost
    assert sdpa_calls(ours) == eager_calls and ditaccel_calls(ours) == 0
    assert not HOST_READS & set(ours)
    torch.testing.assert_close(ours_out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_out, plain_out, rtol=1e-6, atol=1e-6)


class _Handed:
    """Replaces the backend's Inductor call: records the FX graph it would compile, runs it as is."""

    def __init__(self, monkeypatch) -> None:
        self.graphs: list[torch.fx.GraphModule] = []
        self.patches: list[dict] = []
        monkeypatch.setattr(backend_mod, "_inductor", self)

    def __call__(self, gm, example_inputs, config, mode, no_cudagraphs=False):
        self.graphs.append(gm)
        patches = backend_mod._inductor_patches(config, mode)
        if no_cudagraphs:
            patches["triton.cudagraphs"] = False
        self.patches.append(patches)
        return gm.forward

    def targets(self) -> Counter:
        return Counter(n.target for gm in self.graphs for n in gm.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("name", ["manual-dit-tiny", "hunyuan_video-tiny", "cogvideox-tiny", "flux-tiny"])
def test_every_dense_site_reaches_inductor_as_sdpa_and_outputs_equal_eager(monkeypatch, name):
    """Hand-written attention (matmul-softmax in [B,H,S,D], baddbmm in [B*H,S,D]), key-padding and
    dense masks (HunyuanVideo and its token refiner), joint text-before-video (CogVideoX) and
    [B,H,S,D] SDPA (Flux): every site the eager model computes becomes aten SDPA."""
    spec = get_tiny_model(name)
    model, inputs = spec.build(), spec.make_inputs(seed=4)
    counter = count_eager_attention(model, inputs)
    with torch.no_grad():
        eager = run_model(model, inputs)
    handed = _Handed(monkeypatch)
    report = ditcompile.explain(model, **inputs)  # the same passes; rows say what was lowered
    with torch.no_grad():
        out = run_model(torch.compile(model, backend="ditaccel"), inputs)
    targets = handed.targets()
    assert targets[attention_op] == 0
    assert targets[F.scaled_dot_product_attention] == counter.total
    assert not any(getattr(t, "__name__", "") == "softmax" for t in targets)  # hand-written sites too
    rows = [r for g in report.graphs for r in g.rows()]
    assert len(rows) == counter.total and all(r["lowered"] and r["plan"].startswith("dense/sdpa") for r in rows)
    assert all(r["kernel"].startswith("aten SDPA") for r in rows)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


def test_masks_reach_sdpa_as_the_model_built_them(monkeypatch):
    spec = get_tiny_model("hunyuan_video-tiny")
    model, inputs = spec.build(), spec.make_inputs(seed=2, batch_size=2)
    handed = _Handed(monkeypatch)
    with torch.no_grad():
        run_model(torch.compile(model, backend="ditaccel"), inputs)
    masks = [n.args[3] for gm in handed.graphs for n in gm.graph.nodes
             if n.op == "call_function" and n.target is F.scaled_dot_product_attention]
    shapes = {tuple(m.meta["example_value"].shape) for m in masks if m is not None}
    assert any(s[1:3] == (1, 1) for s in shapes), shapes  # the joint blocks' key padding [B, 1, 1, S]
    assert any(s[2] > 1 for s in shapes), shapes           # the refiner's dense [B, H, T, T]


@pytest.mark.parametrize("options,why", [
    ({"attention.quant": "int8"}, "8-bit"),
    ({"attention.backend": "triton"}, "our kernel"),
    ({"attention.lower_dense": False}, "option"),
    ({"preset": "wan2.1", "sparse.enabled": True, "sparse.min_tokens": 0, "sparse.dense_steps": 0}, "sparse"),
])
def test_plans_that_need_the_runtime_keep_the_op(monkeypatch, options, why):
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs(seed=6)
    handed = _Handed(monkeypatch)
    with torch.no_grad():
        run_model(torch.compile(model, backend="ditaccel", options=options), inputs)
    report = ditcompile.explain(model, **inputs, options=options)
    rows = [r for g in report.graphs for r in g.rows()]
    kept = [r for r in rows if not r["lowered"]]
    assert handed.targets()[attention_op] == len(kept) > 0
    if why != "sparse":  # sparse: cross-attention stays dense and is lowered
        assert len(kept) == len(rows)
    assert not any(r["kernel"].startswith("aten SDPA") for r in kept)


class Attn(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def _qkv(seed=0, s=64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, s, 16, generator=g) for _ in range(3)]


def test_a_tuned_kernel_other_than_sdpa_keeps_the_op_and_runs(tmp_path, monkeypatch):
    q, k, v = _qkv(3)
    # a cache entry whose winner is sdpa.math (the injected timer makes it the fastest)
    timer = (lambda fn, budget, device: 0.5 if fn.__defaults__[0].name == "sdpa.math" else 1.0)
    Autotuner("online", tmp_path, time_ms=timer).tune(TUNABLES[DENSE], AttentionProblem(q, k, v, "bhsd", None, False))
    base = {"autotune.cache_dir": str(tmp_path)}
    cases = {"offline": False, "off": True, "online": False}
    for mode, lowered in cases.items():
        report = ditcompile.explain(Attn(), q, k, v, options={**base, "autotune.mode": mode})
        row = report.graphs[0].rows()[0]
        assert row["lowered"] is lowered, (mode, row)
        if mode == "offline":
            assert "tuning cache picks sdpa.math" in row["note"] and row["kernel"] == "sdpa.math (cache)"
    handed = _Handed(monkeypatch)
    out = torch.compile(Attn(), backend="ditaccel", options=base)(q, k, v)
    assert handed.targets()[attention_op] == 1
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    # another static shape (another length bucket) has no entry: lowered
    torch._dynamo.reset()
    q2, k2, v2 = _qkv(4, s=200)
    report = ditcompile.explain(Attn(), q2, k2, v2, options=base)
    assert report.graphs[0].rows()[0]["lowered"]
    # the same shape recompiled with symbolic lengths (Dynamo's automatic dynamic shapes): the
    # cache's winner for any length may run, so the op is kept
    report = ditcompile.explain(Attn(), q, k, v, options=base)
    row = report.graphs[0].rows()[0]
    assert not row["lowered"] and "shapes like this one" in row["note"], row


def test_a_cached_sdpa_winner_is_lowered_and_the_report_says_the_cache_chose_it(tmp_path):
    q, k, v = _qkv(7)
    timer = (lambda fn, budget, device: 0.5 if fn.__defaults__[0].name == "sdpa" else 1.0)
    Autotuner("online", tmp_path, time_ms=timer).tune(TUNABLES[DENSE], AttentionProblem(q, k, v, "bhsd", None, False))
    torch._dynamo.reset()
    row = ditcompile.explain(Attn(), q, k, v, options={"autotune.cache_dir": str(tmp_path)}).graphs[0].rows()[0]
    assert row["lowered"] and row["kernel_from_cache"] is True and row["kernel"] == "aten SDPA (lowered; cache: sdpa)"
    torch._dynamo.reset()
    row = ditcompile.explain(Attn(), q, k, v, options={"autotune.cache_dir": str(tmp_path / "empty")}).graphs[0].rows()[0]
    assert row["lowered"] and row["kernel_from_cache"] is False and "cache" not in row["kernel"]


def test_recording_keeps_the_op_so_the_tuner_sees_the_calls():
    q, k, v = _qkv(5)
    with recording() as recorder:
        report = ditcompile.explain(Attn(), q, k, v)
    assert not report.graphs[0].rows()[0]["lowered"]
    assert "records the calls" in report.graphs[0].rows()[0]["note"]
    assert [r.tunable.op for r in recorder.problems.values()] == [DENSE]


def test_dynamic_shapes_lower_too_and_stay_exact(monkeypatch):
    spec = get_tiny_model("wan2.1-tiny")
    model = spec.build()
    handed = _Handed(monkeypatch)
    compiled = torch.compile(model, backend="ditaccel", dynamic=True)
    for latent in ((3, 8, 12), (2, 6, 10)):
        inputs = spec.make_inputs(seed=7, latent=latent)
        with torch.no_grad():
            torch.testing.assert_close(run_model(compiled, inputs), run_model(model, inputs), rtol=1e-5, atol=1e-5)
    assert handed.graphs and handed.targets()[attention_op] == 0
    assert handed.targets()[F.scaled_dot_product_attention] > 0


def _mode_patches(monkeypatch, options) -> tuple[dict, list[str]]:
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs(seed=8)
    handed = _Handed(monkeypatch)
    options = {"mode": "reduce-overhead", **options}
    with torch.no_grad():
        run_model(torch.compile(model, backend="ditaccel", options=options), inputs)
    report = ditcompile.explain(model, **inputs, options=options)  # explain says it too
    return handed.patches[0], [n for g in report.graphs for n in g.notes]


def test_cuda_graphs_stay_on_unless_a_plan_needs_the_step_or_the_host(monkeypatch):
    patches, notes = _mode_patches(monkeypatch, {})
    assert patches.get("triton.cudagraphs") is True and not notes  # reduce-overhead's CUDA graphs, untouched
    patches, notes = _mode_patches(monkeypatch, {"attention.quant": "int8"})  # opaque, step-independent
    assert patches.get("triton.cudagraphs") is True and not any("CUDA graphs" in n for n in notes)
    patches, notes = _mode_patches(monkeypatch, {"preset": "wan2.1", "sparse.enabled": True, "sparse.min_tokens": 0})
    assert patches.get("triton.cudagraphs") is False
    assert any(n.startswith("CUDA graphs off: the plans depend on the denoising step") for n in notes), notes
    _, notes = _mode_patches(monkeypatch, {"preset": "wan2.1", "cache.enabled": True})
    assert any(n.startswith("CUDA graphs off: the step cache decides per call") for n in notes), notes


def test_a_dense_mask_read_on_the_host_turns_cuda_graphs_off(monkeypatch):
    spec = get_tiny_model("hunyuan_video-tiny")  # its token refiner has a dense [B, H, T, T] mask
    model, inputs = spec.build(), spec.make_inputs(seed=9)
    handed = _Handed(monkeypatch)
    options = {"mode": "reduce-overhead", "attention.backend": "triton"}
    with torch.no_grad():
        run_model(torch.compile(model, backend="ditaccel", options=options), inputs)
    assert any(p.get("triton.cudagraphs") is False for p in handed.patches)
    notes = [n for g in ditcompile.explain(model, **inputs, options=options).graphs for n in g.notes]
    assert any("CUDA graphs off" in n and "dense mask's values on the host" in n for n in notes), notes
    handed.patches.clear()
    torch._dynamo.reset()
    with torch.no_grad():  # the SDPA backend takes the mask as it is: lowered, CUDA graphs on
        run_model(torch.compile(model, backend="ditaccel", options={"mode": "reduce-overhead"}), inputs)
    assert all(p.get("triton.cudagraphs") is True for p in handed.patches)


def test_cache_entries_are_matched_on_every_static_size_and_without_block_masks(tmp_path):
    """Dynamic batch (CFG) keeps the cached lengths in the lookup; an entry for a block-mask
    problem (our kernel's key) is not the dense SDPA plan's problem."""
    q, k, v = _qkv(9)
    timer = (lambda fn, budget, device: 0.5 if fn.__defaults__[0].name == "sdpa.math" else 1.0)
    Autotuner("online", tmp_path, time_ms=timer).tune(TUNABLES[DENSE], AttentionProblem(q, k, v, "bhsd", None, False))
    options = {"autotune.cache_dir": str(tmp_path)}
    torch._dynamo.reset()
    other = [t[:, :, :40] for t in _qkv(10)]  # another length: lowered, also when the batch becomes symbolic
    ditcompile.explain(Attn(), *other, options=options)
    batch2 = [torch.cat([t, t]) for t in other]
    report = ditcompile.explain(Attn(), *batch2, options=options)  # recompiled with a symbolic batch
    assert report.graphs[0].analysis.dynamic
    assert report.graphs[0].rows()[0]["lowered"], report.format()
    store = Autotuner("offline", tmp_path).store(q.device)
    (text, entry), = store.entries(refresh=True).items()
    key = TuneKey.from_str(text)
    blocked = TuneKey(key.kernel, key.device, tuple(sorted({**dict(key.fields), "blocks": (16, 16),
                                                            "density": 0.5}.items())))
    data = json.loads(store.path.read_text())
    data["entries"] = {blocked.to_str(): entry}
    store.path.write_text(json.dumps(data))
    ditcompile.clear_caches()
    torch._dynamo.reset()
    row = ditcompile.explain(Attn(), q, k, v, options=options).graphs[0].rows()[0]
    assert row["lowered"] and row["kernel_from_cache"] is False, row


class _HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"aten.{func.overloadpacket.__name__}"
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _padding(b, s, valid):
    mask = torch.zeros(b, 1, 1, s, dtype=torch.bool)
    for i, n in enumerate(valid):
        mask[i, ..., :n] = True
    return mask


@pytest.mark.parametrize("quant,padded", [("none", False), ("none", True), ("int8", False), ("int8", True)])
def test_opaque_step_independent_calls_never_read_values_on_the_host(quant, padded):
    """What CUDA-graph capture would record: the op's call (the plan's default path on the CPU)
    and the kernel launcher's path (the Triton interpreter: the code a GPU runs) read no tensor
    value on the host. The detector itself is checked on the dense-mask translation, which must."""
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 64, 2, 16, generator=g) for _ in range(3))
    mask = _padding(2, 64, (40, 64)) if padded else None
    plan = AttentionPlan(site_path="s", backend="triton", quant=quant, mask="key_padding" if padded else "none")
    reads = _HostReads()
    with reads:
        out = attention_op(q, k, v, "bshd", None, False, plan.to_json(), None, mask)
        kernel = sparse_flash_attention(q, k, v, None, layout="bshd", quant=quant,
                                        key_bias=key_bias_from_mask(mask) if padded else None)
    assert reads.seen == []
    exact = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask).transpose(1, 2)
    tol = 1e-5 if quant == "none" else 0.1
    assert (out - exact).norm() / exact.norm() < tol and (kernel - exact).norm() / exact.norm() < tol
    control = _HostReads()
    with control:
        CallMask("dense", torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()).block_mask(64, 64, 16)
    assert control.seen  # the detector sees a host read when there is one
