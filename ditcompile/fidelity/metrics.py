"""Quality of generated videos against a reference generation: PSNR, SSIM, cosine similarity.

Videos are float tensors [B, C, F, H, W] with values in [-1, 1] (what `fidelity.sample` returns);
the metrics map them to [0, 1] first, so PSNR is in dB with peak 1 and SSIM uses the standard
constants (K1 = 0.01, K2 = 0.03, L = 1) of Wang et al., "Image quality assessment: from error
visibility to structural similarity" (IEEE TIP 2004), with its 11x11 / sigma 1.5 Gaussian
window shrunk to 7x7 for the fidelity model's 32x32 frames. Used by `ditaccel demo` and
`benchmarks/fidelity.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "cosine"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: the videos must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two videos in [-1, 1] (mapped to [0, 1], peak 1);
    inf when they are equal. ValueError when the shapes differ."""
    _check_pair(a, b, "psnr")
    mse = F.mse_loss((a.double() + 1) / 2, (b.double() + 1) / 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM over every frame and channel of two videos [B, C, F, H, W] in [-1, 1]: local
    means, variances and covariance under a `window` x `window` Gaussian (std `sigma` pixels,
    "valid" positions only). 1.0 for equal videos. ValueError when the shapes differ or a frame
    is smaller than the window."""
    _check_pair(a, b, "ssim")
    if a.dim() != 5 or min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: videos must be [B, C, F, H, W] with H, W >= {window}, got {tuple(a.shape)}")
    x, y = ((t.double() + 1) / 2 for t in (a, b))
    # frames as images: [B*F, C, H, W]
    x, y = (t.permute(0, 2, 1, 3, 4).reshape(-1, t.shape[1], t.shape[3], t.shape[4]) for t in (x, y))
    coords = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).to(x.device)
    blur = lambda t: F.conv2d(t, kernel, groups=x.shape[1])  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the two tensors flattened (1.0: same direction)."""
    _check_pair(a, b, "cosine")
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
