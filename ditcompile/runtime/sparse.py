"""Sparse attention at run time: build the site's pattern, run the kernel, guard fidelity.

Called by `ditaccel::attention` for plans with method "sparse":

    step < plan.dense_steps, or the guard switched the site off   -> dense attention
    otherwise: pattern = policy(grid, text, block size, params[, q, k])
               q, k, v permuted by the pattern (temporal heads, tiles), kernel, output un-permuted
    every `guard_every` sparse steps: exact attention on `guard_rows` sampled query rows; a
    relative L2 error above `guard_budget` turns the site dense for the rest of the generation

Per-site state (head classes, guard results, counts) lives in the model's runtime
(`ModelRuntime.extras["sparse"]`) and restarts with each generation; `sparse_stats(model)`
returns it.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..graph.sites import TextSegment
from ..plan import AttentionPlan
from .state import GenerationState, current_runtime, current_step, pass_stats

log = logging.getLogger("ditcompile")


@dataclass
class SiteState:
    sparse_calls: int = 0
    dense_calls: int = 0
    guard_errors: list = field(default_factory=list)   # [(step, relative L2 error)]
    dense_from_step: Optional[int] = None               # set by the guard
    head_classes: Any = None                            # spatial_temporal: bool [B, H], True = spatial
    classes_step: int = -1
    density: Optional[float] = None


class SparseState(GenerationState):
    """Per-site `SiteState`s of the current generation (`data`: site module path -> SiteState)."""

    def site(self, name: str, generation: int) -> SiteState:
        return self.entry(name, generation, SiteState)

    def summary(self) -> dict:
        return {name: {"sparse_calls": s.sparse_calls, "dense_calls": s.dense_calls,
                       "guard_errors": list(s.guard_errors), "dense_from_step": s.dense_from_step,
                       "density": s.density}
                for name, s in self.data.items()}


def text_of(plan: AttentionPlan) -> Optional[TextSegment]:
    return TextSegment(plan.text_position, plan.text_length, "plan") if plan.text_position else None


def static_pattern(plan: AttentionPlan, device: Any):
    """The pattern of a data-independent policy (radial, tile), cached by the factories."""
    from ..masks import generate_radial_mask, generate_tile_mask

    factory = {"radial": generate_radial_mask, "tile": generate_tile_mask}[plan.policy]
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in plan.policy_params.items()}
    return factory(plan.grid, text_of(plan), block_m=plan.block_size, block_n=plan.block_size, device=device,
                   **params)


_EXTRA_PARAMS = {"spatial_temporal": {"frame_window", "position_window", "sink", "num_samples", "reclassify_every"}}


def check_params(policy: str, params: dict) -> None:
    """Raise ValueError naming unknown parameters of a policy and the accepted ones."""
    import inspect

    from .. import masks

    if policy in _EXTRA_PARAMS:
        accepted = _EXTRA_PARAMS[policy]
    else:
        factory = getattr(masks, f"generate_{policy}_mask")
        fixed = {"grid", "text", "block_m", "block_n", "device", "q", "k", "scale", "layout"}
        accepted = set(inspect.signature(factory).parameters) - fixed
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"sparse.{policy}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")


def plan_density(plan: AttentionPlan) -> Optional[float]:
    """Block density of a data-independent plan (built on the CPU, cached); None if data-dependent."""
    if plan.policy not in ("radial", "tile"):
        return None
    return float(static_pattern(plan, "cpu").density)


def run_sparse(q, k, v, layout: str, scale: Optional[float], plan: AttentionPlan, dense) -> torch.Tensor:
    """`dense(q, k, v)` computes exact attention in the same layout (the fallback and reference)."""
    info, runtime = current_step(), current_runtime()
    site = None
    if runtime is not None and info is not None:
        site = runtime.extras.setdefault("sparse", SparseState()).site(plan.site, info.generation)
    step = info.step if info is not None else None
    if (step is not None and step < plan.dense_steps) or (site is not None and site.dense_from_step is not None):
        if site is not None:
            site.dense_calls += 1
        return dense(q, k, v)
    out = _sparse_forward(q, k, v, layout, scale, plan, site, step)
    if site is not None:
        site.sparse_calls += 1
        if plan.guard_every and (site.sparse_calls - 1) % plan.guard_every == 0:
            error = guard_error(q, k, v, out, layout, scale, plan.guard_rows, seed=step or 0)
            site.guard_errors.append((step, error))
            if error > plan.guard_budget:
                site.dense_from_step = step
                log.info("ditaccel sparse guard: %s error %.3g > budget %.3g at step %s; dense for the rest "
                         "of this generation", plan.site, error, plan.guard_budget, step)
                return dense(q, k, v)
    return out


def _sparse_forward(q, k, v, layout, scale, plan: AttentionPlan, site: Optional[SiteState], step) -> torch.Tensor:
    params = plan.policy_params
    bs = plan.block_size
    if plan.policy in ("radial", "tile"):
        pattern = static_pattern(plan, q.device)
        _note_density(site, pattern)
        return run_pattern(q, k, v, layout, scale, pattern, plan)
    if plan.policy == "antidiagonal":
        from ..masks import generate_antidiagonal_mask

        pattern = generate_antidiagonal_mask(q, k, plan.grid, text_of(plan), block_m=bs, block_n=bs, scale=scale,
                                             layout=layout, **params)
        _note_density(site, pattern)
        return run_pattern(q, k, v, layout, scale, pattern, plan)
    return _spatial_temporal(q, k, v, layout, scale, plan, site, step, dict(params))


def _note_density(site: Optional[SiteState], pattern) -> None:
    if site is not None:
        site.density = float(pattern.density)


def _spatial_temporal(q, k, v, layout, scale, plan, site, step, params) -> torch.Tensor:
    """Sparse VideoGen: each head runs the spatial or the temporal pattern, as classified on
    sampled query rows every `reclassify_every` steps (1: every step)."""
    from ..masks import classify_heads, generate_spatial_mask, generate_temporal_mask

    every = int(params.pop("reclassify_every", 1))
    samples = int(params.pop("num_samples", 32))
    frame_window = int(params.get("frame_window", 0))
    position_window = int(params.pop("position_window", 0))
    sink = bool(params.get("sink", False))
    text, bs = text_of(plan), plan.block_size
    spatial = generate_spatial_mask(plan.grid, text, block_m=bs, block_n=bs, frame_window=frame_window, sink=sink,
                                    device=q.device)
    temporal = generate_temporal_mask(plan.grid, text, block_m=bs, block_n=bs, position_window=position_window,
                                      sink=sink, device=q.device)
    classes = site.head_classes if site is not None else None
    stale = classes is None or step is None or site.classes_step < 0 or step - site.classes_step >= every
    if stale or classes.shape[0] != q.shape[0]:
        generator = torch.Generator(device="cpu").manual_seed(step or 0)
        classes = classify_heads(q, k, plan.grid, text, num_samples=samples, layout=layout, v=v, spatial=spatial,
                                 temporal=temporal, frame_window=frame_window, position_window=position_window,
                                 sink=sink, scale=scale, generator=generator)
        if site is not None:
            site.head_classes, site.classes_step = classes, step if step is not None else 0
    head_dim = 1 if layout == "bhsd" else 2
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for pattern, heads in ((spatial, classes[b]), (temporal, ~classes[b])):
            index = heads.nonzero().flatten().to(q.device)
            if index.numel() == 0:
                continue
            qh, kh, vh = (t[b:b + 1].index_select(head_dim, index) for t in (q, k, v))  # this group's heads
            part = run_pattern(qh, kh, vh, layout, scale, pattern, plan)
            out[b:b + 1].index_copy_(head_dim, index, part)
    if site is not None:
        frac = classes.float().mean().item()
        site.density = frac * spatial.density + (1 - frac) * temporal.density
    return out


def run_pattern(q, k, v, layout: str, scale: Optional[float], pattern, plan: AttentionPlan) -> torch.Tensor:
    """Attention of q/k/v under a pattern: permute, block-sparse kernel (reference on CPU), un-permute."""
    from ..masks import apply_permutation, undo_permutation

    seq_dim = 2 if layout == "bhsd" else 1
    qp, kp, vp = (apply_permutation(t, pattern, seq_dim) for t in (q, k, v))
    out = block_sparse_attention(qp, kp, vp, pattern.mask, layout, scale, plan)
    return undo_permutation(out, pattern, seq_dim).contiguous()


def block_sparse_attention(q, k, v, mask, layout, scale, plan: AttentionPlan) -> torch.Tensor:
    from ..kernels.dispatch import triton_unsupported

    reason = triton_unsupported(q, k, v, False) if q.is_cuda else None
    if q.is_cuda and reason is None:
        from ..kernels.flash_attention import sparse_flash_attention

        return sparse_flash_attention(q, k, v, mask, scale=scale, layout=layout, quant=plan.quant)
    if reason is not None:
        _warn_reference(plan.site, reason)
    from ..kernels.reference import int8_attention_reference, sparse_attention_reference

    if plan.quant == "int8":
        return int8_attention_reference(q, k, v, mask, scale=scale, layout=layout)
    return sparse_attention_reference(q, k, v, mask, scale=scale, layout=layout).to(q.dtype)


@functools.lru_cache(maxsize=None)
def _warn_reference(site: str, reason: str) -> None:
    log.warning("ditaccel: sparse attention at %s runs the (slow) torch reference: %s", site, reason)


def guard_error(q, k, v, out, layout: str, scale: Optional[float], rows: int, seed: int) -> float:
    """Relative L2 error of `out` against exact attention on `rows` sampled query rows."""
    seq_dim = 2 if layout == "bhsd" else 1
    length = q.shape[seq_dim]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    index = torch.randperm(length, generator=generator)[: min(rows, length)].to(q.device)
    qs, os_ = q.index_select(seq_dim, index), out.index_select(seq_dim, index)
    if layout == "bshd":
        qs, kk, vv, os_ = (t.transpose(1, 2) for t in (qs, k, v, os_))
    else:
        kk, vv = k, v
    exact = torch.nn.functional.scaled_dot_product_attention(qs.float(), kk.float(), vv.float(), scale=scale)
    return float(((os_.float() - exact).norm() / exact.norm().clamp_min(1e-12)).item())


def sparse_stats(model: Any) -> list[dict]:
    """Per runtime state of `model`: per-site sparse/dense call counts, guard results and
    density for the current generation, plus the summaries of finished generations."""
    return pass_stats(model, "sparse")
