"""Procedural videos for the fidelity model: moving, rotating, colour-changing shapes.

Pure torch, deterministic from a seed, vectorised over the batch (a batch of 64 videos of
8 x 32 x 32 takes a few milliseconds on one CPU thread).

Each video shows one shape (disc, square, triangle or bar) over a background. The shape moves
in a straight line at 1-2 pixels per frame in one of four directions, rotates steadily and its
hue drifts. The default background is a soft two-colour texture (two sinusoidal waves) that pans
at 0.5-1.5 pixels per frame in a random direction, like a moving camera: consecutive frames are
strongly correlated while distant frames differ, so what a pixel's neighbourhood looked like is
best read from the same and the adjacent frames (the temporal locality of real video).
``background="gradient"`` gives a static two-colour gradient instead. Edges are anti-aliased.

Layout: ``[B, C=3, F, H, W]``, values in ``[-1, 1]`` (the layout diffusers' video transformers
take). The class label of a video is ``shape * NUM_DIRECTIONS + direction``; see
:func:`label_name`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..fileio import atomic_path

SHAPES = ("disc", "square", "triangle", "bar")
DIRECTIONS = ("right", "left", "down", "up")  # image axes: +x, -x, +y (down), -y (up)
NUM_SHAPES = len(SHAPES)
NUM_DIRECTIONS = len(DIRECTIONS)
NUM_CLASSES = NUM_SHAPES * NUM_DIRECTIONS

# Default video size: 8 frames of 32 x 32 RGB (a 8 x 8 x 8 token grid with a (1, 4, 4) patch).
FRAMES, HEIGHT, WIDTH = 8, 32, 32

_DIR_VECTORS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # (dx, dy)


def label_of(shape: int | str, direction: int | str) -> int:
    """Class label for a shape (index or name) moving in a direction (index or name)."""
    s = SHAPES.index(shape) if isinstance(shape, str) else int(shape)
    d = DIRECTIONS.index(direction) if isinstance(direction, str) else int(direction)
    if not (0 <= s < NUM_SHAPES and 0 <= d < NUM_DIRECTIONS):
        raise ValueError(f"shape {shape!r} / direction {direction!r} out of range")
    return s * NUM_DIRECTIONS + d


def split_label(label: int) -> tuple[int, int]:
    """(shape index, direction index) of a class label."""
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label {label} not in [0, {NUM_CLASSES})")
    return label // NUM_DIRECTIONS, label % NUM_DIRECTIONS


def label_name(label: int) -> str:
    """E.g. ``'disc moving right'``."""
    s, d = split_label(label)
    return f"{SHAPES[s]} moving {DIRECTIONS[d]}"


@dataclass
class VideoBatch:
    videos: torch.Tensor  # [B, 3, F, H, W] in [-1, 1]
    labels: torch.Tensor  # [B] int64 class labels
    masks: torch.Tensor  # [B, F, H, W] in [0, 1]: the shape's coverage of each pixel


def _hue_rgb(hue: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Smooth hue wheel: hue [...] (turns) -> RGB [..., 3] in [lo, hi]."""
    offs = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0], dtype=hue.dtype, device=hue.device)
    wave = 0.5 + 0.5 * torch.cos(2 * math.pi * (hue.unsqueeze(-1) - offs))
    return lo + (hi - lo) * wave


