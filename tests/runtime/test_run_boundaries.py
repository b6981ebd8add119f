"""Where one sampling run ends and the next begins, and what the reports say about it, in the
calling patterns a fresh user tried (issue 10, second round): a new run that starts at the
timestep where an interrupted one stopped, pipelines that put clean conditioning back into the
latents every step (image-to-video first frame, reference-image tokens), runs declared twice in
one block, weights replaced between calls, attention the matcher does not recognise, stats per
compiled wrapper, regional stats, and a recompile in the middle of a run."""
import copy
import logging

import pytest
import torch
import torch.nn as nn

import ditcompile
from tests.models.zoo import get_tiny_model, run_model

WAN = get_tiny_model("wan2.1-tiny")
SPARSE = {"preset": "wan2.1", "compiler": "eager", "strict": True, "sparse.enabled": True, "sparse.block_size": 16,
          "sparse.dense_steps": 2, "sparse.dense_blocks": []}
CACHE = {"preset": "wan2.1", "compiler": "eager", "strict": True, "cache.enabled": True, "cache.policy": "fbcache",
         "cache.threshold": 0.5, "cache.warmup_steps": 0}


def wan():
    torch.manual_seed(0)
    return WAN.build(), WAN.make_inputs(seed=1)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def noise(seed, shape=(1, 4, 3, 16, 24)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def euler(call, inputs, x, timesteps, prompt=None, after_step=None):
    """A CFG Euler run (two calls per step); `after_step(x)` edits the latents after each step
    (as image-to-video pipelines do). Returns the guided prediction of each step."""
    text = inputs["encoder_hidden_states"] if prompt is None else prompt
    preds = []
    for t in timesteps:
        kw = dict(inputs, hidden_states=x, timestep=torch.tensor([float(t)]), encoder_hidden_states=text)
        cond = run_model(call, kw)
        unc = run_model(call, dict(kw, encoder_hidden_states=torch.zeros_like(text)))
        preds.append(unc + 5.0 * (cond - unc))
        x = x - 0.1 * preds[-1]
        if after_step is not None:
            x = after_step(x)
    return preds


# ---------------------------------------------------------------------- where a run begins


@pytest.mark.parametrize("new_prompt, new_noise", [(True, True), (True, False), (False, True)],
                         ids=["new-prompt-new-noise", "new-prompt-same-noise", "same-prompt-new-noise"])
def test_a_new_run_at_the_timestep_where_an_interrupted_run_stopped_gets_its_dense_warm_up(new_prompt, new_noise):
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=SPARSE)
    prompt = torch.randn(inputs["encoder_hidden_states"].shape, generator=torch.Generator().manual_seed(9)) \
        if new_prompt else None
    second = noise(7) if new_noise else noise(0)
    with torch.no_grad():
        eager = euler(model, inputs, second, [700, 400, 100], prompt)
        euler(compiled, inputs, noise(0), [999, 700])  # interrupted after two steps, at t=700
        got = euler(compiled, inputs, second, [700, 400, 100], prompt)  # no new_generation
    for step in (0, 1):  # sparse.dense_steps = 2: a new generation, exactly eager
        torch.testing.assert_close(got[step], eager[step], rtol=1e-5, atol=1e-5)
    assert rel(got[2], eager[2]) > 1e-4  # and sparse after its warm-up
    (stats,) = ditcompile.sparse_stats(model)
    assert stats["tracking"]["generation"] == 1


def test_clean_first_frame_put_back_every_step_keeps_the_run_together():
    """Wan 2.2 TI2V: the first latent frame is the clean image, put back after every step, with a
    per-token timestep of 0 on its tokens."""
    model, inputs = wan()
    image = noise(11, (1, 4, 1, 16, 24))
    tokens_per_frame = 8 * 12

    def put_back(x):
        return torch.cat([image, x[:, :, 1:]], dim=2)

    def run(call):
        x, preds = put_back(noise(0)), []
        for t in (999, 800, 600, 400, 200):
            timestep = torch.full((1, 3 * tokens_per_frame), float(t))
            timestep[:, :tokens_per_frame] = 0  # the clean frame's tokens
            kw = dict(inputs, hidden_states=x, timestep=timestep)
            preds.append(run_model(call, kw))
            x = put_back(x - 0.1 * preds[-1])
        return preds

    compiled = torch.compile(model, backend="ditaccel", options=SPARSE)
    with torch.no_grad():
        eager = run(model)
        for _ in range(2):
            got = run(compiled)
            for step in (0, 1):
                torch.testing.assert_close(got[step], eager[step], rtol=1e-5, atol=1e-5)
            assert all(rel(got[s], eager[s]) > 1e-4 for s in (2, 3, 4))  # sparse: the run was not cut
    (stats,) = ditcompile.sparse_stats(model)
    assert stats["current"]["blocks.0.attn1"]["sparse_calls"] == 3
    assert "generation: latents do not continue the run" not in stats["tracking"]["events"]


