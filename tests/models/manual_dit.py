"""A small hand-written video DiT in pure torch (no diffusers, no SDPA).

``ManualVideoDiT`` exists so that ditaccel's graph passes can be tested against
attention that is *not* a ``F.scaled_dot_product_attention`` call.  Each block
contains the two hand-rolled attention idioms that appear in real DiT code:

* ``blocks.N.attn1`` -- self-attention over the video tokens, in ``[B, H, S, D]``
  layout, written as::

      scores = torch.matmul(q, k.transpose(-1, -2)) * scale
      probs = torch.softmax(scores, dim=-1)
      out = torch.matmul(probs, v)

* ``blocks.N.attn2`` -- cross-attention from video tokens to text tokens in the
  old diffusers ``AttnProcessor`` style, with the heads folded into the batch
  (``head_to_batch_dim``: ``[B, S, H*D] -> [B*H, S, D]``)::

      scores = torch.baddbmm(torch.empty(B*H, Sq, Sk), q, k.transpose(-1, -2), beta=0, alpha=scale)
      probs = scores.softmax(dim=-1)
      out = torch.bmm(probs, v)            # then batch_to_head_dim

Data flow: ``[B, C, F, H, W]`` --Conv3d patch (1, 2, 2)--> tokens
``[B, F' * H' * W', D]`` (frame-major, then rows, then columns) -> N blocks
with adaLN (shift/scale/gate) modulation from the timestep embedding -> final
adaLN + ``proj_out`` -> unpatchify back to ``[B, C_out, F, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ditcompile.models.tiny import FRAMES, LATENT_HW, TEXT_DIM, TEXT_TOKENS, RandomInputs, TinyModel, seeded

__all__ = [
    "ManualVideoDiT",
    "ManualDiTBlock",
    "ManualSelfAttention",
    "ManualCrossAttention",
    "timestep_embedding",
]


def timestep_embedding(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding: ``[B] -> [B, dim]`` in float32 (cos first)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    args = timestep.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ManualSelfAttention(nn.Module):
    """Multi-head self-attention with matmul -> softmax -> matmul in [B, H, S, D]."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, s, _ = hidden_states.shape
        # [B, S, H*D] -> [B, S, H, D] -> [B, H, S, D]
        q = self.to_q(hidden_states).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(hidden_states).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(hidden_states).view(b, s, self.heads, self.head_dim).transpose(1, 2)

        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)  # [B, H, S, D]

        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        return self.to_out(out)


class ManualCrossAttention(nn.Module):
    """Cross-attention in the old diffusers ``AttnProcessor`` style (heads folded into batch, baddbmm/bmm)."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(context_dim, inner)
        self.to_v = nn.Linear(context_dim, inner)
        self.to_out = nn.Linear(inner, dim)

    def head_to_batch_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        # [B, S, H*D] -> [B, S, H, D] -> [B, H, S, D] -> [B*H, S, D]
        b, s, _ = tensor.shape
        tensor = tensor.reshape(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
        return tensor.reshape(b * self.heads, s, self.head_dim)

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        # [B*H, S, D] -> [B, H, S, D] -> [B, S, H, D] -> [B, S, H*D]
        bh, s, d = tensor.shape
        b = bh // self.heads
        tensor = tensor.reshape(b, self.heads, s, d).permute(0, 2, 1, 3)
        return tensor.reshape(b, s, self.heads * d)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        q = self.head_to_batch_dim(self.to_q(hidden_states))
        k = self.head_to_batch_dim(self.to_k(encoder_hidden_states))
        v = self.head_to_batch_dim(self.to_v(encoder_hidden_states))

        baddbmm_input = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device)
        scores = torch.baddbmm(baddbmm_input, q, k.transpose(-1, -2), beta=0, alpha=self.scale)
        probs = scores.softmax(dim=-1)
        out = torch.bmm(probs, v)  # [B*H, Sq, D]

        return self.to_out(self.batch_to_head_dim(out))


class ManualDiTBlock(nn.Module):
    """adaLN-modulated self-attention, plain cross-attention, adaLN-modulated MLP."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = ManualSelfAttention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=True, eps=1e-6)
        self.attn2 = ManualCrossAttention(dim, context_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # shift/scale/gate for the attention branch and for the MLP branch.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(temb).unsqueeze(1).chunk(6, dim=-1)
        )
        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        hidden_states = hidden_states + gate_msa * self.attn1(norm_hidden_states)

        hidden_states = hidden_states + self.attn2(self.norm2(hidden_states), encoder_hidden_states)

        norm_hidden_states = self.norm3(hidden_states) * (1 + scale_mlp) + shift_mlp
        hidden_states = hidden_states + gate_mlp * self.ff(norm_hidden_states)
        return hidden_states


class ManualVideoDiT(nn.Module):
    """Tiny video DiT: ``forward(hidden_states [B,C,F,H,W], timestep [B], encoder_hidden_states [B,T,text_dim])``.

    Returns a plain tensor of shape ``[B, out_channels, F, H, W]``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_attention_heads: int = 2,
        attention_head_dim: int = 16,
        num_layers: int = 2,
        text_dim: int = 32,
        freq_dim: int = 32,
        mlp_ratio: float = 4.0,
        patch_size: tuple[int, int, int] = (1, 2, 2),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.patch_size = tuple(patch_size)
        self.freq_dim = freq_dim
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim

        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            [
                ManualDiTBlock(dim, dim, num_attention_heads, attention_head_dim, mlp_ratio)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj_out = nn.Linear(dim, self.out_channels * math.prod(self.patch_size))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        post_f, post_h, post_w = num_frames // p_t, height // p_h, width // p_w

        # [B, C, F, H, W] -> [B, D, F', H', W'] -> [B, F'*H'*W', D]
        hidden_states = self.patch_embedding(hidden_states)
        hidden_states = hidden_states.flatten(2).transpose(1, 2)

        temb = self.time_embedding(timestep_embedding(timestep, self.freq_dim).to(hidden_states.dtype))
        encoder_hidden_states = self.text_embedding(encoder_hidden_states)

        for block in self.blocks:
            hidden_states = block(hidden_states, encoder_hidden_states, temb)

        shift, scale = self.out_modulation(temb).unsqueeze(1).chunk(2, dim=-1)
        hidden_states = self.norm_out(hidden_states) * (1 + scale) + shift
        hidden_states = self.proj_out(hidden_states)

        # Unpatchify: [B, F'*H'*W', p_t*p_h*p_w*C] -> [B, C, F, H, W]
        hidden_states = hidden_states.reshape(batch_size, post_f, post_h, post_w, p_t, p_h, p_w, self.out_channels)
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.reshape(batch_size, self.out_channels, num_frames, height, width)


# --------------------------------------------------------------------------------------------------
# The example entry: `ditaccel explain --model tests.models.manual_dit:EXAMPLE` (no preset)
# --------------------------------------------------------------------------------------------------


def _build_manual() -> nn.Module:
    return ManualVideoDiT(in_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                          text_dim=TEXT_DIM, freq_dim=32, patch_size=(1, 2, 2))


def _inputs_manual(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = RandomInputs(seed, dtype, device)
    return dict(
        hidden_states=r.randn(batch_size, 4, FRAMES, *LATENT_HW),
        timestep=r.timestep(batch_size),
        encoder_hidden_states=r.randn(batch_size, TEXT_TOKENS, TEXT_DIM),
    )


EXAMPLE = TinyModel(
    name="manual-dit-tiny",
    preset=None,
    build=seeded(_build_manual),
    make_inputs=_inputs_manual,
    description="hand-written pure-torch video DiT (tests/models/manual_dit.py), 2 layers",
)