def _shape_sdf(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (pixels) to each shape, in the shape's rotated frame.

    shape [B], r [B]; u, v [B, F, H, W] (coordinates relative to the centre, rotated).
    """
    r = r.view(-1, 1, 1, 1)
    disc = torch.sqrt(u * u + v * v + 1e-8) - r
    square = torch.maximum(u.abs(), v.abs()) - 0.82 * r
    # Equilateral triangle: max over three edge half-planes (normals 120 degrees apart).
    tri = None
    for k in range(3):
        a = math.pi / 2 + k * 2 * math.pi / 3
        d = u * math.cos(a) + v * math.sin(a)
        tri = d if tri is None else torch.maximum(tri, d)
    tri = tri - 0.5 * r
    bar = torch.maximum(u.abs() - 1.25 * r, v.abs() - 0.38 * r)
    out = torch.stack([disc, square, tri, bar], dim=0)  # [4, B, F, H, W]
    idx = shape.view(1, -1, 1, 1, 1).expand(1, *u.shape)
    return out.gather(0, idx).squeeze(0)


def generate_videos(
    batch_size: int,
    seed: int = 0,
    labels: torch.Tensor | list[int] | None = None,
    frames: int = FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    background: str = "texture",
) -> VideoBatch:
    """A deterministic batch of shape videos.

    Every random choice is drawn from a CPU ``torch.Generator`` seeded with ``seed`` (so the
    result does not depend on the device). ``labels`` (``[B]`` class labels) fixes the shape
    and the direction of motion of each video; everything else (size, start position, speed,
    rotation, colours, background) is still drawn from ``seed``. Without ``labels`` they are
    drawn uniformly too. ``background`` is ``"texture"`` (panning, the default) or
    ``"gradient"`` (static).
    """
    if background not in ("texture", "gradient"):
        raise ValueError(f"background must be 'texture' or 'gradient', not {background!r}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    B, F, H, W = int(batch_size), int(frames), int(height), int(width)
    scale = min(H, W) / 32.0

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    drawn = torch.randint(0, NUM_CLASSES, (B,), generator=g)
    if labels is None:
        labels_t = drawn
    else:
        labels_t = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
        if labels_t.numel() != B:
            raise ValueError(f"{labels_t.numel()} labels for a batch of {B}")
        if labels_t.min() < 0 or labels_t.max() >= NUM_CLASSES:
            raise ValueError(f"labels must lie in [0, {NUM_CLASSES})")
    shape = labels_t // NUM_DIRECTIONS
    direction = labels_t % NUM_DIRECTIONS

    radius = (6.5 + 3.0 * rand(B)) * scale  # 6.5 .. 9.5 px at 32 x 32
    speed = (1.0 + 1.0 * rand(B)) * scale  # px / frame
    dirv = _DIR_VECTORS.to(torch.float64)[direction]  # [B, 2]
    # Small sideways drift so paths are not all axis-aligned.
    drift = (rand(B) - 0.5) * 0.5 * scale
    vel = dirv * speed.unsqueeze(1) + torch.stack([dirv[:, 1], dirv[:, 0]], 1) * drift.unsqueeze(1)
    # Start so that the path's midpoint lands near the centre (the shape stays mostly in view).
    mid = torch.stack([(0.5 + (rand(B) - 0.5) * 0.3) * W, (0.5 + (rand(B) - 0.5) * 0.3) * H], 1)
    start = mid - vel * (F - 1) / 2.0
    angle0 = rand(B) * 2 * math.pi
    spin = (0.12 + 0.18 * rand(B)) * torch.where(rand(B) < 0.5, -1.0, 1.0)  # rad / frame
    hue0 = rand(B)
    hue_rate = (0.02 + 0.04 * rand(B)) * torch.where(rand(B) < 0.5, -1.0, 1.0)  # turns / frame
    # Background colours: two dark hues, roughly opposite on the wheel.
    bg_hue = rand(B)
    bg_a = _hue_rgb(bg_hue, 0.0, 0.4)  # [B, 3]
    bg_b = _hue_rgb(bg_hue + 0.35 + 0.3 * rand(B), 0.0, 0.4)
    bg_angle = rand(B) * 2 * math.pi  # gradient direction / first wave's orientation
    # Texture: two sinusoidal waves (wavelengths 8-20 px) panning together (the "camera").
    wave_angle2 = bg_angle + (math.pi / 3 + rand(B) * math.pi / 3)
    wavelength = (8.0 + 12.0 * rand(B, 2)) * scale
    phase = rand(B, 2) * 2 * math.pi
    pan_angle = rand(B) * 2 * math.pi
    pan_speed = (0.5 + rand(B)) * scale  # px / frame

    to = {"device": device, "dtype": torch.float32}
    t = torch.arange(F, **to).view(1, F, 1, 1)
    ys = torch.arange(H, **to).view(1, 1, H, 1) + 0.5
    xs = torch.arange(W, **to).view(1, 1, 1, W) + 0.5

    def col(x):  # [B] -> [B, 1, 1, 1] on the device
        return x.to(**to).view(-1, 1, 1, 1)

    cx = col(start[:, 0]) + col(vel[:, 0]) * t  # [B, F, 1, 1]
    cy = col(start[:, 1]) + col(vel[:, 1]) * t
    ang = col(angle0) + col(spin) * t
    dx, dy = xs - cx, ys - cy  # [B, F, H, W]
    ca, sa = torch.cos(ang), torch.sin(ang)
    u = ca * dx + sa * dy
    v = -sa * dx + ca * dy
    sdf = _shape_sdf(shape.to(device), u, v, radius.to(**to))
    alpha = (0.5 - sdf).clamp(0.0, 1.0)  # 1-pixel anti-aliased edge

    hue = col(hue0) + col(hue_rate) * t  # [B, F, 1, 1]
    fg = _hue_rgb(hue, 0.3, 1.0)  # [B, F, 1, 1, 3]
    if background == "gradient":
        proj = (xs / W - 0.5) * col(torch.cos(bg_angle)) + (ys / H - 0.5) * col(torch.sin(bg_angle)) + 0.5
        mix = proj.clamp(0.0, 1.0)  # [B, 1, H, W]
    else:
        bx = xs - col(pan_speed * torch.cos(pan_angle)) * t  # [B, F, 1, W]
        by = ys - col(pan_speed * torch.sin(pan_angle)) * t  # [B, F, H, 1]
        mix = 0.5
        for k, ang in enumerate((bg_angle, wave_angle2)):
            arg = (bx * col(torch.cos(ang)) + by * col(torch.sin(ang))) * (2 * math.pi) / col(wavelength[:, k])
            mix = mix + 0.25 * torch.sin(arg + col(phase[:, k]))  # [B, F, H, W] in [0, 1]
    bga, bgb = bg_a.to(**to).view(B, 1, 1, 1, 3), bg_b.to(**to).view(B, 1, 1, 1, 3)
    bg = bga + (bgb - bga) * mix.unsqueeze(-1)  # [B, 1 or F, H, W, 3]
    img = bg + (fg - bg) * alpha.unsqueeze(-1)  # [B, F, H, W, 3]
    videos = (img * 2.0 - 1.0).permute(0, 4, 1, 2, 3).contiguous().to(dtype)
    return VideoBatch(videos=videos, labels=labels_t.to(device), masks=alpha)


def frame_correlation(videos: torch.Tensor) -> float:
    """Mean Pearson correlation between consecutive frames (per video and channel)."""
    a = videos[:, :, :-1].flatten(3).double()
    b = videos[:, :, 1:].flatten(3).double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-12)
    return float(corr.mean())


def _pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as err:
        raise ImportError("writing PNG / GIF images needs pillow: pip install pillow (or ditaccel[demo])") from err
    return Image, ImageDraw, ImageFont


def _compose(v: torch.Tensor, frames: Sequence[int], scale: int, gap: int, row_labels: Sequence[str] | None,
             title: str | None = None):
    """One picture: a row per video of uint8 ``v`` [B, 3, F, H, W], the given frames left to right,
    each frame enlarged ``scale`` times (nearest), ``gap`` white pixels between cells; with
    ``row_labels`` (one per video) a white left margin holds each row's label, with ``title`` a
    white band above the rows holds it."""
    Image, ImageDraw, ImageFont = _pillow()
    B, _, _, H, W = v.shape
    try:
        font = ImageFont.load_default(size=13)  # Pillow >= 10.1 (FreeType)
    except (TypeError, AttributeError, OSError):
        font = ImageFont.load_default()
    pad = 6
    margin = 0 if not row_labels else pad * 2 + max(int(math.ceil(font.getlength(t))) for t in row_labels)
    band = 0 if not title else font.getbbox(title)[3] + 2 * pad
    cell_h, cell_w = H * scale + gap, W * scale + gap
    width = max(margin + len(frames) * cell_w + gap, 0 if not title else int(math.ceil(font.getlength(title))) + 2 * pad)
    canvas = torch.full((band + B * cell_h + gap, width, 3), 255, dtype=torch.uint8)
    for b in range(B):
        for col, f in enumerate(frames):
            fr = v[b, :, f].permute(1, 2, 0).repeat_interleave(scale, 0).repeat_interleave(scale, 1)  # [H*s, W*s, 3]
            y0, x0 = band + gap + b * cell_h, margin + gap + col * cell_w
            canvas[y0:y0 + H * scale, x0:x0 + W * scale] = fr
    image = Image.fromarray(canvas.numpy())
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    if row_labels:
        for b, text in enumerate(row_labels):
            _, top, _, bottom = font.getbbox(text)
            y = band + gap + b * cell_h + (H * scale - (bottom - top)) // 2 - top
            draw.text((pad, y), text, fill=(0, 0, 0), font=font)
    return image


def _uint8_videos(videos: torch.Tensor, row_labels: Sequence[str] | None) -> torch.Tensor:
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be [B, 3, F, H, W], got shape {tuple(videos.shape)}")
    if row_labels is not None and len(row_labels) != videos.shape[0]:
        raise ValueError(f"row_labels has {len(row_labels)} labels for {videos.shape[0]} videos")
    return ((videos.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_strip(videos: torch.Tensor, path: str | os.PathLike, scale: int = 4, gap: int = 2,
               row_labels: Sequence[str] | None = None, title: str | None = None) -> None:
    """Write a PNG (atomically): one row per video of ``videos`` [B, 3, F, H, W] (values in
    [-1, 1]), its frames left to right, enlarged ``scale`` times; ``row_labels`` (one per video)
    are written in a left margin, ``title`` in a band above. Needs pillow.

    Raises ``ImportError`` without pillow, ``ValueError`` for a wrong shape or label count,
    ``OSError`` when ``path`` cannot be written (a previous file there is then unchanged).
    """
    v = _uint8_videos(videos, row_labels)
    image = _compose(v, range(v.shape[2]), scale, gap, row_labels, title)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_gif(videos: torch.Tensor, path: str | os.PathLike, scale: int = 4, gap: int = 2,
             row_labels: Sequence[str] | None = None, frame_ms: int = 160, title: str | None = None) -> None:
    """Write an animated GIF (atomically, looping): the videos of ``videos`` [B, 3, F, H, W] one
    above the other, playing together at ``frame_ms`` milliseconds per frame; labels as in
    :func:`save_strip`. Needs pillow.

    Raises ``ImportError`` without pillow, ``ValueError`` for a wrong shape or label count,
    ``OSError`` when ``path`` cannot be written (a previous file there is then unchanged).
    """
    v = _uint8_videos(videos, row_labels)
    images = [_compose(v, [f], scale, gap, row_labels, title) for f in range(v.shape[2])]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
