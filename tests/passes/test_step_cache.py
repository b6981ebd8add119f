"""Step cache: the split graph is exact, its skip decisions match diffusers' First-Block Cache,
CFG branches and generations keep separate state, and the policies follow their definitions."""
import copy

import pytest
import torch

import ditcompile
from ditcompile.config import CacheConfig
from ditcompile.demo import denoise
from tests.models.zoo import get_tiny_model, run_model
from ditcompile.runtime.step_cache import BranchState, decide, extrapolate

diffusers = pytest.importorskip("diffusers")
from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache  # noqa: E402
from diffusers.hooks import first_block_cache as fbc_module  # noqa: E402

MODELS = ["wan2.1-tiny", "hunyuan_video-tiny", "flux-tiny"]


def cache_options(spec, **cache):
    cache.setdefault("policy", "fbcache")
    cache.setdefault("warmup_steps", 0)
    options = {"compiler": "eager", "strict": True, "cache.enabled": True}
    options.update({f"cache.{k}": v for k, v in cache.items()})
    if spec.preset != "manual":
        options["preset"] = spec.preset
    return options


def diffusers_fbcache_run(model, inputs, steps, threshold, branches=("cond",)):
    """Denoise with diffusers' own FirstBlockCacheConfig; return latents and per-branch patterns."""
    model = copy.deepcopy(model)
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=threshold))
    patterns = {b: [] for b in branches}
    current = {"branch": None}
    original = fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks

    def recording(self, residual):
        decision = original(self, residual)
        patterns[current["branch"]].append(bool(decision))
        return decision

    fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks = recording
    try:
        def call(kw):
            outs = []
            for b, extra in zip(branches, _branch_inputs(inputs, branches)):
                current["branch"] = b
                with model.cache_context(b):
                    outs.append(run_model(model, {**kw, **extra}))
            return outs[0] if len(outs) == 1 else outs[0] + 0.5 * (outs[0] - outs[1])
        with torch.no_grad():
            latents = denoise(call, inputs, steps)
    finally:
        fbc_module.FBCHeadBlockHook._should_compute_remaining_blocks = original
    return latents, patterns


def _branch_inputs(inputs, branches):
    """Branch 0 uses the inputs' text; branch 1 (unconditional) a zeroed text embedding."""
    out = [{}]
    if len(branches) > 1:
        out.append({"encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"])})
    return out


def ditaccel_run(model, inputs, steps, options, branches=1):
    compiled = torch.compile(model, backend="ditaccel", options=options)

    def call(kw):
        outs = [run_model(compiled, {**kw, **extra}) for extra in _branch_inputs(inputs, range(branches))]
        return outs[0] if len(outs) == 1 else outs[0] + 0.5 * (outs[0] - outs[1])

    with torch.no_grad():
        ditcompile.new_generation(model)
        return denoise(call, inputs, steps)


@pytest.mark.parametrize("name", MODELS + ["manual-dit-tiny"])  # manual: a top-level nn.Sequential
def test_threshold_zero_gives_exactly_the_uncached_output(name):  # (out_modulation.0/1) is not a block
    spec = get_tiny_model(name)
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=1)
    with torch.no_grad():
        reference = denoise(lambda kw: run_model(model, kw), inputs, 6)
    out = ditaccel_run(model, inputs, 6, cache_options(spec, threshold=0.0))
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    stats = ditcompile.cache_stats(model)[0]["current"]
    assert stats[0]["reused"] == 0 and stats[0]["computed"] == 6


