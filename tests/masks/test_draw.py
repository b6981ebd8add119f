"""draw_pattern writes a readable PNG of the block mask(s)."""

from __future__ import annotations

import math

import pytest
import torch

from ditcompile.geometry import TextSegment, TokenGrid
from ditcompile.masks import draw as draw_mod
from ditcompile.masks import draw_pattern, generate_antidiagonal_mask, generate_radial_mask

PIL = pytest.importorskip("PIL.Image")

GRID = TokenGrid(4, 6, 8, "test")
TEXT = TextSegment("after", 20, "t")  # 212 tokens -> 14 x 14 blocks of 16


def test_shared_mask_png(tmp_path):
    p = generate_radial_mask(GRID, TEXT, block_m=16, block_n=16, min_window=4)
    path = tmp_path / "radial.png"
    draw_pattern(p, path, title="radial 4x6x8", scale=4)
    img = PIL.open(path)
    assert img.format == "PNG" and img.mode == "RGB"
    width = max(draw_mod.MIN_WIDTH, 2 * draw_mod.MARGIN + 14 * 4)
    height = draw_mod.TITLE_H + draw_mod.MARGIN + draw_mod.LABEL_H + 14 * 4 + draw_mod.MARGIN
    assert img.size == (width, height) == draw_mod.image_size(p, scale=4)
    # one 4x4 pixel square per block: check colours of a few blocks
    x0, y0 = draw_mod.MARGIN, draw_mod.TITLE_H + draw_mod.MARGIN + draw_mod.LABEL_H
    pixel = lambda i, j: img.getpixel((x0 + 4 * j + 1, y0 + 4 * i + 1))
    blocks = p.mask.to_dense_block_mask()[0, 0]
    assert pixel(13, 0) == draw_mod.TEXT and pixel(0, 13) == draw_mod.TEXT  # text row / column (block 12+ holds text)
    assert pixel(0, 0) == draw_mod.KEPT
    i, j = next((i, j) for i in range(12) for j in range(12) if not blocks[i, j])
    assert pixel(i, j) == draw_mod.SKIPPED


def test_per_head_panels(tmp_path):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 212, 16, generator=gen)
    p = generate_antidiagonal_mask(q, q, GRID, TEXT, block_m=16, block_n=16, threshold=0.5)
    img = draw_pattern(p, tmp_path / "xattn.png")
    scale = min(16, draw_mod.MAX_PANEL_PX // 14)
    cols, rows = math.ceil(math.sqrt(3)), 2
    width = max(draw_mod.MIN_WIDTH, 2 * draw_mod.MARGIN + cols * 14 * scale + (cols - 1) * draw_mod.GAP)
    height = draw_mod.TITLE_H + 2 * draw_mod.MARGIN + rows * (draw_mod.LABEL_H + 14 * scale) + (rows - 1) * draw_mod.GAP
    assert PIL.open(tmp_path / "xattn.png").size == img.size == (width, height)


def test_bad_arguments(tmp_path):
    p = generate_radial_mask(GRID, block_m=16, block_n=16)
    with pytest.raises(ValueError, match="scale"):
        draw_pattern(p, tmp_path / "x.png", scale=0)
    with pytest.raises(ValueError, match="SparsePattern"):
        draw_pattern(p.mask, tmp_path / "x.png")
