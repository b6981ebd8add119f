"""Draw a :class:`SparsePattern`'s block mask(s) as a PNG (pillow, optional dependency).

One pixel square of ``scale x scale`` per (query block, kv block) tile, query blocks top to
bottom, kv blocks left to right, in the order the kernel sees the tokens (permuted patterns are
drawn permuted).  Colours: computed video tiles dark blue, skipped tiles white, tiles touched
by the dense text rows/columns orange.  One panel per (batch, head) of the mask, or a single
panel when the mask is shared; the title gives the pattern's density (fraction of tiles
computed, text included) and each panel its own.

Image size (used by the tests)::

    panel  = (NKB * scale) x (NQB * scale)
    cols   = ceil(sqrt(panels)), rows = ceil(panels / cols)
    width  = max(MIN_WIDTH, 2*MARGIN + cols*panel_w + (cols-1)*GAP)
    height = TITLE_H + MARGIN + rows*(LABEL_H + panel_h) + (rows-1)*GAP + MARGIN
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from ..fileio import atomic_path
from .pattern import SparsePattern

__all__ = ["draw_pattern", "image_size"]

MARGIN = 8
GAP = 8
TITLE_H = 18
LABEL_H = 14
MIN_WIDTH = 360
MAX_PANEL_PX = 512  # default scale keeps a panel at most this many pixels on its long side

BACKGROUND = (236, 236, 236)
KEPT = (31, 60, 140)
SKIPPED = (255, 255, 255)
TEXT = (230, 120, 20)
INK = (0, 0, 0)


def _default_scale(nqb: int, nkb: int) -> int:
    return max(1, min(16, MAX_PANEL_PX // max(nqb, nkb, 1)))


def image_size(pattern: SparsePattern, *, scale: Optional[int] = None) -> tuple[int, int]:
    """(width, height) in pixels of :func:`draw_pattern`'s image."""
    m = pattern.mask
    scale = _default_scale(m.num_q_blocks, m.num_kv_blocks) if scale is None else scale
    panels = m.shape[0] * m.shape[1]
    cols = math.ceil(math.sqrt(panels))
    rows = math.ceil(panels / cols)
    pw, ph = m.num_kv_blocks * scale, m.num_q_blocks * scale
    width = max(MIN_WIDTH, 2 * MARGIN + cols * pw + (cols - 1) * GAP)
    height = TITLE_H + MARGIN + rows * (LABEL_H + ph) + (rows - 1) * GAP + MARGIN
    return width, height


def _touched(rng, block: int, length: int) -> torch.Tensor:
    nb = -(-length // block)
    out = torch.zeros(nb, dtype=torch.bool)
    if rng is not None and rng[0] < rng[1]:
        out[rng[0] // block : -(-rng[1] // block)] = True
    return out


def draw_pattern(
    pattern: SparsePattern,
    path: str | os.PathLike,
    *,
    title: Optional[str] = None,
    scale: Optional[int] = None,
):
    """Write a PNG of ``pattern`` to ``path`` and return the ``PIL.Image``.

    title: heading (default: the pattern's name); density and block geometry are appended.
    scale: pixels per block side (default: as large as fits 512 px per panel, at most 16).

    The file is written atomically (temporary file + rename): an interrupted or failed write
    leaves a previous PNG at ``path`` unchanged. Raises ``ImportError`` without pillow,
    ``ValueError`` for a bad ``pattern`` or ``scale``, ``OSError`` when ``path`` cannot be written.
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:  # pillow is optional for the package
        raise ImportError("draw_pattern needs pillow: pip install pillow (or ditaccel[test])") from exc
    if not isinstance(pattern, SparsePattern):
        raise ValueError(f"pattern must be a SparsePattern, got {type(pattern).__name__}")
    m = pattern.mask
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    scale = _default_scale(m.num_q_blocks, m.num_kv_blocks) if scale is None else scale
    width, height = image_size(pattern, scale=scale)

    listed = m.to_dense_block_mask().cpu()  # [B, H, NQB, NKB]
    computed = m.schedule_block_mask().cpu()  # listed + text tiles
    text = _touched(m.dense_q_range, m.block_m, m.q_len)[:, None] | _touched(m.dense_kv_range, m.block_n, m.kv_len)[None, :]
    palette = torch.tensor([SKIPPED, KEPT, TEXT], dtype=torch.uint8)

    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    perm = "" if pattern.permutation is None else ", permuted"
    heading = (
        f"{title or pattern.name}: density {pattern.density:.3f} "
        f"({m.num_q_blocks}x{m.num_kv_blocks} blocks of {m.block_m}x{m.block_n}, S={m.q_len}{perm})"
    )
    draw.text((MARGIN, 3), heading, fill=INK, font=font)

    nb, nh = listed.shape[:2]
    panels = nb * nh
    cols = math.ceil(math.sqrt(panels))
    pw, ph = m.num_kv_blocks * scale, m.num_q_blocks * scale
    for p in range(panels):
        b, h = divmod(p, nh)
        colour = torch.where(text, 2, listed[b, h].long())  # [NQB, NKB] palette index
        tile = Image.fromarray(palette[colour].numpy(), "RGB").resize((pw, ph), Image.NEAREST)
        x = MARGIN + (p % cols) * (pw + GAP)
        y = TITLE_H + MARGIN + (p // cols) * (LABEL_H + ph + GAP)
        label = "shared by all heads" if panels == 1 else f"b{b} h{h}"
        draw.text((x, y), f"{label}: {float(computed[b, h].float().mean()):.3f}", fill=INK, font=font)
        img.paste(tile, (x, y + LABEL_H))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return img
