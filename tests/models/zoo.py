"""What the tests expect of each tiny model: token grid, text, attention kinds, graph breaks.

The models themselves are the package's built-in examples (`ditcompile.models.tiny`) plus the
hand-written DiT of `tests/models/manual_dit.py`; this module pairs each with an `Expected`
description measured on the real models, so tests compare the backend with an independent
account of the model (never with the backend's own analysis).

Findings (torch 2.13.0 CPU, diffusers 0.42.1, default attention backend; traced with
``torch.compile(model, backend=be, fullgraph=...)`` where ``be`` counts ``len(gm.graph.nodes)``;
the token counts and text positions below are also checked by ``tests/models/test_zoo.py``).
"Layout" is the layout right after the q/k/v projections, before the permute/transpose that
feeds SDPA.  "dispatch" = ``diffusers.models.attention_dispatch.dispatch_attention_fn``: with
the native backend it does ``permute(0, 2, 1, 3)`` on q, k, v (``[B,S,H,D] -> [B,H,S,D]``),
calls ``F.scaled_dot_product_attention(query=..., key=..., value=..., attn_mask=...,
dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)`` **with keyword arguments**, and
permutes the result back.  The ``AttnProcessor2_0`` family instead does
``view(B, -1, H, D).transpose(1, 2)`` and calls SDPA with q, k, v *positionally*.

wan2.1-tiny (grid 3x8x12 = 288 tokens, 10 text tokens; 1 graph, 380 nodes)
    ``blocks.N.attn1`` self, ``blocks.N.attn2`` cross (no joint attention).  Layout
    ``[B,S,H*D]`` -> RMSNorm across all heads -> ``unflatten(2, (H, -1))`` = ``[B,S,H,D]`` ->
    RoPE (self-attention only): ``out = torch.empty_like(q)`` then two strided ``setitem``s
    (``out[..., 0::2] = ...``, ``out[..., 1::2] = ...``) -> ``type_as`` -> dispatch.  No mask.
hunyuan_video-tiny (grid 3x4x6, 10 text; 1 graph, 544 nodes)
    ``transformer_blocks.N.attn`` (dual stream: text has its own ``add_{q,k,v}_proj``) and
    ``single_transformer_blocks.N.attn`` (single stream: ``cat([video, text])`` on
    ``[B,S,D]`` *before* the shared ``to_q/to_k/to_v``) are both joint with text **after**
    video.  ``unflatten`` -> ``[B,S,H,D]`` -> RMSNorm per head -> RoPE on the video slice
    only -> (dual stream) ``cat(dim=1)`` -> dispatch with a bool key-padding mask
    ``[B,1,1,S_video+S_text]``.  Also text-only self-attention in the token refiner
    (``context_embedder.token_refiner.refiner_blocks.N.attn``, ``AttnProcessor2_0``, bool mask
    ``[B,H,T,T]`` built with an in-place ``mask[:, :, :, 0] = True`` and
    ``repeat_interleave`` over heads).
cogvideox-tiny (grid 3x4x6, 10 text; 1 graph, 358 nodes)
    ``transformer_blocks.N.attn1`` joint with text **before** video: ``cat([text, video])``
    on ``[B,S,D]`` *before* the shared projections.  ``view(B,-1,H,D).transpose(1,2)`` =
    ``[B,H,S,D]`` -> LayerNorm q/k -> RoPE written **in place** on the video slice
    (``query[:, :, T:] = apply_rotary_emb(...)``: ``setitem`` nodes that mutate the tensors
    later passed to SDPA) -> ``F.scaled_dot_product_attention`` (no mask).  The input is
    ``[B, F, C, H, W]`` (frames before channels); RoPE comes in as ``image_rotary_emb``.
mochi-tiny (grid 3x4x6, 10 text)
    ``transformer_blocks.N.attn1`` joint with text **after** video; the text stream is
    narrower (``pooled_projection_dim``) with its own projections.  ``unflatten`` ->
    ``[B,S,H,D]`` -> RMSNorm per head -> RoPE -> ``transpose(1, 2)``; then a Python loop over
    the batch picks the valid text tokens with ``torch.nonzero(mask)`` and calls SDPA once
    per sample on ``[1,H,S_video+n_valid,D]`` (then ``F.pad`` back, ``cat`` over the batch).
    Also a one-query attention pool over text (``time_embed.pooler``, SDPA with
    ``[B,H,1,D]`` queries and a ``[B,1,1,T+1]`` bool mask).
    **Graph breaks** with the default ``fullgraph=False``: ``aten.nonzero`` has a
    data-dependent output shape -> 11 graphs / 10 breaks at batch 1, and the per-sample
    joint-attention SDPA calls run *outside* every FX graph (only the pooler SDPA is
    captured), so a backend never sees Mochi's joint attention.  ``fullgraph=True`` traces
    one graph (594 nodes): since pytorch PR #163123 (Sept 2025; present in 2.13, first
    release not checked) ``fullgraph=True`` implies ``capture_dynamic_output_shape_ops``,
    and SDPA then sees unbacked sizes
    ``[1, H, u0 + 72, D]``.  ``torch._dynamo.config.capture_dynamic_output_shape_ops = True``
    gives the same single graph without ``fullgraph``.
ltx_video-tiny (grid 3x4x6, 10 text; 1 graph, 364 nodes)
    ``transformer_blocks.N.attn1`` self, ``attn2`` cross.  RMSNorm and RoPE on
    ``[B,S,H*D]``, then ``unflatten(2, (H, -1))`` -> ``[B,S,H,D]`` -> dispatch.  The
    cross-attention gets an additive float mask ``[B,H,1,T]`` (``(1 - mask) * -10000`` ->
    ``prepare_attention_mask`` repeats it per head).  The input is already packed,
    ``[B, F*H*W, C]`` with patch size 1, plus ``num_frames/height/width`` ints.
    ``LTXAttention.forward`` calls ``inspect.signature`` every call; Dynamo folds it away.
latte-tiny (grid 3x4x6, 10 text; 1 graph, 393 nodes)
    ``transformer_blocks.N.attn1`` spatial (batch ``B*F``, ``S = H'*W'``),
    ``transformer_blocks.N.attn2`` cross, also per frame (text ``repeat_interleave``-d F
    times), ``temporal_transformer_blocks.N.attn1`` temporal (batch ``B*H'*W'``, ``S = F``).
    ``AttnProcessor2_0``; the spatial <-> temporal switch is
    ``reshape(B, -1, S, D).permute(0, 2, 1, 3).reshape(-1, S', D)`` between blocks.
flux-tiny (grid 1x4x6, 10 text; 1 graph, 381 nodes)
    ``transformer_blocks.N.attn`` (dual stream) and ``single_transformer_blocks.N.attn``
    (single stream, ``pre_only``: no ``to_out``; ``cat([text, image])`` happens in the block
    before the projections) are joint with text **before** image.
    ``unflatten(-1, (-1, D))`` -> ``[B,S,H,D]`` -> RMSNorm -> (dual) ``cat`` -> RoPE over the
    whole joint sequence (``txt_ids`` are zeros) -> dispatch (no mask).  The input is
    packed ``[B, (H/2)*(W/2), 4*C]``.
sd3-tiny (grid 1x4x6, 10 text; 1 graph, 398 nodes)
    ``transformer_blocks.N.attn`` joint with text **after** image, concatenated in
    ``[B,H,S,D]`` on ``dim=2`` (``JointAttnProcessor2_0``, so SDPA's q/k/v are ``cat``
    nodes) -> ``F.scaled_dot_product_attention`` (no mask).  SD3.5-style: RMSNorm q/k and
    ``transformer_blocks.0.attn2``, an extra image-only self-attention (dual attention
    layer) sharing the processor object; the last block is ``context_pre_only``.
pixart-tiny (grid 1x4x6, 10 text; 1 graph, 270 nodes)
    ``transformer_blocks.N.attn1`` self, ``attn2`` cross with an additive ``[B,H,1,T]``
    mask.  ``AttnProcessor2_0``.
manual-dit-tiny (grid 3x4x6, 10 text; 1 graph, 231 nodes)
    :mod:`tests.models.manual_dit`, no SDPA.  ``blocks.N.attn1``:
    ``view(B,S,H,D).transpose(1,2)`` -> ``matmul(q, k.transpose(-1,-2))`` -> ``mul`` by scale
    -> ``softmax(dim=-1)`` -> ``matmul(p, v)``.  ``blocks.N.attn2``: heads folded into the
    batch, ``[B*H,S,D]`` -> ``baddbmm(empty(B*H,Sq,Sk), q, k^T, beta=0, alpha=scale)`` ->
    ``Tensor.softmax(dim=-1)`` -> ``bmm``.

Other things visible in the Dynamo FX graphs:

* SDPA shows up as ``call_function`` on ``torch._C._nn.scaled_dot_product_attention``;
  the processor object never appears.  Its ``nn_module_stack`` ends at the attention
  module, but the path is spelled differently for diffusers models:
  ``L['self'].__dict__['_modules']['blocks'].0.attn1`` (``ModelMixin``) vs
  ``L['self'].blocks.0.attn1`` (plain ``nn.Module``); :func:`normalize_module_path` maps
  both to ``blocks.0.attn1``.
* In-place ops around attention: Wan's RoPE (``empty_like`` + ``setitem``), CogVideoX's
  RoPE (``setitem`` into the SDPA inputs), HunyuanVideo's refiner mask (``setitem``).  A
  pass that moves or replaces the SDPA node must keep those mutations ahead of it.
* Masks reaching SDPA: bool ``[B,1,1,S]`` (HunyuanVideo joint), bool ``[B,H,T,T]``
  (HunyuanVideo refiner), bool ``[B,1,1,T+1]`` (Mochi pool), additive float ``[B,H,1,T]``
  (LTX and PixArt cross-attention); every other call has ``attn_mask=None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import torch.nn as nn

from ditcompile.graph.module_path import normalize_module_path
from ditcompile.models import tiny
from ditcompile.models.tiny import run_model

from . import manual_dit

__all__ = ["ATTENTION_KINDS", "TEXT_POSITIONS", "AUX_ATTENTION_KINDS", "Expected", "TinyModel", "TINY_MODELS",
           "EXPECTED", "get_tiny_model", "normalize_module_path", "run_model"]

ATTENTION_KINDS = ("self", "cross", "joint", "spatial", "temporal")
TEXT_POSITIONS = ("before", "after", None)
#: Kinds used in :attr:`Expected.aux_attention` (attention that never touches video/image tokens).
AUX_ATTENTION_KINDS = ("text_self", "pool")


@dataclass(frozen=True)
class Expected:
    """What a model's attention looks like, for tests and ``ditaccel explain``.

    Attributes:
        grid: ``(frames, height, width)`` of the video/image token grid after patching, as the
            attention sees it (images: ``frames == 1``).
        text_tokens: number of text tokens attended to (cross/joint attention).
        text_position: where text sits in joint attention: ``"before"`` or ``"after"`` the
            video/image tokens, or ``None`` if the model has no joint attention.
        attention: ``{module-path regex: kind}`` for every attention module that attends over
            video/image tokens; kind is one of :data:`ATTENTION_KINDS`.  Regexes are matched with
            ``re.fullmatch`` against names from ``model.named_modules()``.  Token counts per
            kind: self ``Sq = Sk = F*H*W``; cross ``Sq = F*H*W, Sk = text`` (per frame, batch
            ``B*F`` and ``Sq = H*W``, in models that also have spatial attention, i.e. Latte);
            joint ``Sq = Sk = F*H*W + text``; spatial ``Sq = Sk = H*W`` with batch ``B*F``;
            temporal ``Sq = Sk = F`` with batch ``B*H*W``.
        aux_attention: ``{module-path regex: kind}`` for attention that never touches the
            video/image tokens (kind in :data:`AUX_ATTENTION_KINDS`): HunyuanVideo's text token
            refiner (``"text_self"``), Mochi's caption attention pool (``"pool"``).
        latent_key: forward kwarg that holds the latent.
        latent_layout: layout of that latent: ``"BCFHW"``, ``"BFCHW"`` (CogVideoX), ``"BCHW"``,
            or ``"BSC"`` (already patchified/packed tokens: LTX-Video, Flux).
        output_matches_input: whether the main output has the latent's shape.
        attention_impl: ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"manual"``.
        fullgraph: whether ``torch.compile(model, fullgraph=True)`` traces into one graph
            (measured with torch 2.13 / diffusers 0.42.1; True for every entry, see Mochi notes).
        graph_break: why the *default* ``torch.compile`` (``fullgraph=False``) splits the model
            into several graphs, or ``None`` when it captures one graph.
        notes: free-form remarks.
    """

    grid: tuple[int, int, int]
    text_tokens: int
    text_position: str | None
    attention: Mapping[str, str] = field(hash=False)
    aux_attention: Mapping[str, str] = field(default_factory=dict, hash=False)
    latent_key: str = "hidden_states"
    latent_layout: str = "BCFHW"
    output_matches_input: bool = True
    attention_impl: str = "sdpa"
    fullgraph: bool = True
    graph_break: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(f"text_position must be one of {TEXT_POSITIONS}, got {self.text_position!r}")
        for kind in self.attention.values():
            if kind not in ATTENTION_KINDS:
                raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        for kind in self.aux_attention.values():
            if kind not in AUX_ATTENTION_KINDS:
                raise ValueError(f"aux attention kind must be one of {AUX_ATTENTION_KINDS}, got {kind!r}")
        # Freeze the mappings so a shared registry entry cannot be mutated by accident.
        object.__setattr__(self, "attention", MappingProxyType(dict(self.attention)))
        object.__setattr__(self, "aux_attention", MappingProxyType(dict(self.aux_attention)))

    @property
    def video_tokens(self) -> int:
        """Number of video/image tokens (``frames * height * width``)."""
        f, h, w = self.grid
        return f * h * w

    def kind_of(self, module_path: str) -> str | None:
        """Kind of the attention module at ``module_path`` (main or aux), or ``None``.

        ``module_path`` may be a ``named_modules()`` name or a raw Dynamo ``nn_module_stack``
        path such as ``L['self'].__dict__['_modules']['blocks'].0.attn1`` (see
        :func:`normalize_module_path`).
        """
        module_path = normalize_module_path(module_path)
        for table in (self.attention, self.aux_attention):
            for pattern, kind in table.items():
                if re.fullmatch(pattern, module_path):
                    return kind
        return None

    def attention_modules(self, model: nn.Module, include_aux: bool = False) -> dict[str, str]:
        """``{module path: kind}`` for the attention modules of ``model`` listed in this description."""
        tables = [self.attention] + ([self.aux_attention] if include_aux else [])
        out: dict[str, str] = {}
        for name, _ in model.named_modules():
            for table in tables:
                for pattern, kind in table.items():
                    if re.fullmatch(pattern, name):
                        out[name] = kind
        return out


@dataclass(frozen=True)
class TinyModel:
    """A tiny model (built-in example or the manual DiT) with its `Expected` description.

    preset: the shipped preset of the family, or "manual" for the hand-written DiT (no preset).
    """

    name: str
    preset: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[..., dict]
    expected: Expected
    description: str = ""


EXPECTED: dict[str, Expected] = {
    "wan2.1-tiny": Expected(
        grid=(3, 8, 12),  # latent 3x16x24, patch (1, 2, 2)
        text_tokens=10,
        text_position=None,
        attention={r"blocks\.\d+\.attn1": "self", r"blocks\.\d+\.attn2": "cross"},
        notes="ditaccel demo default; 2 layers, 4 heads x 16, 3x16x24 latent, patch (1,2,2).",
    ),
    "hunyuan_video-tiny": Expected(
        grid=(3, 4, 6),
        text_tokens=10,
        text_position="after",
        attention={
            r"transformer_blocks\.\d+\.attn": "joint",
            r"single_transformer_blocks\.\d+\.attn": "joint",
        },
        aux_attention={r"context_embedder\.token_refiner\.refiner_blocks\.\d+\.attn": "text_self"},
        notes="joint attention carries a bool key-padding mask [B,1,1,S_video+S_text].",
    ),
    "cogvideox-tiny": Expected(
        grid=(3, 4, 6),
        text_tokens=10,
        text_position="before",
        attention={r"transformer_blocks\.\d+\.attn1": "joint"},
        latent_layout="BFCHW",
        notes="CogVideoX-5b style: RoPE passed as image_rotary_emb and applied in place to the video slice.",
    ),
    "mochi-tiny": Expected(
        grid=(3, 4, 6),
        text_tokens=10,
        text_position="after",
        attention={r"transformer_blocks\.\d+\.attn1": "joint"},
        aux_attention={r"time_embed\.pooler": "pool"},
        fullgraph=True,
        graph_break=(
            "MochiAttnProcessor2_0 selects the valid text tokens per sample with torch.nonzero(mask) "
            "(data-dependent output shape) inside a loop over the batch; with fullgraph=False the "
            "joint-attention SDPA calls end up outside every graph"
        ),
        notes=(
            "one SDPA call per sample; text stream is narrower (pooled_projection_dim). "
            "fullgraph=True (recent torch, PR #163123) captures nonzero with unbacked sizes: SDPA sees S = u0 + 72."
        ),
    ),
    "ltx_video-tiny": Expected(
        grid=(3, 4, 6),
        text_tokens=10,
        text_position=None,
        attention={r"transformer_blocks\.\d+\.attn1": "self", r"transformer_blocks\.\d+\.attn2": "cross"},
        latent_layout="BSC",
        notes="input already packed as [B, F*H*W, C] (patch size 1); grid passed as num_frames/height/width.",
    ),
    "latte-tiny": Expected(
        grid=(3, 4, 6),
        text_tokens=10,
        text_position=None,
        attention={
            r"transformer_blocks\.\d+\.attn1": "spatial",
            r"transformer_blocks\.\d+\.attn2": "cross",
            r"temporal_transformer_blocks\.\d+\.attn1": "temporal",
        },
        notes="spatial attention batches B*F frames of H'*W' tokens; temporal batches B*H'*W' of F tokens.",
    ),
    "flux-tiny": Expected(
        grid=(1, 4, 6),
        text_tokens=10,
        text_position="before",
        attention={
            r"transformer_blocks\.\d+\.attn": "joint",
            r"single_transformer_blocks\.\d+\.attn": "joint",
        },
        latent_layout="BSC",
        notes="input already packed as [B, (H/2)*(W/2), 4*C]; RoPE from img_ids/txt_ids.",
    ),
    "sd3-tiny": Expected(
        grid=(1, 4, 6),
        text_tokens=10,
        text_position="after",
        attention={r"transformer_blocks\.\d+\.attn": "joint", r"transformer_blocks\.\d+\.attn2": "self"},
        latent_layout="BCHW",
        notes="SD3.5-style; block 0 has an extra image-only self attention (attn2).",
    ),
    "pixart-tiny": Expected(
        grid=(1, 4, 6),
        text_tokens=10,
        text_position=None,
        attention={r"transformer_blocks\.\d+\.attn1": "self", r"transformer_blocks\.\d+\.attn2": "cross"},
        latent_layout="BCHW",
    ),
    "manual-dit-tiny": Expected(
        grid=(3, 4, 6),
        text_tokens=10,
        text_position=None,
        attention={r"blocks\.\d+\.attn1": "self", r"blocks\.\d+\.attn2": "cross"},
        attention_impl="manual",
        notes="attn1: matmul/softmax/matmul in [B,H,S,D]; attn2: baddbmm/softmax/bmm in [B*H,S,D].",
    ),
}


def _entry(name: str) -> TinyModel:
    if name == manual_dit.EXAMPLE.name:
        example, preset = manual_dit.EXAMPLE, "manual"
    else:
        example = tiny.get_tiny_model(name)
        preset = example.preset
    return TinyModel(name, preset, example.build, example.make_inputs, EXPECTED[name], example.description)


TINY_MODELS: dict[str, TinyModel] = {name: _entry(name) for name in EXPECTED}


def get_tiny_model(name: str) -> TinyModel:
    """Return the entry ``name``; raises ``KeyError`` listing the valid names."""
    try:
        return TINY_MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(TINY_MODELS))
        raise KeyError(f"unknown tiny model {name!r}; valid names: {valid}") from None