@pytest.mark.parametrize("name", MODELS)
def test_skip_pattern_and_output_match_diffusers_first_block_cache(name):
    spec = get_tiny_model(name)
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=2)
    steps = 12
    for threshold in (0.15, 0.3, 0.5, 0.8):  # the first threshold giving a mix of both decisions
        reference, patterns = diffusers_fbcache_run(model, inputs, steps, threshold)
        pattern = patterns["cond"]
        if True in pattern[1:] and False in pattern:
            break
    assert True in pattern[1:] and False in pattern, f"no threshold gave a mixed pattern on {name}: {pattern}"
    out = ditaccel_run(model, inputs, steps, cache_options(spec, threshold=threshold))
    ours = ditcompile.cache_stats(model)[0]["current"][0]["pattern"]
    assert ours == pattern
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_cfg_branches_keep_separate_states():
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=3)
    steps, threshold = 10, 0.15
    reference, patterns = diffusers_fbcache_run(model, inputs, steps, threshold, branches=("cond", "uncond"))
    out = ditaccel_run(model, inputs, steps, cache_options(spec, threshold=threshold), branches=2)
    stats = ditcompile.cache_stats(model)[0]["current"]
    assert stats[0]["pattern"] == patterns["cond"] and stats[1]["pattern"] == patterns["uncond"]
    for branch in (0, 1):  # the body is 1 of the tiny Wan's 2 blocks
        reused = stats[branch]["reused"]
        assert stats[branch]["estimated_saving"] == pytest.approx(0.5 * reused / steps, abs=1e-4)
    assert "branch 1:" in ditcompile.cache_report(model) and "compute saved" in ditcompile.cache_report(model)
    assert len(stats[0]["pattern"]) == steps == len(stats[1]["pattern"])
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_cached_step_is_head_plus_residual_plus_tail_computed_by_hand():
    """Manual check with forward hooks on the eager model: on a reused step, the last block's
    output is replaced by (first block output now) + (last - first block output at the last
    computed step), and the rest of the model runs as usual."""
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=4)
    steps, threshold = 8, 0.15
    out = ditaccel_run(model, inputs, steps, cache_options(spec, threshold=threshold))
    pattern = ditcompile.cache_stats(model)[0]["current"][0]["pattern"]
    assert False in pattern

    first, last = model.blocks[0], model.blocks[-1]
    state = {"step": -1, "first": None, "residual": None}

    def remember_first(module, args, output):
        state["first"] = output

    def replace_last(module, args, output):
        if pattern[state["step"]]:
            state["residual"] = output - state["first"]
            return output
        return state["first"] + state["residual"]

    hooks = [first.register_forward_hook(remember_first), last.register_forward_hook(replace_last)]
    try:
        def call(kw):
            state["step"] += 1
            return run_model(model, kw)
        with torch.no_grad():
            manual = denoise(call, inputs, steps)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_two_generations_in_a_row_equal_two_fresh_runs():
    spec = get_tiny_model("flux-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=5)
    options = cache_options(spec, threshold=0.15)
    compiled = torch.compile(model, backend="ditaccel", options=options)
    with torch.no_grad():
        first = denoise(lambda kw: run_model(compiled, kw), inputs, 8)   # no explicit reset:
        second = denoise(lambda kw: run_model(compiled, kw), inputs, 8)  # the timestep goes up
    stats = ditcompile.cache_stats(model)[0]
    assert stats["finished"][-1][0]["pattern"] == stats["current"][0]["pattern"]
    torch.testing.assert_close(first, second)
    torch._dynamo.reset()
    fresh_model = spec.build()
    fresh = ditaccel_run(fresh_model, inputs, 8, options)
    torch.testing.assert_close(second, fresh)


def test_new_generation_restarts_the_step_count_explicitly():
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs(seed=6)
    compiled = torch.compile(model, backend="ditaccel", options=cache_options(spec, threshold=0.15))
    with torch.no_grad():
        run_model(compiled, inputs)
        # same timestep, other conditioning: a second CFG branch of step 0 (the same call twice
        # would be a new generation: a branch is told apart by its conditioning, issue 10)
        run_model(compiled, {**inputs, **_branch_inputs(inputs, [0, 1])[1]})
        assert sorted(ditcompile.cache_stats(model)[0]["current"]) == [0, 1]
        assert ditcompile.new_generation(model) == 1
        with ditcompile.generation(model):
            run_model(compiled, inputs)  # same timestep again, but a new generation
        stats = ditcompile.cache_stats(model)[0]
        assert sorted(stats["current"]) == [0] and len(stats["finished"]) == 1


def _wan4():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=4,
                                 rope_max_seq_len=32).eval()


def _wan4_inputs():
    g = torch.Generator().manual_seed(0)
    return {"hidden_states": torch.randn(1, 4, 2, 8, 8, generator=g), "timestep": torch.tensor([999.0]),
            "encoder_hidden_states": torch.randn(1, 6, 16, generator=g), "return_dict": False}


def test_dbcache_compute_first_and_last_blocks_set_the_split():
    model, inputs = _wan4(), _wan4_inputs()
    report = ditcompile.explain(model, **inputs, strict=True, options={
        "preset": "wan2.1", "cache.enabled": True, "cache.policy": "dbcache",
        "cache.compute_first": 2, "cache.compute_last": 1})
    note = " ".join(n for p in report.graphs[0].passes if p.name == "step_cache" for n in p.notes)
    assert "head blocks.0..blocks.1, body blocks.2 (1 blocks), tail blocks.3" in note
    with torch.no_grad():
        reference = denoise(lambda kw: run_model(model, kw), inputs, 5)
    torch._dynamo.reset()
    out = ditaccel_run(model, inputs, 5, {"preset": "wan2.1", "compiler": "eager", "strict": True,
                                          "cache.enabled": True, "cache.policy": "dbcache", "cache.threshold": 0.0,
                                          "cache.compute_first": 2, "cache.compute_last": 1})
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_too_few_blocks_keeps_the_graph_whole_and_says_why():
    spec = get_tiny_model("wan2.1-tiny")  # 2 blocks
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), strict=True, options={
        "preset": "wan2.1", "cache.enabled": True, "cache.compute_first": 2})
    assert "step cache off: 2 transformer blocks found" in report.format()


