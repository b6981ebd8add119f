"""The sparse-attention executor: build the site's patterns, run them, guard fidelity.

Called by `ditaccel::attention` for plans with a `SparseSpec`:

    step unknown (inside a compiled call)                         -> dense attention (the safe path)
    a block in spec.dense_blocks (a regional block, at run time)  -> dense attention
    step < spec.dense_steps, or the guard switched the site off  -> dense attention
    the policy's pattern leaves a query attending no key          -> dense attention, warned once
                                                                     (sparse_stats: "invalid_pattern")
    otherwise:
        statics = policy.static_patterns(token layout, block, params)       (cached by the factories)
        choice  = statics[0] for all heads, or policy.choose(q, k, v, ...)  (reused for
                  policy.refresh_steps(params) steps; per-site state)
        per pattern of the choice: its heads' q, k, v permuted by the pattern, block-sparse
        kernel (reference on the CPU), output un-permuted
    every `guard_every` sparse calls: exact attention on `guard_rows` sampled query rows; a
    relative L2 error above `guard_budget` turns the site dense for the rest of the generation

The call's attn_mask (`impl/masks.CallMask`) composes with the pattern: a key-padding mask is
permuted with the keys and added by the kernel in every tile (padded text keys stay masked under
any pattern); a dense mask made of uniform tiles at the plan's block size (block-causal frames) is
intersected with each pattern's block mask (patterns without a token permutation or text ranges);
another dense mask runs the call dense and exact, said once per site.

The executor never names a policy: it reads `masks.POLICIES`. Per-site state (the last
choice, guard results, counts) lives in `ModelRuntime.sparse`, per site and per q shape (a new
resolution starts fresh), and restarts with each generation; `ditcompile.sparse_stats(model)`
returns it. Called outside any compiled call (no step context), a plan runs as written, with no
warm-up.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...geometry import TokenLayout, block_of, heads_dim, seq_dim, to_bhsd
from ...kernels.block_mask import BlockSparseMask
from ...masks import ChoiceInputs, PatternChoice, PatternInvariantError, SparsePattern, apply_permutation, get_policy, undo_permutation
from .masks import CallMask
from ...plans import AttentionPlan, SparseSpec
from ...runtime.sparse_state import SiteState
from ...runtime.state import current_runtime, current_step, parent_grid
from ..select import select_impl, warn_fallback, warn_once
from .dense import run_kernel

log = logging.getLogger("ditcompile")

Dense = Callable[[Tensor, Tensor, Tensor], Tensor]  # exact attention in the same layout


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], plan: AttentionPlan,
                     dense: Dense, grid: Optional[Sequence[int]] = None, call_mask: CallMask = CallMask()) -> Tensor:
    """q, k, v: [B, H, S, D] or [B, S, H, D] (`layout`), the site's joint sequence (S = video +
    text tokens). `dense(q, k, v)` computes exact attention with the call's mask (the warm-up
    path and the guard's fallback). `grid`: the run-time (frames, height, width) when the plan's
    grid is dynamic. `call_mask`: the call's attn_mask (see the module docstring).
    Returns q's shape, dtype and layout, contiguous."""
    spec = plan.sparse
    if spec.dynamic_grid and grid is None:
        grid = parent_grid()  # a regionally compiled block: the grid of the model call (track_steps)
        if grid is None:
            warn_once((plan.site_path, "no grid"), "ditaccel: sparse attention at %s: the token grid of this call is "
                      "unknown (a regionally compiled block needs ditcompile.track_steps(model), and a model whose "
                      "patch embedding is a Conv2d/Conv3d -- or set graph.token_grid); it runs dense", plan.site_path)
            return dense(q, k, v)
    tokens = spec.layout(grid)
    if tokens.total != q.shape[seq_dim(layout)]:  # the grid does not describe this call: exact attention
        warn_once((plan.site_path, "grid"), "ditaccel: sparse attention at %s: the token grid %s (+%d text) gives "
                  "%d tokens but q has %d; this call runs dense", plan.site_path,
                  f"{tokens.frames}x{tokens.height}x{tokens.width}", tokens.text_len, tokens.total,
                  q.shape[seq_dim(layout)])
        return dense(q, k, v)
    info, runtime = current_step(), current_runtime()
    site, path, block = None, plan.site_path, runtime.block() if runtime is not None else None
    if block is not None and block_of(path) is None:
        path = f"{block.path}.{path}"  # a regionally compiled block's site: name it in the model
    if runtime is not None and info is not None:
        site = runtime.sparse.site(path, info.generation, tuple(q.shape), info.branch)
    step = info.step if info is not None else None
    unknown = info is not None and step is None  # inside a compiled call whose step is unknown
    dense_block = bool(spec.dense_blocks) and (block is None or block.index in spec.dense_blocks)
    if (unknown or dense_block or (step is not None and step < spec.dense_steps)
            or (site is not None and site.dense_from_step is not None)):
        if site is not None:
            site.dense_calls += 1
        return dense(q, k, v)
    try:
        choice = pattern_choice(q, k, v, layout, scale, spec, tokens, site, step)
    except PatternInvariantError as err:  # never run a pattern that leaves queries attending nothing
        warn_once((plan.site_path, "invariant"), "ditaccel: sparse attention at %s: %s; this site runs dense "
                  "for this shape", path, err)
        if site is not None:
            site.dense_calls += 1
            site.invalid_pattern = str(err)
        return dense(q, k, v)
    if call_mask.kind == "dense":
        composed = with_dense_mask(choice, call_mask, spec.block_size)
        if composed is None:
            warn_once((plan.site_path, "mask tiles"), "ditaccel: sparse attention at %s runs dense with its mask "
                      "(exact): the mask is not made of whole %dx%d tiles, or the pattern permutes tokens",
                      path, spec.block_size, spec.block_size)
            if site is not None:
                site.dense_calls += 1
            return dense(q, k, v)
        choice = composed
    out = run_choice(q, k, v, layout, scale, choice, plan, call_mask.key_bias)
    if site is not None:
        site.density = choice.density
        site.sparse_calls += 1
        if spec.guard_every and (site.sparse_calls - 1) % spec.guard_every == 0:
            error = guard_error(q, k, v, out, layout, scale, spec.guard_rows, seed=step or 0, call_mask=call_mask)
            site.guard_errors.append((step, error, info.branch))
            if error > spec.guard_budget:
                site.dense_from_step = step
                log.info("ditaccel sparse guard: %s error %.3g > budget %.3g at step %s; dense for the rest "
                         "of this generation", path, error, spec.guard_budget, step)
                return dense(q, k, v)
    return out


