"""The attention ops' tuning candidates on the CPU: every candidate that claims a problem agrees
with attention computed from the definition (so validation keeps it), FlexAttention gets the same
block mask and key padding, wrong candidates are dropped, and the op runs the cached choice."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ditcompile.autotune import Autotuner, Candidate, cpu_median_ms, recorded_choices, tune_problem
from ditcompile.autotune.lookup import FROM_CACHE
from ditcompile.kernels.block_mask import BlockSparseMask
from ditcompile.ops.impl.masks import CallMask
from ditcompile.ops.tunables import (DENSE, INT8, SPARSE, TUNABLES, AttentionProblem, flex_block_mask, reference_rows,
                                     rows_error)


def qkv(b=2, h=2, s=96, d=16, layout="bhsd", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, h, s, d) if layout == "bhsd" else (b, s, h, d)
    return [torch.randn(*shape, generator=g) for _ in range(3)]


def padding_mask(b=2, s=96, valid=(80, 96)):
    m = torch.zeros(b, 1, 1, s, dtype=torch.bool)
    for i, n in enumerate(valid):
        m[i, ..., :n] = True
    return m


def block_mask(s=96, block=16, dense_q=None, dense_kv=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = s // block
    blocks = torch.rand(1, 2, n, n, generator=g) < 0.5
    blocks |= torch.eye(n, dtype=torch.bool)  # every query block attends something
    return BlockSparseMask.from_dense_block_mask(blocks, block, block, s, s, dense_q_range=dense_q,
                                                 dense_kv_range=dense_kv)


def problems():
    q, k, v = qkv()
    pad = padding_mask()
    tiles = torch.kron(torch.ones(6, 6).tril().bool(), torch.ones(16, 16, dtype=torch.bool))  # block-causal
    irregular = torch.rand(96, 96, generator=torch.Generator().manual_seed(3)) < 0.7
    irregular |= torch.eye(96, dtype=torch.bool)
    tile_mask = CallMask("dense", tiles)
    qs, ks, vs = qkv(layout="bshd", seed=2)
    return {
        "dense": AttentionProblem(q, k, v, "bhsd", None, False),
        "dense bshd scale": AttentionProblem(qs, ks, vs, "bshd", 0.3, False),
        "causal": AttentionProblem(q, k, v, "bhsd", None, True),
        "key padding": AttentionProblem(q, k, v, "bhsd", None, False, call_mask=CallMask("key_padding", pad)),
        "irregular dense mask": AttentionProblem(q, k, v, "bhsd", None, False, call_mask=CallMask("dense", irregular)),
        "uniform tiles": AttentionProblem(q, k, v, "bhsd", None, False, call_mask=tile_mask,
                                          block_mask=tile_mask.block_mask(96, 96, 16)),
        "sparse": AttentionProblem(q, k, v, "bhsd", None, False, block_mask=block_mask(), default="reference"),
        "sparse + text + padding": AttentionProblem(
            q, k, v, "bhsd", None, False, call_mask=CallMask("key_padding", pad),
            block_mask=block_mask(dense_q=(88, 96), dense_kv=(88, 96)), default="reference"),
        "sparse & block-causal mask": AttentionProblem(
            q, k, v, "bhsd", None, False, call_mask=tile_mask, default="reference", sparse=True,
            block_mask=BlockSparseMask.from_dense_block_mask(
                tile_mask.block_mask(96, 96, 16).to_dense_block_mask() & block_mask().to_dense_block_mask(),
                16, 16, 96, 96)),
        "int8": AttentionProblem(q, k, v, "bhsd", None, False, quant="int8", default="reference"),
        "int8 sparse": AttentionProblem(q, k, v, "bhsd", None, False, quant="int8", block_mask=block_mask(),
                                        default="reference"),
    }


PROBLEMS = problems()


def exact(p: AttentionProblem) -> torch.Tensor:
    """float64 SDPA of the whole problem with the equivalent dense boolean/additive mask."""
    q, k, v = (t.double() for t in p.bhsd())
    mask = None
    if p.block_mask is not None:
        s = torch.arange(q.shape[2])
        mask = p.block_mask.allowed(s, torch.arange(k.shape[2]))
    if p.attn_mask is not None:
        m = p.attn_mask if p.attn_mask.dtype == torch.bool else p.attn_mask.double()
        mask = m if mask is None else (mask & m)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=p.is_causal, scale=p.scale)
    return out.nan_to_num(0.0)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_reference_rows_is_attention_by_definition(name):
    p = PROBLEMS[name]
    ref = reference_rows(p)
    full = exact(p)
    rows = torch.linspace(0, full.shape[2] - 1, ref.shape[2]).round().long()
    assert torch.allclose(ref.double(), full[:, :, rows], atol=1e-5)


EXPECTED_VALID = {
    "dense": {"sdpa", "sdpa.math", "sdpa.flash", "reference", "flex"},
    "dense bshd scale": {"sdpa", "sdpa.math", "sdpa.flash", "reference", "flex"},
    "causal": {"sdpa", "sdpa.math", "sdpa.flash"},
    "key padding": {"sdpa", "sdpa.math", "reference", "flex"},  # CPU flash SDPA takes no mask
    "irregular dense mask": {"sdpa", "sdpa.math"},
    "uniform tiles": {"sdpa", "sdpa.math", "reference", "flex"},
    "sparse": {"reference", "flex"},
    "sparse + text + padding": {"reference", "flex"},
    "sparse & block-causal mask": {"reference", "flex"},  # SDPA of the mask alone would ignore the pattern
    "int8": {"reference"},
    "int8 sparse": {"reference"},
}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_cpu_candidates_validate_and_the_fastest_timed_wins(name):
    p = PROBLEMS[name]
    result = tune_problem(TUNABLES[p.op], p, lambda fn, budget: cpu_median_ms(fn, budget, max_reps=3), 1.0)
    valid = set(result.times_ms)
    assert EXPECTED_VALID[name] <= valid | {"sdpa.flash"} and valid <= EXPECTED_VALID[name] | {"sdpa.flash"}
    fastest = min(result.times_ms, key=result.times_ms.get)
    t = result.times_ms
    # the fastest wins, unless it is within the 3% noise margin of the default (which then stays)
    assert result.winner == fastest or (result.winner == p.default and t[fastest] > 0.97 * t[p.default])
    for dropped, why in result.dropped.items():  # on the CPU only "cannot run here" drops, never "wrong"
        assert not why.startswith("wrong") and "non-finite" not in why, (dropped, why)
    assert p.op == {"int8": INT8, "int8 sparse": INT8, "sparse": SPARSE, "sparse + text + padding": SPARSE,
                    "sparse & block-causal mask": SPARSE}.get(name, DENSE)


def test_a_wrong_or_nan_candidate_is_never_chosen():
    base = TUNABLES[DENSE]
    liar = Candidate("liar", lambda p: torch.zeros_like(p.q))
    nan = Candidate("nan", lambda p: torch.full_like(p.q, float("nan")))
    tunable = dataclasses.replace(base, op="test.dense", candidates=(*base.candidates, liar, nan))
    times = {"liar": 0.001, "nan": 0.001}

    def timer(fn, budget):
        return times.get(getattr(fn, "__defaults__", (None,))[0].name, 1.0)

    result = tune_problem(tunable, PROBLEMS["dense"], timer)
    assert result.winner not in ("liar", "nan")
    assert result.dropped["liar"].startswith("wrong") and "non-finite" in result.dropped["nan"]


def test_flex_gets_the_same_block_mask_and_is_converted_once():
    p = PROBLEMS["sparse + text + padding"]
    assert flex_block_mask(p.block_mask) is flex_block_mask(p.block_mask)
    out = TUNABLES[SPARSE].candidate("flex").run(p)
    assert rows_error(out, reference_rows(p), p) < 1e-5
    assert torch.allclose(out.double(), exact(p), atol=1e-5)


class Attn(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_the_op_runs_the_cached_choice_and_explain_says_so(tmp_path):
    from ditcompile import explain
    q, k, v = qkv(b=1, h=2, s=64, d=16, seed=5)
    problem = AttentionProblem(q, k, v, "bhsd", None, False)
    Autotuner("online", tmp_path, time_ms=lambda fn, budget, device: 0.5 if _runs(fn, "sdpa.math") else 1.0).tune(
        TUNABLES[DENSE], problem)
    model = Attn()
    options = {"compiler": "eager", "autotune.cache_dir": str(tmp_path)}
    out = torch.compile(model, backend="ditaccel", options=options)(q, k, v)
    assert recorded_choices()[""][1].name == "sdpa.math" and recorded_choices()[""][1].source == FROM_CACHE
    torch.testing.assert_close(out, model(q, k, v))
    report = explain(model, q, k, v, options=options)
    assert "sdpa.math (cache)" in report.format()
    assert report.to_dict()["graphs"][0]["attention"][0]["kernel_from_cache"] is True


def _runs(fn, name):
    candidate = fn.__defaults__[0]
    return candidate.name == name
