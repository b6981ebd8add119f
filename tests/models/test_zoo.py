"""Tests for the tiny model zoo (tests/models/zoo.py over ditcompile.models) and the hand-written DiT."""

from __future__ import annotations

import importlib.util
import inspect
import os

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.models import zoo
from tests.models.zoo import TINY_MODELS, get_tiny_model, normalize_module_path, run_model

pytestmark = [
    # Mochi's RoPE opens torch.autocast("cpu", torch.float32), which warns on CPU.
    pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None

EXPECTED_NAMES = {
    "wan2.1-tiny": "wan2.1",
    "hunyuan_video-tiny": "hunyuan_video",
    "cogvideox-tiny": "cogvideox",
    "mochi-tiny": "mochi",
    "ltx_video-tiny": "ltx_video",
    "latte-tiny": "latte",
    "flux-tiny": "flux",
    "sd3-tiny": "sd3",
    "pixart-tiny": "pixart",
    "manual-dit-tiny": "manual",
}

_BUILT: dict[str, torch.nn.Module] = {}


def _entry(name: str) -> zoo.TinyModel:
    entry = get_tiny_model(name)
    if entry.preset != "manual" and not HAVE_DIFFUSERS:
        pytest.skip("diffusers is not installed")
    return entry


def _model(name: str) -> torch.nn.Module:
    """One shared build per model (tests below must not mutate it)."""
    if name not in _BUILT:
        _BUILT[name] = _entry(name).build()
    return _BUILT[name]


def _forward(name: str, **input_kwargs) -> torch.Tensor:
    entry = _entry(name)
    with torch.no_grad():
        return run_model(_model(name), entry.make_inputs(**input_kwargs))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_names_and_presets():
    assert {name: e.preset for name, e in TINY_MODELS.items()} == EXPECTED_NAMES
    for name, entry in TINY_MODELS.items():
        assert entry.name == name
        assert entry.expected.text_position in (None, "before", "after")
        assert entry.expected.attention, name
        for kind in entry.expected.attention.values():
            assert kind in zoo.ATTENTION_KINDS
        f, h, w = entry.expected.grid
        assert f >= 1 and h >= 1 and w >= 1
        if entry.expected.latent_layout in ("BCFHW", "BFCHW") or name in ("ltx_video-tiny",):
            assert f >= 2, f"{name}: video models need >= 2 latent frames"
        assert h != w, f"{name}: spatial grid should not be square"


def test_tiny_model_is_frozen():
    entry = get_tiny_model("wan2.1-tiny")
    with pytest.raises(Exception):
        entry.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.expected.attention["x"] = "self"  # type: ignore[index]


def test_get_tiny_model_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as info:
        get_tiny_model("nope-tiny")
    message = str(info.value)
    assert "nope-tiny" in message
    for name in TINY_MODELS:
        assert name in message


def test_make_inputs_signature():
    for entry in TINY_MODELS.values():
        params = inspect.signature(entry.make_inputs).parameters
        assert list(params)[:4] == ["batch_size", "seed", "dtype", "device"], entry.name
        assert params["batch_size"].default == 1
        assert params["seed"].default == 0
        assert params["dtype"].default is torch.float32
        assert params["device"].default == "cpu"


def test_normalize_module_path():
    assert normalize_module_path("L['self'].__dict__['_modules']['blocks'].0.attn1") == "blocks.0.attn1"
    assert normalize_module_path("L['self'].blocks.0.attn1") == "blocks.0.attn1"
    assert normalize_module_path("L['self'].blocks[0].attn1") == "blocks.0.attn1"
    assert normalize_module_path("getattr(getattr(L['self'].blocks, '0'), 'attn1')") == "blocks.0.attn1"
    assert normalize_module_path("blocks.0.attn1") == "blocks.0.attn1"
    expected = get_tiny_model("latte-tiny").expected
    assert expected.kind_of("L['self'].__dict__['_modules']['temporal_transformer_blocks'].1.attn1") == "temporal"
    assert expected.kind_of("transformer_blocks.0.attn1") == "spatial"
    assert expected.kind_of("transformer_blocks.0.attn2") == "cross"
    assert expected.kind_of("transformer_blocks.0.ff") is None


def test_run_model_unwraps_outputs():
    t = torch.ones(2)

    class Out:
        sample = t

    class M(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, **kwargs):
            return self.out

    for out in (t, (t,), [t, None], Out(), {"sample": t}, ((t,),)):
        assert run_model(M(out), {}) is t


# --------------------------------------------------------------------------------------------------
# Per model
# --------------------------------------------------------------------------------------------------

NAMES = list(EXPECTED_NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic(name):
    entry = _entry(name)
    a = entry.build()
    b = entry.build()
    assert not a.training and not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{name}: {key} differs between builds"
    for p in a.parameters():
        assert p.dtype == torch.float32
        if p.numel() > 1:
            assert p.any(), f"{name}: a parameter is all zeros"
    # the global RNG is left alone
    state = torch.random.get_rng_state()
    entry.build()
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_finite_nonzero(name):
    entry = _entry(name)
    inputs = entry.make_inputs()
    if "return_dict" in inspect.signature(type(_model(name)).forward).parameters:
        assert inputs.get("return_dict") is False
    out = _forward(name)
    latent = inputs[entry.expected.latent_key]
    if entry.expected.output_matches_input:
        assert out.shape == latent.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0
    assert out.std() > 1e-3

    # grid / layout consistency between the latent and the expected token grid
    f, h, w = entry.expected.grid
    layout = entry.expected.latent_layout
    if layout == "BCFHW":
        assert latent.shape[2] == f
        assert latent.shape[3] % h == 0 and latent.shape[4] % w == 0
        assert latent.shape[3] // h == latent.shape[4] // w  # same spatial patch size
    elif layout == "BFCHW":
        assert latent.shape[1] == f
        assert latent.shape[3] // h == latent.shape[4] // w
    elif layout == "BCHW":
        assert f == 1 and latent.shape[2] // h == latent.shape[3] // w
    else:
        assert layout == "BSC" and latent.shape[1] == f * h * w


@pytest.mark.parametrize("name", NAMES)
def test_inputs_depend_on_seed(name):
    entry = _entry(name)
    a0 = entry.make_inputs(seed=0)
    a0_again = entry.make_inputs(seed=0)
    for key, value in a0.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, a0_again[key]), f"{name}: make_inputs(seed=0) not reproducible ({key})"
    out0 = _forward(name, seed=0)
    out0_again = _forward(name, seed=0)
    out1 = _forward(name, seed=1)
    assert torch.equal(out0, out0_again)
    assert not torch.allclose(out0, out1)


@pytest.mark.parametrize("name", NAMES)
def test_batch_and_dtype_arguments(name):
    entry = _entry(name)
    inputs = entry.make_inputs(batch_size=2, dtype=torch.bfloat16)
    latent = inputs[entry.expected.latent_key]
    assert latent.shape[0] == 2
    assert latent.dtype == torch.bfloat16
    out = _forward(name, batch_size=2)
    assert out.shape[0] == 2


class _AttentionRecorder(TorchFunctionMode):
    """Records (module path, batch, Sq, Sk) for every SDPA call and every softmax over attention scores."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.stack: list[str] = []
        self.calls: list[tuple[str, str, int, int, int]] = []
        self.handles = []
        for mod_name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._push(mod_name)))
            self.handles.append(module.register_forward_hook(self._pop))

    def _push(self, mod_name):
        def hook(module, args):
            self.stack.append(mod_name)

        return hook

    def _pop(self, module, args, output):
        self.stack.pop()

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = self.stack[-1] if self.stack else ""
        if func is F.scaled_dot_product_attention:
            q = kwargs["query"] if "query" in kwargs else args[0]
            k = kwargs["key"] if "key" in kwargs else args[1]
            batch = int(torch.tensor(q.shape[:-3]).prod()) if q.dim() > 3 else 1
            self.calls.append((where, "sdpa", batch, q.shape[-2], k.shape[-2]))
        elif func in (torch.softmax, torch.Tensor.softmax, F.softmax):
            scores = args[0]
            if scores.dim() == 4:  # [B, H, Sq, Sk]
                self.calls.append((where, "softmax", scores.shape[0], scores.shape[-2], scores.shape[-1]))
            elif scores.dim() == 3:  # [B*H, Sq, Sk]: heads folded into the batch
                self.calls.append((where, "softmax", -1, scores.shape[-2], scores.shape[-1]))
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_expected_attention_matches_model(name):
    """Every attention call site is described by ``expected`` and sees the expected token counts."""
    entry = _entry(name)
    model = _model(name)
    exp = entry.expected
    recorder = _AttentionRecorder(model)
    try:
        with torch.no_grad(), recorder:
            run_model(model, entry.make_inputs())
    finally:
        recorder.remove()

    calls = recorder.calls
    impl = "softmax" if exp.attention_impl == "manual" else "sdpa"
    assert calls and all(c[1] == impl for c in calls), calls

    f, h, w = exp.grid
    video, text = f * h * w, exp.text_tokens
    want = {
        "self": (1, video, video),
        "cross": (1, video, text),
        "joint": (1, video + text, video + text),
        "spatial": (f, h * w, h * w),
        "temporal": (h * w, f, f),
        "text_self": (1, text, text),
        "pool": (1, 1, text + 1),
    }
    seen = set()
    for where, _, batch, sq, sk in calls:
        kind = exp.kind_of(where)
        assert kind is not None, f"{name}: attention in {where!r} is not described by expected"
        want_batch, want_sq, want_sk = want[kind]
        if kind == "cross" and "spatial" in exp.attention.values():
            # Latte: cross-attention runs per frame, like the spatial attention.
            want_batch, want_sq = f, h * w
        assert (sq, sk) == (want_sq, want_sk), f"{name}: {where} ({kind}) saw Sq={sq}, Sk={sk}"
        if batch != -1:
            assert batch == want_batch, f"{name}: {where} ({kind}) batch {batch} != {want_batch}"
        seen.add(where)

    listed = exp.attention_modules(model, include_aux=True)
    assert listed, f"{name}: no module matches expected.attention"
    assert set(listed) == seen, f"{name}: listed {sorted(listed)} but attention ran in {sorted(seen)}"
    assert any(exp.kind_of(w) in zoo.ATTENTION_KINDS for w in seen)


def _first_joint_query(model, expected, inputs) -> torch.Tensor:
    """The query of the first joint-attention SDPA call, as ``[B, H, S, D]``."""
    captured = []
    recorder = _AttentionRecorder(model)

    class Grab(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention and not captured:
                where = recorder.stack[-1] if recorder.stack else ""
                if expected.kind_of(where) == "joint":
                    captured.append((kwargs["query"] if "query" in kwargs else args[0]).clone())
            return func(*args, **kwargs)

    try:
        with torch.no_grad(), Grab():
            run_model(model, inputs)
    finally:
        recorder.remove()
    assert captured, "no joint attention call seen"
    return captured[0]


@pytest.mark.parametrize("name", [n for n in NAMES if get_tiny_model(n).expected.text_position is not None])
def test_text_position_in_joint_attention(name):
    """In the first joint attention, the text rows of q do not depend on the latent: find where they are."""
    entry = _entry(name)
    exp = entry.expected
    model = _model(name)
    inputs = entry.make_inputs(seed=0)
    perturbed = dict(inputs)
    perturbed[exp.latent_key] = inputs[exp.latent_key] + 1.0
    q0 = _first_joint_query(model, exp, inputs)
    q1 = _first_joint_query(model, exp, perturbed)
    video_rows = (q0 - q1).abs().amax(dim=(0, 1, 3)) > 0  # [S]
    t, v = exp.text_tokens, exp.video_tokens
    assert video_rows.numel() == t + v
    text_first = (~video_rows[:t]).all() and video_rows[t:].all()
    text_last = video_rows[:v].all() and (~video_rows[v:]).all()
    assert text_first or text_last, f"{name}: cannot locate text rows"
    assert exp.text_position == ("before" if text_first else "after")


@pytest.mark.parametrize("name", NAMES)
def test_every_attention_module_affects_output(name):
    """No zero-initialised output layer or gate hides a block: every attention module gets gradient."""
    entry = _entry(name)
    model = entry.build()  # private copy: we write .grad
    out = run_model(model, entry.make_inputs())
    out.square().mean().backward()
    for mod_name, kind in entry.expected.attention_modules(model, include_aux=True).items():
        module = model.get_submodule(mod_name)
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), f"{name}: {mod_name} ({kind}) has no gradient"


# --------------------------------------------------------------------------------------------------
# The hand-written DiT
# --------------------------------------------------------------------------------------------------


def test_manual_dit_has_no_sdpa_and_expected_structure():
    from tests.models.manual_dit import ManualCrossAttention, ManualSelfAttention, ManualVideoDiT

    model = _model("manual-dit-tiny")
    assert isinstance(model, ManualVideoDiT)
    names = dict(model.named_modules())
    assert isinstance(names["blocks.0.attn1"], ManualSelfAttention)
    assert isinstance(names["blocks.0.attn2"], ManualCrossAttention)
    assert "patch_embedding" in names and "proj_out" in names
    assert isinstance(names["patch_embedding"], torch.nn.Conv3d)
    assert names["patch_embedding"].kernel_size == (1, 2, 2)

    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Spy():
        run_model(model, get_tiny_model("manual-dit-tiny").make_inputs())
    assert F.scaled_dot_product_attention not in seen
    assert torch.matmul in seen and torch.baddbmm in seen and torch.bmm in seen


def test_manual_attention_matches_sdpa():
    from tests.models.manual_dit import ManualCrossAttention, ManualSelfAttention

    torch.manual_seed(0)
    x = torch.randn(2, 12, 32)
    ctx = torch.randn(2, 5, 24)
    self_attn = ManualSelfAttention(32, heads=2, head_dim=16)
    cross_attn = ManualCrossAttention(32, 24, heads=2, head_dim=16)

    def ref(attn, hidden, context):
        b = hidden.shape[0]
        q = attn.to_q(hidden).view(b, -1, attn.heads, attn.head_dim).transpose(1, 2)
        k = attn.to_k(context).view(b, -1, attn.heads, attn.head_dim).transpose(1, 2)
        v = attn.to_v(context).view(b, -1, attn.heads, attn.head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return attn.to_out(o.transpose(1, 2).reshape(b, -1, attn.heads * attn.head_dim))

    with torch.no_grad():
        torch.testing.assert_close(self_attn(x), ref(self_attn, x, x))
        torch.testing.assert_close(cross_attn(x, ctx), ref(cross_attn, x, ctx))


# --------------------------------------------------------------------------------------------------
# Dynamo (backend="eager"-like counting backend; no Inductor)
# --------------------------------------------------------------------------------------------------


# Each trace costs 1-3 s on CPU; by default only the hand-written model and the one with graph
# breaks are traced (tests/test_models.py compiles every entry; set DITACCEL_ZOO_DYNAMO_ALL=1 to
# trace every entry here too).
DYNAMO_NAMES = NAMES if os.environ.get("DITACCEL_ZOO_DYNAMO_ALL") == "1" else ["mochi-tiny", "manual-dit-tiny"]


@pytest.mark.parametrize("name", DYNAMO_NAMES)
def test_dynamo_graph_breaks_match_expected(name):
    import torch._dynamo as dynamo

    entry = _entry(name)
    model = _model(name)
    inputs = entry.make_inputs()
    with torch.no_grad():
        ref = run_model(model, inputs)

    def compile_and_count(fullgraph: bool) -> int:
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(len(gm.graph.nodes))
            return gm.forward

        dynamo.reset()
        compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)
        with torch.no_grad():
            out = run_model(compiled, inputs)
        torch.testing.assert_close(out, ref)
        return len(graphs)

    try:
        n_graphs = compile_and_count(fullgraph=False)
        assert (n_graphs == 1) == (entry.expected.graph_break is None), f"{name}: {n_graphs} graphs"
        if entry.expected.fullgraph and entry.expected.graph_break is not None:
            # e.g. Mochi: fullgraph=True turns on capture_dynamic_output_shape_ops (recent torch, PR #163123)
            assert compile_and_count(fullgraph=True) == 1
    finally:
        dynamo.reset()
