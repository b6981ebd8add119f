"""Issue 10's calling patterns, as a user hits them with tiny diffusers models and the fidelity model:
regional compilation, a resolution change inside a run, mixed-dtype attention, two threads, two
requests in one thread, repeated timesteps, two wrappers of one module, dynamic shapes."""
import asyncio
import contextlib
import copy
import gc
import logging
import threading

import pytest
import torch
import torch.nn as nn

import ditcompile
from ditcompile.runtime.state import INDEX
from tests.models.zoo import get_tiny_model, run_model

WAN = get_tiny_model("wan2.1-tiny")
SPARSE = {"preset": "wan2.1", "compiler": "eager", "strict": True, "sparse.enabled": True, "sparse.block_size": 16,
          "sparse.dense_steps": 2, "sparse.dense_blocks": []}
CACHE = {"preset": "wan2.1", "compiler": "eager", "strict": True, "cache.enabled": True, "cache.policy": "fbcache",
         "cache.threshold": 0.5, "cache.warmup_steps": 0}
TIMESTEPS = torch.linspace(999, 50, 5)


def wan():
    torch.manual_seed(0)
    return WAN.build(), WAN.make_inputs(seed=1)


def cfg_steps(call, inputs, timesteps=TIMESTEPS, seed=0, guidance=5.0):
    """A CFG sampler calling the model twice per step; returns each step's prediction."""
    x = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(seed))
    uncond = {"encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"])}
    preds = []
    for t in timesteps:
        kw = dict(inputs, hidden_states=x, timestep=t.reshape(1))
        cond, unc = run_model(call, kw), run_model(call, {**kw, **uncond})
        preds.append(unc + guidance * (cond - unc))
        x = x - 0.1 * preds[-1]
    return preds


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def counts(stats):
    return {path: (s["sparse_calls"], s["dense_calls"]) for path, s in stats["current"].items()}


# ---------------------------------------------------------------------- regional compilation


def test_regional_blocks_without_a_step_take_the_safe_path_and_say_how_to_fix_it(caplog):
    model, inputs = wan()
    with torch.no_grad():
        reference = cfg_steps(model, inputs)
        blocks = copy.deepcopy(model)
        blocks.compile_repeated_blocks(backend="ditaccel", options={**SPARSE, "graph.token_grid": [3, 8, 12]})
        with caplog.at_level(logging.WARNING, logger="ditcompile"):
            for _ in range(2):
                for got, want in zip(cfg_steps(blocks, inputs), reference):
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # dense at every step
    assert "step of these calls is unknown (no timestep input)" in caplog.text
    assert "ditcompile.track_steps(model)" in caplog.text
    assert all(counts(s) == {"attn1": (0, 20)} for s in ditcompile.sparse_stats(blocks))


def test_track_steps_gives_regional_blocks_the_step_of_each_model_call():
    model, inputs = wan()
    with torch.no_grad():
        reference = cfg_steps(model, inputs)
        blocks = copy.deepcopy(model)
        blocks.compile_repeated_blocks(backend="ditaccel", options={**SPARSE, "graph.token_grid": [3, 8, 12]})
        ditcompile.track_steps(blocks)
        for generation in range(2):  # the second generation restarts its warm-up
            got = cfg_steps(blocks, inputs)
            for step in (0, 1):  # sparse.dense_steps = 2: exactly eager
                torch.testing.assert_close(got[step], reference[step], rtol=1e-5, atol=1e-5)
            assert all(rel(got[s], reference[s]) > 1e-4 for s in (2, 3, 4))  # sparse afterwards
    stats = ditcompile.sparse_stats(blocks)
    # one state per block instance, named by the model's parameter names; per block: 5 steps x 2 CFG
    # branches = 10 calls, the first 2 steps dense; one generation finished
    assert sorted(tuple(counts(s).items()) for s in stats) == [(("blocks.0.attn1", (6, 4)),),
                                                                (("blocks.1.attn1", (6, 4)),)]
    assert all(len(s["finished"]) == 1 for s in stats)


