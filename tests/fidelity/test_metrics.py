"""PSNR, SSIM and cosine of generated videos against independent NumPy references."""
import math

import numpy as np
import pytest
import torch

from ditcompile.fidelity.metrics import cosine, psnr, ssim


def _videos(seed, shape=(2, 3, 2, 9, 10), noise=0.2):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g) * 2 - 1
    b = (a + noise * torch.randn(shape, generator=g)).clamp(-1, 1)
    return a, b


def _ssim_reference(x: np.ndarray, y: np.ndarray, window: int = 7, sigma: float = 1.5) -> float:
    """Wang et al. 2004, written out window by window: x, y [H, W] in [0, 1]."""
    coords = np.arange(window) - window // 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            px, py = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_is_the_definition_on_the_unit_range(seed):
    a, b = _videos(seed)
    mse = np.mean(((a.numpy().astype(np.float64) + 1) / 2 - (b.numpy().astype(np.float64) + 1) / 2) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    assert psnr(a, a.clone()) == float("inf")


@pytest.mark.parametrize("seed", [3, 4])
def test_ssim_matches_the_window_by_window_definition(seed):
    a, b = _videos(seed)
    x, y = ((t.numpy().astype(np.float64) + 1) / 2 for t in (a, b))
    frames = [(x[i, c, f], y[i, c, f]) for i in range(a.shape[0]) for c in range(a.shape[1]) for f in range(a.shape[2])]
    expected = np.mean([_ssim_reference(fx, fy) for fx, fy in frames])
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-12)


def test_more_noise_scores_lower():
    a, small = _videos(5, noise=0.05)
    _, large = _videos(5, noise=0.5)
    assert psnr(a, small) > psnr(a, large) and ssim(a, small) > ssim(a, large)


def test_cosine_and_the_errors():
    a, b = _videos(6)
    x, y = a.flatten().double().numpy(), b.flatten().double().numpy()
    assert cosine(a, b) == pytest.approx(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)), rel=1e-12)
    with pytest.raises(ValueError, match=r"psnr: the videos must have the same shape"):
        psnr(a, b[:1])
    with pytest.raises(ValueError, match=r"ssim: videos must be \[B, C, F, H, W\] with H, W >= 7"):
        ssim(a[..., :5, :5], b[..., :5, :5])