def test_reference_tokens_concatenated_to_the_latents_keep_the_step_cache_on():
    """Flux Kontext style: reference-image latents concatenated to the latents, the prediction
    for them dropped."""
    model, inputs = wan()
    reference = noise(12, (1, 4, 1, 16, 24))
    compiled = torch.compile(model, backend="ditaccel", options=CACHE)
    x = noise(0, (1, 4, 2, 16, 24))
    with torch.no_grad():
        for t in torch.linspace(999, 50, 8):
            out = run_model(compiled, dict(inputs, hidden_states=torch.cat([x, reference], dim=2),
                                           timestep=t.reshape(1)))
            x = x - 0.1 * out[:, :, :2]
    (stats,) = ditcompile.cache_stats(model)
    assert stats["current"][0]["reused"] > 0
    assert set(stats["tracking"]["events"]) == {"generation: first call"}


def test_a_second_run_inside_one_declared_generation_is_pointed_out(caplog):
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=SPARSE)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ditcompile"):
        with ditcompile.generation(compiled):
            euler(compiled, inputs, noise(0), [999, 600, 300])
            euler(compiled, inputs, noise(1), [999, 600, 300])
    assert "the timestep moved back (300 -> 999)" in caplog.text
    assert "its own `with ditcompile.generation(model):`" in caplog.text


# ---------------------------------------------------------------------- reports


def test_weights_replaced_before_every_call_are_said_within_a_short_run(caplog):
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=CACHE)
    eager = copy.deepcopy(model)
    x = noise(0)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ditcompile"):
        for t in torch.linspace(999, 50, 5):
            for module in model.modules():  # what sequential CPU offloading does: new Parameter objects
                for name, param in list(module.named_parameters(recurse=False)):
                    setattr(module, name, nn.Parameter(param.detach().clone(), requires_grad=False))
            kw = dict(inputs, hidden_states=x, timestep=t.reshape(1))
            out = run_model(compiled, kw)
            torch.testing.assert_close(out, run_model(eager, kw), rtol=1e-5, atol=1e-5)  # every call computed
            x = x - 0.1 * out
    assert "weights were replaced 2 times between calls" in caplog.text  # said within a 5-step run
    (stats,) = ditcompile.cache_stats(model)
    # the latest state counts the replacements seen (the first call's weights stay held by Dynamo)
    assert stats["tracking"]["events"]["fresh state: the model's weights were replaced since the last call"] >= 2


class EinsumAttention(nn.Module):
    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

    def forward(self, hidden_states):
        b, s, d = hidden_states.shape
        q, k, v = self.qkv(hidden_states).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        probs = torch.einsum("bhqd,bhkd->bhqk", q, k).mul(q.shape[-1] ** -0.5).softmax(dim=-1)
        return torch.einsum("bhqk,bhkd->bhqd", probs, v).transpose(1, 2).reshape(b, s, d)


def test_attention_written_with_einsum_is_reported_and_warned_when_sparse_is_on(caplog):
    torch.manual_seed(0)
    model, x = EinsumAttention().eval(), torch.randn(1, 64, 32)
    report = ditcompile.explain(model, x, strict=True)
    assert any("1 softmax call(s) not recognised as attention" in n for n in report.graphs[0].analysis.notes)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ditcompile"):
        got = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "sparse.enabled": True})(x)
    torch.testing.assert_close(got, model(x))
    assert "sparse.enabled, but no attention of this graph is recognised: 1 softmax call(s)" in caplog.text


def test_stats_belong_to_the_wrapper_they_are_asked_of():
    model, inputs = wan()
    a = torch.compile(model, backend="ditaccel", options={**SPARSE, "sparse.dense_steps": 1})
    b = torch.compile(model, backend="ditaccel", options=CACHE)
    assert ditcompile.sparse_stats(a) == [] and ditcompile.sparse_stats(b) == []
    with torch.no_grad():
        for wrapper in (a, b):
            euler(wrapper, inputs, noise(0), [999, 600, 300])
    (sparse,) = ditcompile.sparse_stats(a)
    assert sparse["options"] == "preset=wan2.1, compiler=eager, strict=True, sparse.enabled=True, sparse.block_size=16, " \
                                "sparse.dense_steps=1, sparse.dense_blocks=[]"
    assert sparse["current"]["blocks.0.attn1"]["sparse_calls"] == 4  # 3 steps x 2 branches, 1 dense step
    assert ditcompile.sparse_stats(b) == [] and ditcompile.cache_stats(a) == []
    assert ditcompile.cache_report(a).startswith("no step-cache state")
    (cache,) = ditcompile.cache_stats(b)
    assert cache["options"].startswith("preset=wan2.1, compiler=eager, strict=True, cache.enabled=True")
    assert len(ditcompile.sparse_stats(model)) == 1 and len(ditcompile.cache_stats(model)) == 1  # the module: all


