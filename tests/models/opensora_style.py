"""A tiny Open-Sora-style video DiT (STDiT: spatial, temporal and cross attention per block) whose
attention is written in one of the call forms such code uses, for the masked / foreign attention
tests (issue 13). Sources for the forms: hpcaitech/Open-Sora `opensora/models/layers/blocks.py`
and `stdit/stdit3.py` (v1.2), PKU-YuanGroup/Open-Sora-Plan `opensora_v1_3/modules.py`.

    call="flash"      flash_attn.flash_attn_func on [B', N, H, D]         (stand-in op, foreign_ops.py)
    call="xformers"   xformers memory_efficient_attention; cross-attention with the valid text
                      tokens packed by masked_select and a BlockDiagonalMask from y_lens.tolist()
    call="legacy"     F.scaled_dot_product_attention inside torch.backends.cuda.sdp_kernel(...),
                      cross-attention with an additive 0/-inf key-padding mask
    call="manual"     softmax(q * scale @ k^T) @ v in fp32, cross-attention with a bool key mask

Every attention call increments `model.calls` in eager mode: the independent count the tests
compare the report against.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import foreign_ops

CALLS = ("flash", "xformers", "legacy", "manual")


class Attention(nn.Module):
    """Self-attention over [B', N, C] (spatial: B' = B*T, N = S; temporal: B' = B*S, N = T)."""

    def __init__(self, owner, dim: int, heads: int, call: str) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads, self.call = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads, call
        self.scale = (dim // heads) ** -0.5
        self._owner = [owner]  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._owner[0].calls += 1
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)  # [B', N, H, D]
        if self.call == "flash":
            out = foreign_ops.flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=self.scale)
        elif self.call == "xformers":
            out = foreign_ops.memory_efficient_attention(q, k, v, p=0.0)
        elif self.call == "legacy":
            with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False):
                out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                     v.transpose(1, 2)).transpose(1, 2)
        else:
            qh, kh, vh = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # [B', H, N, D]
            attn = (qh * self.scale) @ kh.transpose(-2, -1)
            out = (attn.float().softmax(dim=-1).to(vh.dtype) @ vh).permute(0, 2, 1, 3)
        return self.proj(out.reshape(b, n, c))


class CrossAttention(nn.Module):
    """Video queries attend the valid text tokens of their own sample (text mask [B, L])."""

    def __init__(self, owner, dim: int, heads: int, call: str) -> None:
        super().__init__()
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.heads, self.call, self._owner = heads, call, [owner]

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._owner[0].calls += 1
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        if self.call == "xformers":  # Open-Sora: packed valid tokens, block-diagonal bias
            y_lens = mask.sum(dim=1).tolist()
            packed = y.masked_select(mask.unsqueeze(-1) != 0).view(1, -1, c)
            q = self.q(x).view(1, -1, h, d)
            k, v = self.kv(packed).view(1, -1, 2, h, d).unbind(2)
            bias = foreign_ops.BlockDiagonalMask.from_seqlens([n] * b, y_lens)
            out = foreign_ops.memory_efficient_attention(q, k, v, attn_bias=bias)
            return self.proj(out.reshape(b, n, c))
        q = self.q(x).view(b, n, h, d).transpose(1, 2)  # [B, H, N, D]
        k, v = (t.transpose(1, 2) for t in self.kv(y).view(b, -1, 2, h, d).unbind(2))
        if self.call == "manual":
            attn_mask = mask.bool()[:, None, None, :]
        else:
            attn_mask = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, float("-inf"))[:, None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, owner, dim: int, heads: int, call: str) -> None:
        super().__init__()
        self.spatial = Attention(owner, dim, heads, call)
        self.temporal = Attention(owner, dim, heads, call)
        self.cross = CrossAttention(owner, dim, heads, call)

    def forward(self, x, y, mask, frames: int, spatial: int):
        b, _, c = x.shape
        xs = x.view(b, frames, spatial, c).reshape(b * frames, spatial, c)  # B (T S) C -> (B T) S C
        x = x + self.spatial(xs).view(b, frames * spatial, c)
        xt = x.view(b, frames, spatial, c).transpose(1, 2).reshape(b * spatial, frames, c)  # -> (B S) T C
        x = x + self.temporal(xt).view(b, spatial, frames, c).transpose(1, 2).reshape(b, frames * spatial, c)
        return x + self.cross(x, y, mask)


class TinySTDiT(nn.Module):
    """x: [B, C_in, T, H, W] latents; y: [B, L, dim] text; mask: [B, L] (1 = valid token)."""

    def __init__(self, call: str, dim: int = 32, heads: int = 2, depth: int = 2, in_channels: int = 4) -> None:
        super().__init__()
        if call not in CALLS:
            raise ValueError(f"call must be one of {CALLS}, got {call!r}")
        self.calls = 0
        self.x_embedder = nn.Conv3d(in_channels, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.blocks = nn.ModuleList(Block(self, dim, heads, call) for _ in range(depth))
        self.out = nn.Linear(dim, in_channels * 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x)  # [B, dim, T, H/2, W/2]
        b, c, frames, hh, ww = h.shape
        h = h.flatten(2).transpose(1, 2)  # [B, T*S, dim]
        for block in self.blocks:
            h = block(h, y, mask, frames, hh * ww)
        return self.out(h)


def inputs(batch: int = 2, frames: int = 4, size: int = 8, text: int = 6, dim: int = 32, generator=None) -> dict:
    """Random latents and text; the second sample's prompt is padded (its mask ends in zeros)."""
    mask = torch.ones(batch, text, dtype=torch.long)
    if batch > 1:
        mask[1, text // 2:] = 0
    return {"x": torch.randn(batch, 4, frames, size, size, generator=generator),
            "y": torch.randn(batch, text, dim, generator=generator), "mask": mask}
