"""Self-attention probabilities of the fidelity model, and how local they are.

:func:`capture_attention` records, for every Wan block, the self-attention probabilities
``softmax(q k^T / sqrt(d))`` ([B, heads, N, N]) by re-running the block's q/k projections,
q/k RMS norms and RoPE from a forward pre-hook on ``attn1`` (the model's own attention
processor, whatever it is, still computes the output). :func:`attention_locality` turns them
into the fraction of each query's attention mass that lands in its own frame, within +-1
frame, within a spatial radius and in a local 3-D window, next to what uniform attention would
give, plus the normalised entropy.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .model import NULL_LABEL, compute_device_dtype, text_embeddings, token_grid
from .videos import generate_videos


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as diffusers' WanAttnProcessor (interleaved pairs).
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


def self_attention_probs(attn, hidden_states: torch.Tensor, rotary_emb) -> torch.Tensor:
    """[B, heads, N, N] attention probabilities of a diffusers ``WanAttention`` (self-attention)."""
    if getattr(attn, "fused_projections", False):
        q, k, _ = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        q, k = attn.to_q(hidden_states), attn.to_k(hidden_states)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q, k = q.unflatten(2, (attn.heads, -1)), k.unflatten(2, (attn.heads, -1))  # [B, N, H, D]
    if rotary_emb is not None:
        q, k = _apply_rotary(q, *rotary_emb), _apply_rotary(k, *rotary_emb)
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1)


@contextlib.contextmanager
def capture_attention(model) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``model`` appends each block's self-attention
    probabilities (in block order) to the yielded list."""
    store: list[torch.Tensor] = []
    handles = []

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        rot = args[3] if len(args) > 3 else kwargs.get("rotary_emb")
        with torch.no_grad():
            store.append(self_attention_probs(module, hs, rot).detach())

    for block in model.blocks:
        handles.append(block.attn1.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def locality_masks(grid: tuple[int, int, int], radius: int = 1, device="cpu") -> dict[str, torch.Tensor]:
    """Boolean [N, N] masks over the video-token grid (frame-major order, as Wan flattens it)."""
    F, H, W = grid
    f = torch.arange(F, device=device).view(F, 1, 1).expand(F, H, W).reshape(-1)
    y = torch.arange(H, device=device).view(1, H, 1).expand(F, H, W).reshape(-1)
    x = torch.arange(W, device=device).view(1, 1, W).expand(F, H, W).reshape(-1)
    df = (f[:, None] - f[None, :]).abs()
    ds = torch.maximum((y[:, None] - y[None, :]).abs(), (x[:, None] - x[None, :]).abs())
    return {
        "own_frame": df == 0,
        "frame_pm1": df <= 1,
        f"spatial_r{radius}": ds <= radius,  # any frame, Chebyshev radius in tokens
        f"window_pm1_r{radius}": (df <= 1) & (ds <= radius),
    }


@dataclass
class LayerLocality:
    layer: int
    mass: dict[str, float]  # mean attention mass inside each mask
    uniform: dict[str, float]  # what uniform attention would put there
    entropy: float  # mean entropy / log(N); 1.0 for uniform attention
    per_head_own_frame: list[float] = field(default_factory=list)
    frame_profile: list[float] = field(default_factory=list)  # mass at frame distance 0, 1, 2, ...
    frame_profile_uniform: list[float] = field(default_factory=list)

    def ratio(self, key: str) -> float:
        return self.mass[key] / self.uniform[key]


def locality_of(probs: torch.Tensor, grid: tuple[int, int, int], radius: int = 1, layer: int = 0) -> LayerLocality:
    """Locality numbers for one layer's probabilities [B, heads, N, N]."""
    N = probs.shape[-1]
    if N != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"{N} tokens do not match the grid {grid}")
    masks = locality_masks(grid, radius, probs.device)
    p = probs.double()
    mass, uniform = {}, {}
    per_head = []
    for name, m in masks.items():
        inside = (p * m).sum(-1)  # [B, H, N]
        mass[name] = float(inside.mean())
        uniform[name] = float(m.double().mean())
        if name == "own_frame":
            per_head = [float(v) for v in inside.mean(dim=(0, 2))]
    ent = -(p * (p + 1e-30).log()).sum(-1).mean() / math.log(N)
    F, H, W = grid
    per_frame = p.reshape(*p.shape[:-1], F, H * W).sum(-1)  # [B, heads, N, F]: mass on each key frame
    qf = torch.arange(N, device=p.device) // (H * W)
    dist = (qf[:, None] - torch.arange(F, device=p.device)[None, :]).abs()  # [N, F]
    profile, profile_u = [], []
    for d in range(F):
        sel = (dist == d).to(p.dtype)
        profile.append(float((per_frame * sel).sum(-1).mean()))
        profile_u.append(float(sel.sum(-1).mean() / F))
    return LayerLocality(layer, mass, uniform, float(ent), per_head, profile, profile_u)