def test_regional_blocks_take_the_grid_and_their_block_index_from_the_model_call():
    model, inputs = wan()
    options = {"preset": "wan2.1", "compiler": "eager", "strict": True, "sparse.enabled": True,
               "sparse.block_size": 16, "sparse.dense_steps": 1}  # the preset keeps block 0 dense
    big = dict(inputs, hidden_states=torch.randn(1, 4, 3, 32, 48, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        whole = torch.compile(copy.deepcopy(model), backend="ditaccel", dynamic=False, options=options)
        regional = copy.deepcopy(model)
        regional.compile_repeated_blocks(backend="ditaccel", options=options)  # no graph.token_grid
        ditcompile.track_steps(regional)
        for latents in (inputs, big, inputs):  # the grid follows the call's resolution
            with ditcompile.generation(regional), ditcompile.generation(whole):
                got, want = cfg_steps(regional, latents), cfg_steps(whole, latents)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert rel(got[-1], cfg_steps(model, latents)[-1]) > 1e-4  # sparse, not dense
    stats = {path: n for s in ditcompile.sparse_stats(regional) for path, n in counts(s).items()}
    # per block (3 resolutions x 5 steps x 2 branches; the last generation is current): block 0 in
    # sparse.dense_blocks, block 1 sparse after its dense step
    assert stats == {"blocks.0.attn1": (0, 10), "blocks.1.attn1": (8, 2)}


# ---------------------------------------------------------------------- shapes


def split_sampler(call, inputs, switch=3):
    """Upscale the latents part-way through the run (a 'split sampler'); returns (input, output) per step."""
    x = torch.randn(1, 4, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    record = []
    for i, t in enumerate(torch.linspace(999, 50, 6)):
        if i == switch:
            x = torch.nn.functional.interpolate(x, scale_factor=(1, 2, 2))
        out = run_model(call, dict(inputs, hidden_states=x, timestep=t.reshape(1)))
        record.append((x, out))
        x = x - 0.1 * out
    return record


@pytest.mark.parametrize("dynamic", [False, None])
def test_a_resolution_change_inside_a_run_starts_fresh_cache_state_for_the_new_shape(dynamic):
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", dynamic=dynamic, options=CACHE)
    with torch.no_grad():
        record = split_sampler(compiled, inputs)
        x, out = record[3]  # the first call at the new resolution computes: the model's own output
        eager = run_model(model, dict(inputs, hidden_states=x, timestep=torch.linspace(999, 50, 6)[3].reshape(1)))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    shapes = {}
    for state in ditcompile.cache_stats(model):
        for branch in state["current"].values():
            for shape, n in branch["shapes"].items():
                shapes[shape] = (shapes.get(shape, (0, 0))[0] + n["computed"], shapes.get(shape, (0, 0))[1] + n["reused"])
    # each resolution: computed once, then reused (the cache stays on after the switch)
    assert shapes == {"1x4x3x16x24": (1, 2), "1x4x3x32x48": (1, 2)}


@pytest.mark.inductor
def test_step_cache_with_dynamic_shapes_through_inductor_matches_the_static_graph():
    model, inputs = wan()
    options = {**CACHE, "compiler": "inductor"}
    with torch.no_grad():
        dynamic = split_sampler(torch.compile(model, backend="ditaccel", dynamic=True, options=options), inputs)
        static = split_sampler(torch.compile(copy.deepcopy(model), backend="ditaccel", dynamic=False,
                                             options=options), inputs)
    for (x_dyn, out_dyn), (x_static, out_static) in zip(dynamic, static):
        torch.testing.assert_close(out_dyn, out_static, rtol=1e-4, atol=1e-4)
    patterns = [s["current"][0]["pattern"] for s in ditcompile.cache_stats(model)]
    assert patterns == [[True, False, False, True, False, False]]  # one dynamic graph, both resolutions


def test_sparse_attention_stays_on_after_dynamo_recompiles_for_dynamic_shapes():
    model, inputs = wan()
    options = {**SPARSE, "sparse.dense_steps": 0}
    big = dict(inputs, hidden_states=torch.randn(1, 4, 3, 32, 48, generator=torch.Generator().manual_seed(3)))
    compiled = torch.compile(model, backend="ditaccel", options=options)  # dynamic=None: recompiles dynamic
    with torch.no_grad():
        outs = [run_model(compiled, x) for x in (inputs, big, inputs)]
        static = torch.compile(copy.deepcopy(model), backend="ditaccel", dynamic=False, options=options)
        for x, out in zip((inputs, big), outs):
            torch.testing.assert_close(out, run_model(static, x), rtol=1e-6, atol=1e-6)  # the same sparse masks
            assert rel(out, run_model(model, x)) > 1e-4  # and sparse, not dense
    dynamic_graph = ditcompile.sparse_stats(model)[-1]["current"]["blocks.0.attn1"]
    assert dynamic_graph["sparse_calls"] == 1 and dynamic_graph["dense_calls"] == 0  # the last call: small
    assert set(ditcompile.sparse_stats(model)[-1]["finished"][-1]["blocks.0.attn1"]["shapes"]) == {"1x1152x4x16"}


@pytest.mark.inductor
def test_dynamic_grid_sparse_through_inductor_matches_the_static_graph():
    model, inputs = wan()
    options = {**SPARSE, "compiler": "inductor", "sparse.dense_steps": 0}
    big = dict(inputs, hidden_states=torch.randn(1, 4, 3, 32, 48, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        dynamic = torch.compile(model, backend="ditaccel", dynamic=True, options=options)
        static = torch.compile(copy.deepcopy(model), backend="ditaccel", dynamic=False, options=options)
        for x in (inputs, big):
            torch.testing.assert_close(run_model(dynamic, x), run_model(static, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- dtypes


class UpcastAttention(nn.Module):
    """A bf16 attention that upcasts q and k to fp32 for the softmax and keeps v in bf16."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.q, self.k, self.v, self.heads = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim), heads

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1).to(v.dtype)
        return (probs @ v).transpose(1, 2).reshape(b, s, d)


@pytest.mark.parametrize("compiler", ["eager", pytest.param("inductor", marks=pytest.mark.inductor)])
def test_mixed_dtype_attention_is_kept_with_the_reason_and_equals_eager(compiler):
    torch.manual_seed(0)
    model, x = UpcastAttention().to(torch.bfloat16).eval(), torch.randn(2, 24, 32, dtype=torch.bfloat16)
    report = ditcompile.explain(model, x, strict=True)
    row = report.graphs[0].rows()[0]
    assert row["plan"] == "original" and "different dtypes (float32, float32, bfloat16)" in row["note"]
    compiled = torch.compile(model, backend="ditaccel", options={"compiler": compiler, "strict": True})
    with torch.no_grad():
        got = compiled(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, model(x))


def test_same_dtype_sites_keep_their_dtype_in_every_precision():
    model, inputs = wan()
    for dtype in (torch.float16, torch.bfloat16):
        m = copy.deepcopy(model).to(dtype)
        x = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "timestep" else v
             for k, v in inputs.items()}
        report = ditcompile.explain(m, **x, options={"compiler": "eager"}, strict=True)
        assert report.rewritten == 4
        torch._dynamo.reset()
        with torch.no_grad():
            got = run_model(torch.compile(m, backend="ditaccel", options={"compiler": "eager"}), x)
            assert got.dtype == dtype
            torch.testing.assert_close(got, run_model(m, x))


# ---------------------------------------------------------------------- callers


def test_two_threads_run_one_compiled_model_without_sharing_state():
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=SPARSE)
    seeds = (0, 1)
    with torch.no_grad():
        alone = {}
        for seed in seeds:  # each generation alone, one after the other
            ditcompile.new_generation(model)
            alone[seed] = cfg_steps(compiled, inputs, seed=seed)
    barrier, results, errors = threading.Barrier(2), {}, []

    def generate(seed):
        try:
            with torch.no_grad():
                ditcompile.new_generation(model)
                barrier.wait()
                results[seed] = cfg_steps(_Lockstep(compiled, barrier), inputs, seed=seed)
        except Exception as err:  # noqa: BLE001 -- reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=generate, args=(seed,)) for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for seed in seeds:  # interleaved call by call, each thread got its own generation
        for got, want in zip(results[seed], alone[seed]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _Lockstep:
    """Calls `fn` with the other thread in lockstep (both threads call, then both continue)."""

    def __init__(self, fn, barrier):
        self.fn, self.barrier = fn, barrier

    def __call__(self, **kwargs):
        self.barrier.wait()
        return self.fn(**kwargs)


def test_request_scopes_keep_two_interleaved_requests_in_one_thread_apart():
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=CACHE)
    with torch.no_grad():
        alone = {}
        for seed in (0, 1):
            with ditcompile.request_scope():
                alone[seed] = cfg_steps(compiled, inputs, seed=seed)

        async def request(seed):
            with ditcompile.request_scope(f"request {seed}"):
                return await _async_steps(compiled, inputs, seed)

        together = asyncio.run(_gather(request(0), request(1)))
    for seed, got in zip((0, 1), together):
        for a, b in zip(got, alone[seed]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


async def _gather(*coros):
    return await asyncio.gather(*coros)


async def _async_steps(call, inputs, seed):
    """cfg_steps, yielding to the other request between calls."""
    x = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(seed))
    uncond = {"encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"])}
    preds = []
    for t in TIMESTEPS:
        kw = dict(inputs, hidden_states=x, timestep=t.reshape(1))
        cond = run_model(call, kw)
        await asyncio.sleep(0)
        unc = run_model(call, {**kw, **uncond})
        await asyncio.sleep(0)
        preds.append(unc + 5.0 * (cond - unc))
        x = x - 0.1 * preds[-1]
    return preds


def test_many_calls_at_one_timestep_keep_bounded_state():
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=CACHE)
    with torch.no_grad():
        for _ in range(200):  # a 1-step model, or a server answering at one timestep
            run_model(compiled, inputs)
    (runtime,) = INDEX.for_model(model)
    assert runtime.tracker.generation == 199  # each repeat is a new generation, not a new branch
    assert len(runtime.step_cache.data) == 1 and len(runtime.step_cache.finished) == 64
    held = [t for b in runtime.step_cache.data.values() for _, r in b.history for t in r]
    assert len(held) <= 1  # one residual per stream of the current generation, nothing older


def test_two_wrappers_of_one_module_keep_separate_state_and_a_new_wrapper_starts_clean():
    model, inputs = wan()
    options_b = {**CACHE, "cache.threshold": 0.05}
    with torch.no_grad():
        alone = []
        for options in (CACHE, options_b):
            torch._dynamo.reset()
            alone.append(cfg_steps(torch.compile(model, backend="ditaccel", options=options), inputs))
        torch._dynamo.reset()
        gc.collect()
        wrappers = [torch.compile(model, backend="ditaccel", options=o) for o in (CACHE, options_b)]
        latents = [torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(0))] * 2
        uncond = {"encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"])}
        for step, t in enumerate(TIMESTEPS):  # A and B stepped in turns
            for i, wrapper in enumerate(wrappers):
                kw = dict(inputs, hidden_states=latents[i], timestep=t.reshape(1))
                cond, unc = run_model(wrapper, kw), run_model(wrapper, {**kw, **uncond})
                pred = unc + 5.0 * (cond - unc)
                torch.testing.assert_close(pred, alone[i][step], rtol=1e-5, atol=1e-5)
                latents[i] = latents[i] - 0.1 * pred
    assert len(ditcompile.cache_stats(model)) == 2
    del wrappers
    torch._dynamo.reset()
    gc.collect()
    assert ditcompile.cache_stats(model) == []  # the old wrappers' state went with them
    with torch.no_grad():
        run_model(torch.compile(model, backend="ditaccel", options=CACHE), inputs)
    (fresh,) = ditcompile.cache_stats(model)
    assert fresh["finished"] == [] and fresh["current"][0]["computed"] == 1


# ---------------------------------------------------------------------- the fidelity model


def test_fidelity_sampler_steps_and_generations_are_counted_as_run():
    from ditcompile.fidelity.model import load_fidelity_model, sample

    model = load_fidelity_model()
    options = {"compiler": "eager", "strict": True, "sparse.enabled": True, "sparse.block_size": 16,
               "sparse.dense_steps": 2, "sparse.dense_blocks": [], "graph.text_position": "none"}
    compiled = torch.compile(model, backend="ditaccel", options=options)

    def two_calls(hidden_states, timestep, encoder_hidden_states):  # CFG as two calls of half the batch
        half = hidden_states.shape[0] // 2
        return torch.cat([run_model(compiled, dict(hidden_states=h, timestep=t, encoder_hidden_states=e))
                          for h, t, e in zip(hidden_states.split(half), timestep.split(half),
                                             encoder_hidden_states.split(half))])

    with torch.no_grad():
        for _ in range(2):  # two generations, CFG in one batch of 2
            sample(model, labels=[0], steps=5, transformer_call=compiled, guidance_scale=3.0)
        for _ in range(2):  # two generations, CFG as two calls of batch 1 (a second graph: batch 1)
            sample(model, labels=[0], steps=5, transformer_call=two_calls, guidance_scale=3.0)
    one_batch, two_calls_stats = ditcompile.sparse_stats(model)
    assert set(counts(one_batch).values()) == {(3, 2)}          # 5 steps, the first 2 dense
    assert set(counts(two_calls_stats).values()) == {(6, 4)}    # 5 steps x 2 branches
    assert len(one_batch["finished"]) == len(two_calls_stats["finished"]) == 1


# ---------------------------------------------------------------------- Heun with TaylorSeer

HEUN_TIMESTEPS = [999.0, 800.0, 800.0, 600.0, 600.0, 400.0, 400.0, 200.0, 200.0]  # diffusers' Heun order
HEUN_STEPS = [0, 1, 1, 2, 2, 3, 3, 4, 4]
# warm-up 2 steps, then every reuse is followed by a compute (max_cached_steps=1, threshold: always reuse)
HEUN_PATTERN = [True, True, True, False, True, False, True, False, True]


def newton_extrapolate(points, step):
    """Reference: the interpolating polynomial through (step, residual) points in Newton's divided
    differences, evaluated at `step` (TaylorSeer's finite-difference expansion)."""
    xs, coef = [float(s) for s, _ in points], [r for _, r in points]
    for level in range(1, len(xs)):
        for i in range(len(xs) - 1, level - 1, -1):
            coef[i] = (coef[i] - coef[i - 1]) / (xs[i] - xs[i - level])
    out, basis = coef[0].clone(), 1.0
    for i in range(1, len(xs)):
        basis = basis * (step - xs[i - 1])
        out = out + basis * coef[i]
    return out


def heun_reference(model, inputs, order):
    """The eager model, with block 1 (fbcache's body) replaced on reused calls by its input plus the
    residual extrapolated from the newest order+1 computed steps (a Heun step computed twice keeps its
    second residual)."""
    body, state = model.blocks[1], {}
    computed = {}  # step -> residual of its newest computed evaluation

    def pre(module, args):
        state["in"] = args[0]

    def post(module, args, out):
        if state["compute"]:
            computed[state["step"]] = out - state["in"]
            return out
        points = sorted(computed.items())[-(order + 1):]
        return state["in"] + newton_extrapolate(points, state["step"])

    handles = [body.register_forward_pre_hook(pre), body.register_forward_hook(post)]
    try:
        return heun_calls(model, inputs, state)
    finally:
        for h in handles:
            h.remove()


def heun_calls(call, inputs, state=None):
    x = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(0))
    outs = []
    for t, step, compute in zip(HEUN_TIMESTEPS, HEUN_STEPS, HEUN_PATTERN):
        if state is not None:
            state.update(step=step, compute=compute)
        outs.append(run_model(call, dict(inputs, hidden_states=x, timestep=torch.tensor([t]))))
        x = x - 0.05 * outs[-1]
    return outs


@pytest.mark.parametrize("order", [1, 2])
def test_heun_evaluations_share_their_step_and_taylorseer_extrapolates_one_point_per_step(order):
    model, inputs = wan()
    options = {**CACHE, "cache.threshold": 1e9, "cache.warmup_steps": 2, "cache.max_cached_steps": 1,
               "cache.taylor_order": order}
    compiled = torch.compile(model, backend="ditaccel", options=options)
    with torch.no_grad():
        got = heun_calls(compiled, inputs)
        want = heun_reference(model, inputs, order)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    (stats,) = ditcompile.cache_stats(model)
    assert stats["current"][0]["pattern"] == HEUN_PATTERN
    (runtime,) = INDEX.for_model(model)
    (branch,) = runtime.step_cache.data.values()
    steps = [s for s, _ in branch.history]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one point per step, the newest kept


# ---------------------------------------------------------------------- CFG branches in sparse attention


@pytest.mark.parametrize("policy", ["spatial_temporal", "antidiagonal"])
def test_each_cfg_branch_makes_its_own_sparse_choices_and_has_its_own_guard(policy):
    model, inputs = wan()
    options = {**SPARSE, "sparse.policy": policy, "sparse.guard_every": 1, "sparse.guard_budget": 10.0}
    uncond = dict(inputs, encoder_hidden_states=torch.zeros_like(inputs["encoder_hidden_states"]))
    x = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(0))
    shared = torch.compile(model, backend="ditaccel", options=options)
    alone = [torch.compile(copy.deepcopy(model), backend="ditaccel", options=options) for _ in range(2)]
    with torch.no_grad(), ditcompile.generation(alone[0]), ditcompile.generation(alone[1]):
        # one sampler with CFG as two calls; each branch also runs on its own model, in a declared
        # generation (its latents follow outputs it does not see)
        for t in TIMESTEPS:
            outs = []
            for branch, kw in enumerate((inputs, uncond)):
                kw = dict(kw, hidden_states=x, timestep=t.reshape(1))
                outs.append(run_model(shared, kw))
                torch.testing.assert_close(outs[-1], run_model(alone[branch], kw), rtol=1e-6, atol=1e-6)
            x = x - 0.1 * (outs[1] + 5.0 * (outs[0] - outs[1]))
    (stats,) = ditcompile.sparse_stats(model)
    site = stats["current"]["blocks.0.attn1"]
    assert site["branches"] == {0: {"sparse_calls": 3, "dense_calls": 2}, 1: {"sparse_calls": 3, "dense_calls": 2}}
    assert sorted(branch for _, _, branch in site["guard_errors"]) == [0, 0, 0, 1, 1, 1]


# ---------------------------------------------------------------------- runs the latents tell apart


def cfg_run(call, inputs, timesteps, seed, x=None):
    """cfg_steps from given latents (or fresh noise from `seed`); returns (predictions, final latents)."""
    x = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(seed)) if x is None else x
    uncond = {"encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"])}
    preds = []
    for t in timesteps:
        kw = dict(inputs, hidden_states=x, timestep=torch.tensor([float(t)]))
        cond, unc = run_model(call, kw), run_model(call, {**kw, **uncond})
        preds.append(unc + 5.0 * (cond - unc))
        x = x - 0.1 * preds[-1]
    return preds, x


@pytest.mark.parametrize("first, second", [
    ([999, 700, 400, 100], [100, 80, 60, 40]),   # the second run starts where the first ended
    ([999, 800], [600, 400, 200]),               # an interrupted run, then an img2img run lower down
])
@pytest.mark.parametrize("options", [CACHE, {**SPARSE, "sparse.dense_steps": 1}], ids=["cache", "sparse"])
def test_a_new_run_that_starts_below_the_last_timestep_is_a_new_generation(first, second, options):
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=options)
    with torch.no_grad():
        alone, _ = cfg_run(compiled, inputs, second, seed=3)
        ditcompile.new_generation(model)
        cfg_run(compiled, inputs, first, seed=0)
        after, _ = cfg_run(compiled, inputs, second, seed=3)  # no new_generation: the latents tell
    for a, b in zip(after, alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    stats = (ditcompile.cache_stats if options is CACHE else ditcompile.sparse_stats)(model)
    assert stats[0]["tracking"]["events"]["generation: latents do not continue the run"] == 1


def test_two_runs_interleaved_in_one_thread_take_the_safe_path_and_are_told_how_to_fix_it(caplog):
    model, inputs = wan()
    a = torch.compile(model, backend="ditaccel", options=CACHE)
    b = torch.compile(model, backend="ditaccel", options=dict(CACHE))  # equal options: one Dynamo graph
    uncond = {"encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"])}
    xs = [torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ditcompile"):
        for t in TIMESTEPS:
            for i, wrapper in enumerate((a, b)):  # a and b stepped in turns
                kw = dict(inputs, hidden_states=xs[i], timestep=t.reshape(1))
                cond, unc = run_model(wrapper, kw), run_model(wrapper, {**kw, **uncond})
                torch.testing.assert_close(cond, run_model(model, kw), rtol=1e-5, atol=1e-5)  # computed
                torch.testing.assert_close(unc, run_model(model, {**kw, **uncond}), rtol=1e-5, atol=1e-5)
                xs[i] = xs[i] - 0.1 * (unc + 5.0 * (cond - unc))
    assert "request_scope" in caplog.text and "latents do not continue the run" in caplog.text


class ImageConditioned(nn.Module):
    """A Wan model whose input concatenates 4 image-conditioning channels to the 4 latent channels
    (image-to-video / InstructPix2Pix style); it predicts the 4 latent channels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = type(WAN.build())(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16,
                                       in_channels=8, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=128,
                                       num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                       eps=1e-6, rope_max_seq_len=32)

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        return self.inner(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]


def test_cfg_branches_that_differ_only_in_image_channels_are_separate_branches():
    model, inputs = ImageConditioned().eval(), WAN.make_inputs(seed=1)
    text = inputs["encoder_hidden_states"]
    assert text.shape[-1] == 32
    image = torch.randn(1, 4, 3, 16, 24, generator=torch.Generator().manual_seed(5))
    branches = [(image, text), (image, torch.zeros_like(text)), (torch.zeros_like(image), torch.zeros_like(text))]
    shared = torch.compile(model, backend="ditaccel", options=CACHE)
    alone = [torch.compile(copy.deepcopy(model), backend="ditaccel", options=CACHE) for _ in branches]
    x = torch.randn(1, 4, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for m in alone:  # each branch on its own model: a declared generation
            stack.enter_context(ditcompile.generation(m))
        for t in TIMESTEPS:
            outs = []
            for (img, txt), own in zip(branches, alone):
                kw = dict(hidden_states=torch.cat([x, img], dim=1), timestep=t.reshape(1), encoder_hidden_states=txt)
                outs.append(shared(**kw))
                torch.testing.assert_close(outs[-1], own(**kw), rtol=1e-5, atol=1e-5)
            x = x - 0.1 * (outs[2] + 1.5 * (outs[1] - outs[2]) + 5.0 * (outs[0] - outs[1]))  # 3-way CFG
    (stats,) = ditcompile.cache_stats(model)
    assert sorted(stats["current"]) == [0, 1, 2] and stats["finished"] == []
    assert set(stats["tracking"]["events"]) == {"generation: first call"}


def ancestral_run(call, inputs, seed=0):
    """An ancestral (stochastic) sampler: fresh noise is added at every step."""
    x = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(seed))
    noise = torch.Generator().manual_seed(seed + 100)
    outs = []
    for t in TIMESTEPS:
        outs.append(run_model(call, dict(inputs, hidden_states=x, timestep=t.reshape(1))))
        x = x - 0.1 * outs[-1] + 0.05 * torch.randn(x.shape, generator=noise)
    return outs


def test_a_stochastic_sampler_takes_the_safe_path_unless_its_run_is_declared(caplog):
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=SPARSE)
    with torch.no_grad():
        eager = ancestral_run(model, inputs)
        with caplog.at_level(logging.WARNING, logger="ditcompile"):
            for got, want in zip(ancestral_run(compiled, inputs), eager):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # every step dense
        assert "ditcompile.generation(model)" in caplog.text
        for _ in range(2):
            with ditcompile.generation(compiled):
                declared = ancestral_run(compiled, inputs)
            for step in (0, 1):  # sparse.dense_steps = 2
                torch.testing.assert_close(declared[step], eager[step], rtol=1e-5, atol=1e-5)
            assert all(rel(declared[s], eager[s]) > 1e-4 for s in (2, 3, 4))
    (stats,) = ditcompile.sparse_stats(model)
    assert counts(stats) == {"blocks.0.attn1": (3, 2), "blocks.1.attn1": (3, 2)}  # the declared run: 5 steps


class IntTimestep(nn.Module):
    """A wrapper whose forward takes the timestep as a Python int (Dynamo makes it a SymInt)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states, timestep: int, encoder_hidden_states):
        t = torch.full((hidden_states.shape[0],), timestep, dtype=torch.float32)
        return self.inner(hidden_states, t, encoder_hidden_states, return_dict=False)[0]


def test_python_int_timesteps_are_tracked_once_dynamo_makes_them_symbolic(caplog):
    model, inputs = wan()
    wrapper = IntTimestep(model)
    compiled = torch.compile(wrapper, backend="ditaccel", options={**SPARSE, "sparse.dense_steps": 1})
    steps = [999, 800, 600, 400, 200, 100]
    x = inputs["hidden_states"]
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ditcompile"):
        for t in steps:
            out = compiled(x, t, inputs["encoder_hidden_states"])
            x = x - 0.1 * out
    # the first call's graph has 999 baked in (no timestep input: dense, said); the next calls run
    # the graph with a symbolic timestep, whose steps are known: its first call dense, then sparse
    symbolic = [s for s in ditcompile.sparse_stats(wrapper) if s["current"]["inner.blocks.0.attn1"]["sparse_calls"]]
    assert len(symbolic) == 1 and counts(symbolic[0])["inner.blocks.0.attn1"] == (len(steps) - 2, 1)
