"""Does a call continue the sampling run? A test on the latents, for the step tracker.

A deterministic sampler's next latents are a linear combination of the latents and the model
outputs of its last few steps:

    Euler / flow matching      x[s+1] = x[s] + (sigma[s+1] - sigma[s]) * v[s]
    DDIM, DPM-Solver++ 2M/3M,
    UniPC, DEIS, PNDM          x[s+1] = a x[s] + sum_j b_j out[s-j]    (j < 4)
    Heun's corrector           x_pred = x[s] + dt v[s];  x[s+1] = x[s] + dt/2 (v[s] + v(x_pred))
    CFG (and rescaled / projected variants): out = combination of the branches' outputs

A new run's first latents (fresh noise, a noised image) are not. So a call whose main input is
not, up to `tolerance_for(dtype)`, in the span of the run's recent latents and outputs does not continue the
run. Stochastic samplers (SDE, ancestral, LCM) add fresh noise every step and fail the test too:
the tracker then starts a new generation each step (the safe path) and says so; a user declares
their runs with `ditcompile.generation(model)`.

The test runs on `SAMPLES` fixed pseudo-random positions of each batch element (a gather on the
device, copied to the host with the call's other values; the outputs' gather waits for the next
call's copy, so no extra synchronisation): membership of a span survives any fixed choice of
coordinates, and a fresh-noise vector stays far from a span of a few dozen vectors in 2048
coordinates.

`LatentView`: which part of the main input the output predicts (image-to-video models
concatenate conditioning channels to the latents; learned-sigma models output twice the
channels). The rest of the main input (the conditioning channels) tells CFG branches apart like
the conditioning inputs do (`extra_part`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

SAMPLES = 2048      # positions per batch element
HISTORY_STEPS = 4   # steps of latents and outputs a sampler may combine (PNDM uses 4)
# Relative residual of the least-squares fit a continuation may have, per dtype of the latents: a
# few times the rounding of the latents the model receives (bf16 rounds by up to 2^-9 relative,
# fp16 2^-12); tight enough that a re-run from the same noise one step later is not a continuation.
TOLERANCES = {torch.bfloat16: 3e-2, torch.float16: 1e-2}
TOLERANCE = 1e-3    # float32 and float64


def tolerance_for(dtype: torch.dtype) -> float:
    """The latents test's tolerance for latents of `dtype`."""
    return TOLERANCES.get(dtype, TOLERANCE)


@dataclass(frozen=True)
class LatentView:
    """The leading `size` entries along `dim` of both the main input and the model output are the
    same quantity (None: the whole tensors). Wan image-to-video: input [B, 36, F, H, W] (16 latent
    channels, then the image conditioning), output [B, 16, F, H, W] -> LatentView(1, 16, 36);
    a learned-sigma DiT: input [B, 4, H, W], output [B, 8, H, W] -> LatentView(1, 4, 4)."""

    dim: Optional[int] = None
    size: Optional[int] = None
    input_size: Optional[int] = None  # the main input's size along dim (to find its extra part)


WHOLE = LatentView()


def latent_view(input_shape: Sequence, output_shape: Sequence) -> Optional[LatentView]:
    """How an output of `output_shape` relates to a main input of `input_shape`; None when they
    are not comparable (different rank or batch, or more than one other dimension differs).
    Sizes that are not ints (symbolic) compare by equality."""
    if len(input_shape) != len(output_shape) or not input_shape or input_shape[0] != output_shape[0]:
        return None
    differ = [d for d in range(1, len(input_shape)) if input_shape[d] != output_shape[d]]
    if not differ:
        return WHOLE
    if len(differ) > 1:
        return None
    d = differ[0]
    if not isinstance(input_shape[d], int) or not isinstance(output_shape[d], int):
        return None
    return LatentView(d, min(input_shape[d], output_shape[d]), input_shape[d])


@functools.lru_cache(maxsize=64)
def _positions(shape: tuple, dim: Optional[int], size: Optional[int], device: str) -> torch.Tensor:
    """[B, k] flat (row-major) indices into a tensor of `shape`: the same k positions of each batch
    element's view (leading `size` along `dim`), fixed per shape."""
    inner = list(shape[1:])
    if dim is not None:
        inner[dim - 1] = size
    n = math.prod(inner)
    k = min(SAMPLES, n)
    generator = torch.Generator().manual_seed(n)
    picked = torch.randperm(n, generator=generator)[:k] if n <= 1 << 24 else torch.randint(
        n, (k,), generator=generator)
    coords = torch.unravel_index(picked, tuple(inner))
    per_sample = torch.zeros(k, dtype=torch.long)
    stride = 1
    for d in range(len(shape) - 1, 0, -1):  # ravel into the full element's shape
        per_sample += coords[d - 1] * stride
        stride *= shape[d]
    offsets = torch.arange(shape[0], dtype=torch.long)[:, None] * stride
    return (offsets + per_sample[None, :]).to(device)


def latent_sample(x: torch.Tensor, view: LatentView) -> Optional[torch.Tensor]:
    """[B, k] values of `x` (on its device, no synchronisation) at the fixed positions of its view;
    None for a tensor that cannot be sampled (no batch dimension, empty, view out of range)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.numel() == 0 or x.is_complex():
        return None
    size = view.size
    if view.dim is not None:
        if view.dim >= x.dim() or x.shape[view.dim] < size:
            return None
    shape = tuple(int(s) for s in x.shape)
    return torch.take(x.detach(), _positions(shape, view.dim, size, str(x.device)))


def extra_part(x: torch.Tensor, view: LatentView) -> Optional[torch.Tensor]:
    """The part of the main input the output does not predict (conditioning channels), or None."""
    if view.dim is None or not isinstance(x, torch.Tensor) or view.dim >= x.dim() or x.shape[view.dim] <= view.size:
        return None
    return x.narrow(view.dim, view.size, x.shape[view.dim] - view.size)


def continues(latents: torch.Tensor, basis: Sequence[torch.Tensor], tolerance: float = TOLERANCE) -> Optional[bool]:
    """True when every row of `latents` ([B, k] float64) is within `tolerance` (relative residual)
    of the span of `basis` (vectors [k] float64); None when the test cannot tell (no basis, zero
    latents, a basis too large for k positions)."""
    if not basis or latents.dim() != 2:
        return None
    k = latents.shape[1]
    vectors = [v for v in basis if v.shape == (k,)]
    if not vectors or len(vectors) * 4 > k:
        return None
    a = torch.stack(vectors, dim=1)                          # [k, m]
    scale = a.norm(dim=0).clamp_min(1e-300)
    solution = torch.linalg.lstsq(a / scale, latents.T).solution  # [m, B]
    residual = (latents.T - (a / scale) @ solution).norm(dim=0)   # [B]
    norms = latents.norm(dim=1)
    if not bool((norms > 0).all()) or not bool(torch.isfinite(residual).all()):
        return None
    return bool((residual <= tolerance * norms).all())


__all__ = ["LatentView", "WHOLE", "latent_view", "latent_sample", "extra_part", "continues", "tolerance_for",
           "SAMPLES", "TOLERANCE", "TOLERANCES", "HISTORY_STEPS"]