def pattern_choice(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], spec: SparseSpec,
                   tokens: TokenLayout, site: Optional[SiteState], step: Optional[int]) -> PatternChoice:
    """Which pattern each (batch, head) runs this call (see the module docstring).

    q, k, v: [B, H, S, D] or [B, S, H, D] (`layout`). A data-dependent policy's choice is kept in
    `site` and reused for `refresh_steps` steps while it fits [B, H]."""
    policy, params = get_policy(spec.policy), spec.policy_params
    if not policy.data_dependent:
        return policy.static_choice(tokens, spec.block_size, params, q.device)
    statics = policy.static_patterns(tokens, spec.block_size, params, q.device)
    reuse = policy.refresh_steps(params)
    batch, heads = q.shape[0], q.shape[heads_dim(layout)]
    last = site.choice if site is not None else None
    if (last is not None and reuse > 0 and step is not None and site.choice_step >= 0
            and step - site.choice_step < reuse and last.fits(batch, heads)):
        return last
    choice = policy.choose(ChoiceInputs(q, k, v, layout, scale, step), tokens, spec.block_size, params, statics)
    if site is not None and reuse > 0:
        site.choice, site.choice_step = choice, step if step is not None else 0
    return choice


def with_dense_mask(choice: PatternChoice, call_mask: CallMask, block: int) -> Optional[PatternChoice]:
    """`choice` with each pattern's block mask intersected with the call's dense mask (uniform
    `block` x `block` tiles); None when the mask's tiles are not uniform or a pattern permutes
    tokens or has text ranges (the intersection would not be a block mask), or the intersection
    leaves a query block attending no key."""
    patterns = []
    for pattern in choice.patterns:
        mask = pattern.mask
        if pattern.permutation is not None or mask.dense_q_range or mask.dense_kv_range:
            return None
        blocks = call_mask.block_mask(mask.q_len, mask.kv_len, block)
        if blocks is None or (blocks.block_m, blocks.block_n) != (mask.block_m, mask.block_n):
            return None
        both = mask.to_dense_block_mask() & blocks.to_dense_block_mask()  # [B|1, H|1, NQB, NKB]
        intersected = type(mask).from_dense_block_mask(both, mask.block_m, mask.block_n, mask.q_len, mask.kv_len)
        try:
            patterns.append(SparsePattern(intersected, None, f"{pattern.name}&mask"))
        except PatternInvariantError:  # a query block left with no key: run it exactly instead
            return None
    return PatternChoice(tuple(patterns), choice.assignment)