def test_regional_blocks_report_the_step_tracking_of_their_model():
    model, inputs = wan()
    blocks = copy.deepcopy(model)
    blocks.compile_repeated_blocks(backend="ditaccel", options={**SPARSE, "graph.token_grid": [3, 8, 12]})
    ditcompile.track_steps(blocks)
    with torch.no_grad():
        for seed in (0, 1):
            euler(blocks, inputs, noise(seed), [999, 600, 300])
    stats = ditcompile.sparse_stats(blocks)
    assert sorted(s["block"] for s in stats) == ["blocks.0", "blocks.1"]  # one compiled graph, two blocks
    for state in stats:
        assert state["tracking"] == {"generation": 1, "events": {"generation: first call": 1,
                                                                 "generation: timestep moved back": 1}}


def test_features_a_regional_graph_cannot_use_are_warned_once_not_per_block(caplog):
    model, inputs = wan()
    blocks = copy.deepcopy(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ditcompile"):
        blocks.compile_repeated_blocks(backend="ditaccel", options=CACHE)
        ditcompile.track_steps(blocks)
        euler(blocks, inputs, noise(0), [999, 600])
    assert caplog.text.count("cache.enabled, but this graph runs every step") == 1


# ---------------------------------------------------------------------- recompiles


def test_a_run_that_moves_to_a_recompiled_graph_keeps_its_step_count():
    """Default dynamic: the upscale part-way recompiles a dynamic graph the first time only. The
    steps carry over to the new graph, so the first run and the next agree exactly."""
    model, inputs = wan()
    timesteps = torch.linspace(999, 50, 6)

    def split_run(call):
        x, preds = noise(0), []
        for i, t in enumerate(timesteps):
            if i == 3:
                x = torch.nn.functional.interpolate(x, scale_factor=(1, 2, 2))
            preds.append(run_model(call, dict(inputs, hidden_states=x, timestep=t.reshape(1))))
            x = x - 0.1 * preds[-1]
        return preds

    compiled = torch.compile(model, backend="ditaccel", options=SPARSE)
    with torch.no_grad():
        eager = split_run(model)
        first, second = split_run(compiled), split_run(compiled)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for step in (0, 1):
        torch.testing.assert_close(first[step], eager[step], rtol=1e-5, atol=1e-5)
    assert all(rel(first[s], eager[s]) > 1e-4 for s in (2, 3, 4, 5))  # steps 3-5 run sparse on the new graph


@pytest.mark.inductor
def test_step_cache_pieces_run_through_inductor(monkeypatch):
    from ditcompile import backend

    compiled_pieces = []
    real = backend._piece_backend

    def spy(gm, example_inputs, **kw):
        compiled_pieces.append(len(list(gm.graph.nodes)))
        return real(gm, example_inputs, **kw)

    monkeypatch.setattr(backend, "_piece_backend", spy)
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options={**CACHE, "compiler": "inductor"})
    same_plan = torch.compile(copy.deepcopy(model), backend="ditaccel", options=CACHE)  # compiler "eager"
    with torch.no_grad():
        x = noise(0)
        for t in torch.linspace(999, 50, 3):
            kw = dict(inputs, hidden_states=x, timestep=t.reshape(1))
            out = run_model(compiled, kw)
            torch.testing.assert_close(out, run_model(same_plan, kw), rtol=1e-4, atol=1e-4)
            x = x - 0.1 * out
    assert len(compiled_pieces) == 3  # head, body and tail, each once: not silently eager
    assert ditcompile.cache_stats(model)[0]["current"][0]["pattern"] == [True, False, False]


# ---------------------------------------------------------------------- callers


def test_kept_request_scopes_keep_interleaved_synchronous_requests_apart():
    """A scheduler that steps several requests in turns in one thread (no asyncio)."""
    model, inputs = wan()
    compiled = torch.compile(model, backend="ditaccel", options=CACHE)
    timesteps = torch.linspace(999, 50, 5)
    with torch.no_grad():
        alone = []
        for seed in (0, 1):
            with ditcompile.request_scope():
                alone.append(euler(compiled, inputs, noise(seed), timesteps))
        scopes = [ditcompile.request_scope(f"request {seed}", keep=True) for seed in (0, 1)]
        xs, got = [noise(0), noise(1)], [[], []]
        for t in timesteps:
            for i, scope in enumerate(scopes):
                with scope:
                    got[i] += euler(compiled, inputs, xs[i], [t])
                    assert ditcompile.cache_stats(model)[-1]["tracking"]["generation"] == 0  # one run each
                xs[i] = xs[i] - 0.1 * got[i][-1]
        for i, scope in enumerate(scopes):
            for a, b in zip(got[i], alone[i]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            scope.close()
        with pytest.raises(RuntimeError, match="is closed"):
            with scopes[0]:
                pass
    once = ditcompile.request_scope("once")
    with once:
        pass
    with pytest.raises(RuntimeError, match=r"keep=True"):
        with once:
            pass