@pytest.mark.parametrize("name", ["wan2.1-tiny", "hunyuan_video-tiny", "cogvideox-tiny", "mochi-tiny", "flux-tiny",
                                  "ltx_video-tiny", "sd3-tiny", "pixart-tiny", "latte-tiny"])
def test_each_preset_cache_setting_applies_to_its_model(name):
    """Enabling the cache with only the preset's settings splits the graph and finds the
    preset's signal (TeaCache's module or the first block's modulated input)."""
    spec = get_tiny_model(name)
    report = ditcompile.explain(spec.build(), **spec.make_inputs(), strict=True, fullgraph=spec.expected.fullgraph,
                                options={"preset": spec.preset, "cache.enabled": True})
    text = report.format()
    policy = ditcompile.resolve_config(spec.preset).cache.policy
    assert f"step cache {policy}" in text, text
    if policy == "teacache":
        assert "teacache signal:" in text


def test_teacache_finds_the_modulated_input_and_runs():
    spec = get_tiny_model("wan2.1-tiny")
    torch.manual_seed(0)
    model, inputs = spec.build(), spec.make_inputs(seed=7)
    report = ditcompile.explain(model, **inputs, strict=True, options=cache_options(
        spec, policy="teacache", threshold=0.3, teacache_signal="", teacache_coefficients=[]))
    assert "step cache teacache" in report.format()
    with torch.no_grad():
        reference = denoise(lambda kw: run_model(model, kw), inputs, 10)
    torch._dynamo.reset()
    out = ditaccel_run(model, inputs, 10, cache_options(spec, policy="teacache", threshold=0.3, teacache_signal="",
                                                        teacache_coefficients=[]))
    stats = ditcompile.cache_stats(model)[0]["current"][0]
    assert stats["reused"] > 0 and stats["computed"] >= 2
    assert (out - reference).norm() / reference.norm() < 0.5


# ----------------------------------------------------------------------------- decision unit tests


def _signals(values):
    return [torch.full((4,), float(v)) for v in values]


def test_fbcache_decision_compares_with_the_last_computed_step():
    cfg = CacheConfig(enabled=True, threshold=0.1)
    state = BranchState()
    decisions = []
    for step, s in enumerate(_signals([1.0, 1.05, 1.09, 1.12, 1.13])):
        d = decide(cfg, state, s, step)
        decisions.append(d)
        if d:
            state.history = [(step, [s])]
    # 1.05 and 1.09 are within 10% of 1.0 (reused); 1.12 is not (computed); 1.13 within 10% of 1.12
    assert decisions == [True, False, False, True, False]


def test_warmup_and_max_cached_steps():
    cfg = CacheConfig(enabled=True, threshold=10.0, warmup_steps=2, max_cached_steps=2)
    state = BranchState()
    decisions = []
    for step, s in enumerate(_signals([1] * 8)):
        d = decide(cfg, state, s, step)
        state.consecutive_cached = 0 if d else state.consecutive_cached + 1
        if d:
            state.history = [(step, [s])]
        decisions.append(d)
    assert decisions == [True, True, False, False, True, False, False, True]


def test_teacache_accumulates_the_rescaled_change():
    cfg = CacheConfig(enabled=True, policy="teacache", threshold=0.25, teacache_coefficients=(2.0, 0.0))  # 2x
    state = BranchState()
    decisions = []
    for step, s in enumerate(_signals([1.0, 1.05, 1.1, 1.15, 1.2, 1.25])):
        d = decide(cfg, state, s, step)
        if d:
            state.history = [(step, [s])]
        decisions.append(d)
    # rescaled changes: 0.1, 0.0952, 0.0909, 0.087, 0.0833 -> acc 0.1, 0.195, 0.286 (compute, reset),
    # 0.087, 0.170
    assert decisions == [True, False, False, True, False, False]


@pytest.mark.parametrize("order", [1, 2])
def test_taylorseer_extrapolation_is_exact_for_polynomials_of_its_order(order):
    def f(step):
        return torch.tensor([3.0 + 2.0 * step + (0.5 * step * step if order == 2 else 0.0)])

    history = [(s, [f(s)]) for s in (2, 4, 6)][-(order + 1):]
    torch.testing.assert_close(extrapolate(history, 9, order)[0], f(9))
    assert torch.equal(extrapolate(history, 9, 0)[0], history[-1][1][0])