def run_choice(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], choice: PatternChoice,
               plan: AttentionPlan, key_bias: Optional[Tensor] = None) -> Tensor:
    """Attention of every (batch, head) under its pattern; heads sharing a pattern run together.

    q, k, v: [B, H, S, D] or [B, S, H, D] (`layout`); key_bias: float32 [B|1, S] key padding
    (or None). Returns q's shape, dtype and layout, contiguous."""
    if choice.assignment is None:
        return run_pattern(q, k, v, layout, scale, choice.patterns[0], plan, key_bias)
    hd = heads_dim(layout)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous in q's layout
    for b in range(q.shape[0]):
        for index, pattern in enumerate(choice.patterns):
            heads = (choice.assignment[b] == index).nonzero().flatten().to(q.device)
            if heads.numel() == 0:
                continue
            qh, kh, vh = (t[b:b + 1].index_select(hd, heads) for t in (q, k, v))  # this group's heads
            bias = None if key_bias is None else key_bias[b:b + 1] if key_bias.shape[0] > 1 else key_bias
            out[b:b + 1].index_copy_(hd, heads, run_pattern(qh, kh, vh, layout, scale, pattern, plan, bias))
    return out


def run_pattern(q: Tensor, k: Tensor, v: Tensor, layout: str, scale: Optional[float], pattern: SparsePattern,
                plan: AttentionPlan, key_bias: Optional[Tensor] = None) -> Tensor:
    """Attention of q/k/v under one pattern: permute the tokens, block-sparse kernel, un-permute.

    q, k, v: [B, H, S, D] or [B, S, H, D] (`layout`), S = pattern.seq_len; key_bias: float32
    [B|1, S] in the original token order (or None). Returns q's shape and layout, contiguous."""
    sd = seq_dim(layout)
    qp, kp, vp = (apply_permutation(t, pattern, sd) for t in (q, k, v))
    bias = None if key_bias is None else apply_permutation(key_bias, pattern, 1)  # [B|1, S], the keys' order
    out = block_sparse_attention(qp, kp, vp, pattern.mask, layout, scale, plan, bias)
    return undo_permutation(out, pattern, sd).contiguous()


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, mask: BlockSparseMask, layout: str,
                           scale: Optional[float], plan: AttentionPlan, key_bias: Optional[Tensor] = None) -> Tensor:
    """The block-sparse kernel on CUDA, its reference on the CPU (or where the kernel cannot run).

    q, k, v: [B, H, S, D] or [B, S, H, D] (`layout`), already in the mask's token order (key_bias
    [B|1, S] too); returns q's shape and layout."""
    impl = select_impl(q, k, v, is_causal=False, backend=plan.backend, block_sparse=True)
    warn_fallback(plan.site_path, impl)
    return run_kernel(impl, q, k, v, mask, layout, scale, plan, key_bias=key_bias)


def guard_error(q: Tensor, k: Tensor, v: Tensor, out: Tensor, layout: str, scale: Optional[float], rows: int,
                seed: int, call_mask: CallMask = CallMask()) -> float:
    """Relative L2 error (a float, 0 = exact) of `out` against exact fp32 attention (with the
    call's mask) on `rows` query rows sampled with `seed`. q, k, v, out: [B, H, S, D] or
    [B, S, H, D] (`layout`)."""
    sd = seq_dim(layout)
    length = q.shape[sd]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    index = torch.randperm(length, generator=generator)[: min(rows, length)].to(q.device)
    qs, os_ = (to_bhsd(t.index_select(sd, index), layout) for t in (q, out))  # [B, H, R, D]
    kk, vv = to_bhsd(k, layout), to_bhsd(v, layout)
    mask = call_mask.rows(index)
    if mask is not None and mask.is_floating_point():
        mask = mask.float()
    exact = F.scaled_dot_product_attention(qs.float(), kk.float(), vv.float(), attn_mask=mask, scale=scale)
    return float(((os_.float() - exact).norm() / exact.norm().clamp_min(1e-12)).item())


__all__ = ["sparse_attention", "pattern_choice", "run_choice", "run_pattern", "block_sparse_attention",
           "guard_error"]