@torch.no_grad()
def attention_locality(model, batch_size: int = 4, t: float = 0.5, seed: int = 1234, radius: int = 1,
                       videos: torch.Tensor | None = None, labels=None) -> list[LayerLocality]:
    """Per-layer locality of the self-attention on generated videos noised to time ``t``.

    ``x_t = (1 - t) x0 + t noise`` with ``x0`` from :func:`generate_videos` (seeded) unless
    ``videos`` / ``labels`` are given; the model sees ``timestep = 1000 t`` and the labels' prompts.
    """
    dev, dtype = compute_device_dtype(model)
    if videos is None:
        batch = generate_videos(batch_size, seed=seed)
        videos, labels = batch.videos, batch.labels
    if labels is None:
        labels = [NULL_LABEL] * videos.shape[0]
    x0 = videos.to(dev, torch.float32)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    xt = ((1 - t) * x0 + t * noise).to(dtype)
    ts = torch.full((x0.shape[0],), 1000.0 * t, device=dev)
    ctx = text_embeddings(labels, device=dev, dtype=dtype)
    grid = token_grid(*x0.shape[2:], patch_size=model.config.patch_size)
    with capture_attention(model) as store:
        model(hidden_states=xt, timestep=ts, encoder_hidden_states=ctx, return_dict=False)
    return [locality_of(p, grid, radius, i) for i, p in enumerate(store)]


def format_locality(rows: list[LayerLocality]) -> str:
    """A table: per layer, the attention mass in each region and its ratio to uniform."""
    if not rows:
        return "(no self-attention layers recorded)"
    keys = list(rows[0].mass)
    head = f"{'layer':>5} " + " ".join(f"{k:>22}" for k in keys) + f" {'entropy/logN':>13}"
    lines = [head, f"{'':>5} " + " ".join(f"{'mass (uniform, ratio)':>22}" for _ in keys)]
    for r in rows:
        cells = " ".join(f"{r.mass[k]:>7.3f} ({r.uniform[k]:.3f},{r.ratio(k):>5.1f}x)" for k in keys)
        lines.append(f"{r.layer:>5} {cells} {r.entropy:>13.3f}")
    mean = {k: sum(r.mass[k] for r in rows) / len(rows) for k in keys}
    cells = " ".join(f"{mean[k]:>7.3f} ({rows[0].uniform[k]:.3f},{mean[k] / rows[0].uniform[k]:>5.1f}x)" for k in keys)
    ent = sum(r.entropy for r in rows) / len(rows)
    lines.append(f"{'mean':>5} {cells} {ent:>13.3f}")
    if rows[0].per_head_own_frame:
        lines.append("own-frame mass per head, ratio to uniform (>= 2x: a 'spatial' head; ~1x: a head "
                     "that looks across frames):")
        u = rows[0].uniform["own_frame"]
        for r in rows:
            lines.append(f"  layer {r.layer}: " + " ".join(f"{h / u:>5.2f}x" for h in r.per_head_own_frame))
    F = len(rows[0].frame_profile)
    if F:
        lines.append("attention mass by frame distance |dt| (mean over layers; ratio to uniform):")
        lines.append("  |dt|    " + " ".join(f"{d:>12}" for d in range(F)))
        prof = [sum(r.frame_profile[d] for r in rows) / len(rows) for d in range(F)]
        uni = rows[0].frame_profile_uniform
        lines.append("  mass    " + " ".join(f"{prof[d]:>12.3f}" for d in range(F)))
        lines.append("  uniform " + " ".join(f"{uni[d]:>12.3f}" for d in range(F)))
        lines.append("  ratio   " + " ".join(f"{prof[d] / uni[d]:>11.2f}x" for d in range(F)))
    return "\n".join(lines)
