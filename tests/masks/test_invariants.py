"""Plan invariants of every sparse policy, swept with hypothesis (issue 11, deliverable 1): every
query attends at least one key (its own, the diagonal, as the papers' masks have it) at every
grid, block size and text length, and the executor's output equals exact attention restricted to
the same token mask."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ditcompile.geometry import TextSegment, TokenGrid, TokenLayout
from ditcompile.kernels.block_mask import BlockSparseMask
from ditcompile.masks import generate_radial_mask, generate_spatial_mask, intersection, pattern_token_rows, union
from ditcompile.masks.pattern import SparsePattern, self_attention_mask
from ditcompile.masks.policy import ChoiceInputs, PatternChoice
from ditcompile.masks.radial import RadialParams
from ditcompile.masks.registry import POLICIES
from ditcompile.ops.impl.sparse import run_choice
from ditcompile.plans.attention import AttentionPlan

HEADS, DIM = 2, 16


def params_of(name, draw):
    """The policy's defaults, or for radial also the wan2.1 preset's (the issue's failing case)."""
    if name == "radial" and draw(st.booleans()):
        return RadialParams(band=1, decay_factor=0.2, sink=True, min_window=None)
    return POLICIES[name].params()


def exact_masked_attention(q, k, v, allowed):
    """q, k, v: [B, H, S, D]; allowed: bool [B|1, H|1, S, S] in original token order."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(POLICIES)), frames=st.integers(1, 4), height=st.integers(1, 9),
       width=st.integers(1, 12), block=st.sampled_from([16, 32, 64, 128]), text=st.sampled_from([0, 5, 17]),
       position=st.sampled_from(["before", "after"]), data=st.data())
def test_every_query_attends_a_key_and_the_executor_equals_exact_masked_attention(
        name, frames, height, width, block, text, position, data):
    policy = POLICIES[name]
    params = params_of(name, data.draw)
    tokens = TokenLayout.of(TokenGrid(frames, height, width, "t"), TextSegment(position, text, "t") if text else None)
    statics = policy.static_patterns(tokens, block, params, "cpu")
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, tokens.total, DIM, generator=g) for _ in range(3))  # [B, H, S, D]
    if policy.data_dependent:
        choice = policy.choose(ChoiceInputs(q, k, v, "bhsd", None, 0), tokens, block, params, statics)
    else:
        choice = policy.static_choice(tokens, block, params, "cpu")
    rows = torch.arange(tokens.total)
    allowed = torch.zeros(1, HEADS, tokens.total, tokens.total, dtype=torch.bool)
    for head in range(HEADS):
        index = 0 if choice.assignment is None else int(choice.assignment[0, head])
        token_rows = pattern_token_rows(choice.patterns[index], rows)  # [B|1, H|1, S, S]
        allowed[0, head] = token_rows[0, min(head, token_rows.shape[1] - 1)]
    assert allowed.any(-1).all(), "a query attends no key"
    assert allowed.diagonal(dim1=-2, dim2=-1).all(), "a query does not attend its own key"
    got = run_choice(q, k, v, "bhsd", None, choice, AttentionPlan())
    torch.testing.assert_close(got, exact_masked_attention(q, k, v, allowed), rtol=1e-4, atol=1e-4)


def test_the_issue_grids_keep_every_query_with_the_wan_preset_radial_parameters():
    params = RadialParams(band=1, decay_factor=0.2, sink=True, min_window=None)
    for grid in ((3, 8, 12), (1, 30, 52), (2, 4, 4)):
        (pattern,) = POLICIES["radial"].static_patterns(TokenLayout.of(grid), 128, params, "cpu")
        assert bool((pattern.mask.kv_num_blocks > 0).all())
        assert pattern.mask.density() > 0


def test_a_pattern_whose_query_block_attends_nothing_is_refused():
    blocks = torch.tensor([[True, False], [False, False]])
    empty = BlockSparseMask.from_dense_block_mask(blocks, 16, 16, 32, 32)
    with pytest.raises(ValueError, match="query block 1 .* attends no key block"):
        SparsePattern(empty, name="broken")
    # the shared constructor adds the diagonal, so the same blocks make a valid pattern
    fixed = self_attention_mask(blocks, 16, 16, 32)
    assert fixed.to_dense_block_mask()[0, 0].tolist() == [[True, False], [False, True]]
    SparsePattern(fixed, name="fixed")


@settings(max_examples=30, deadline=None)
@given(frames=st.integers(1, 4), height=st.integers(1, 9), width=st.integers(1, 12),
       block=st.sampled_from([16, 32, 64]), text=st.sampled_from([0, 5, 17]), seed=st.integers(0, 2**16),
       combine=st.sampled_from(["union", "intersection"]))
def test_composed_masks_keep_every_query_and_match_exact_masked_attention(frames, height, width, block, text, seed,
                                                                         combine):
    grid, segment = TokenGrid(frames, height, width, "t"), TextSegment("before", text, "t") if text else None
    a = generate_radial_mask(grid, segment, block_m=block, block_n=block, band=1, decay_factor=0.2, sink=False)
    b = generate_spatial_mask(grid, segment, block_m=block, block_n=block)
    pattern = (union if combine == "union" else intersection)(a, b)
    total = pattern.seq_len
    allowed = pattern_token_rows(pattern, torch.arange(total))  # [1, 1, S, S]
    assert allowed.diagonal(dim1=-2, dim2=-1).all()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, total, DIM, generator=g) for _ in range(3))
    got = run_choice(q, k, v, "bhsd", None, PatternChoice((pattern,)), AttentionPlan())
    torch.testing.assert_close(got, exact_masked_attention(q, k, v, allowed), rtol=1e-4, atol=1e-4)
