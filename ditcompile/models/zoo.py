"""Registry of tiny, randomly initialised DiT models with example inputs.

Used by the tests, by ``ditaccel demo`` (default: ``wan2.1-tiny``) and by
``ditaccel explain --model NAME``.  Every entry is a :class:`TinyModel`:

* ``build()`` returns a fresh fp32 model in eval mode whose weights come from a
  fixed seed (two builds are bit-identical).  Parameters that a constructor
  leaves entirely zero (e.g. Mochi's ``pos_frequencies``) are re-randomised so
  that the output depends on every block.
* ``make_inputs(batch_size=1, seed=0, dtype=torch.float32, device="cpu")``
  returns the forward kwargs, with fresh random data drawn from a CPU generator
  (same seed -> same data on every device), and ``return_dict=False`` where the
  model accepts it.  Masks are all-ones (no padded text tokens).
* ``expected`` (:class:`Expected`) describes what the attention sees: the token
  grid after patching, the number of text tokens, where text sits in joint
  attention, and the kind of every attention module (module-path regex,
  matched with ``re.fullmatch`` against ``model.named_modules()`` names).

Diffusers is imported lazily, only when a diffusers entry is built or its
inputs are made, so ``import ditcompile.models.zoo`` works without it.

Findings (torch 2.13.0 CPU, diffusers 0.42.1, default attention backend; traced with
``torch.compile(model, backend=be, fullgraph=...)`` where ``be`` counts ``len(gm.graph.nodes)``;
the token counts and text positions below are also checked by ``tests/test_zoo.py``).
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
    :mod:`ditcompile.models.manual_dit`, no SDPA.  ``blocks.N.attn1``:
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

import inspect
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..graph.module_path import normalize_module_path

__all__ = [
    "ATTENTION_KINDS",
    "TEXT_POSITIONS",
    "Expected",
    "TinyModel",
    "TINY_MODELS",
    "get_tiny_model",
    "list_tiny_models",
    "normalize_module_path",
    "run_model",
]

ATTENTION_KINDS = ("self", "cross", "joint", "spatial", "temporal")
TEXT_POSITIONS = ("before", "after", None)
#: Kinds used in :attr:`Expected.aux_attention` (attention that never touches video/image tokens).
AUX_ATTENTION_KINDS = ("text_self", "pool")

_INIT_SEED = 1234


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


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
    """A tiny model factory plus example inputs and an :class:`Expected` description."""

    name: str
    preset: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[..., dict]
    expected: Expected
    description: str = ""


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def run_model(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    """Call ``model(**inputs)`` and return the main output tensor.

    Unwraps tuples/lists (first element), diffusers ``BaseOutput`` objects (``.sample``, else the
    first field) and dicts.
    """
    out = model(**inputs)
    return _unwrap_output(out)


def _unwrap_output(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        if isinstance(out, (tuple, list)):
            if not out:
                raise TypeError("model returned an empty sequence")
            out = out[0]
        elif hasattr(out, "sample") and isinstance(getattr(out, "sample"), torch.Tensor):
            out = out.sample
        elif isinstance(out, Mapping):
            if not out:
                raise TypeError("model returned an empty mapping")
            out = next(iter(out.values()))
        elif hasattr(out, "to_tuple"):
            out = out.to_tuple()
        else:
            raise TypeError(f"cannot find an output tensor in {type(out).__name__}")
    return out


def _filter_kwargs(fn: Callable, kwargs: dict) -> dict:
    """Drop kwargs ``fn`` does not accept (keeps compatibility with older diffusers)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _construct(cls: type, **config: Any) -> nn.Module:
    return cls(**_filter_kwargs(cls.__init__, config))


@torch.no_grad()
def _rerandomize_zero_params(model: nn.Module, seed: int) -> list[str]:
    """Re-initialise floating-point parameters that are entirely zero. Returns their names."""
    gen = torch.Generator().manual_seed(seed + 1)
    names = []
    for name, param in model.named_parameters():
        if not param.is_floating_point() or param.numel() == 0 or bool(param.any()):
            continue
        std = 1.0 / math.sqrt(param.shape[-1]) if param.dim() >= 2 else 0.02
        param.copy_(torch.randn(param.shape, generator=gen) * std)
        names.append(name)
    return names


def _seeded(factory: Callable[[], nn.Module], seed: int = _INIT_SEED) -> Callable[[], nn.Module]:
    """Wrap ``factory`` so that it builds with a fixed seed, in fp32 and eval mode."""

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
        _rerandomize_zero_params(model, seed)
        if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
            model = model.to(torch.float32)
        return model.eval()

    build.__name__ = f"build_{getattr(factory, '__name__', 'model')}"
    build.__doc__ = factory.__doc__
    return build


class _Rand:
    """Draws random tensors on CPU from a seeded generator, then moves them."""

    def __init__(self, seed: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        self.device = torch.device(device)

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(device=self.device, dtype=dtype or self.dtype)

    def timestep(self, batch_size: int, scale: float = 1000.0) -> torch.Tensor:
        # Diffusers pipelines pass float32 timesteps from the scheduler.
        return (torch.rand(batch_size, generator=self.gen) * scale).to(device=self.device, dtype=torch.float32)

    def ones_mask(self, batch_size: int, length: int) -> torch.Tensor:
        return torch.ones(batch_size, length, dtype=torch.bool, device=self.device)


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this tiny model needs diffusers (pip install 'ditaccel[diffusers]'); "
            "only 'manual-dit-tiny' works without it"
        ) from exc
    return diffusers


def _diffusers_forward(cls_name: str) -> Callable | None:
    try:
        diffusers = _require_diffusers()
        return getattr(diffusers, cls_name).forward
    except (ImportError, AttributeError):
        return None


def _finish_inputs(cls_name: str | None, kwargs: dict) -> dict:
    if cls_name is not None:
        fwd = _diffusers_forward(cls_name)
        if fwd is not None:
            kwargs = _filter_kwargs(fwd, kwargs)
    return kwargs


# Shared tiny sizes.
_TEXT_TOKENS = 10
_TEXT_DIM = 32
_FRAMES = 3  # latent frames (no temporal patching in any tiny config)
_LAT_H, _LAT_W = 8, 12  # latent pixels -> 4 x 6 tokens with a 2x2 patch


# --------------------------------------------------------------------------------------------------
# wan2.1
# --------------------------------------------------------------------------------------------------

_WAN_SHAPE = (3, 16, 24)  # latent frames, height, width -> 3 x 8 x 12 tokens


def _build_wan() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.WanTransformer3DModel,
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=_TEXT_DIM,
        freq_dim=32,
        ffn_dim=128,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=32,
    )


def _inputs_wan(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    f, h, w = _WAN_SHAPE
    return _finish_inputs(
        "WanTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, f, h, w),
            timestep=r.timestep(batch_size),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# hunyuan_video
# --------------------------------------------------------------------------------------------------


def _build_hunyuan() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.HunyuanVideoTransformer3DModel,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=_TEXT_DIM,
        pooled_projection_dim=16,
        rope_theta=256.0,
        rope_axes_dim=(4, 6, 6),  # sums to attention_head_dim
    )


def _inputs_hunyuan(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return _finish_inputs(
        "HunyuanVideoTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, _FRAMES, _LAT_H, _LAT_W),
            timestep=r.timestep(batch_size),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            encoder_attention_mask=r.ones_mask(batch_size, _TEXT_TOKENS),
            pooled_projections=r.randn(batch_size, 16),
            # The pipeline passes guidance_scale * 1000 (HunyuanVideo default guidance 6.0).
            guidance=torch.full((batch_size,), 6000.0, device=r.device, dtype=torch.float32),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# cogvideox  (CogVideoX-5b style: 1.0 patching, RoPE passed in by the caller)
# --------------------------------------------------------------------------------------------------

_COG_HEAD_DIM = 16


def _build_cogvideox() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.CogVideoXTransformer3DModel,
        num_attention_heads=2,
        attention_head_dim=_COG_HEAD_DIM,
        in_channels=4,
        out_channels=4,
        time_embed_dim=32,
        text_embed_dim=_TEXT_DIM,
        num_layers=2,
        sample_width=_LAT_W,
        sample_height=_LAT_H,
        sample_frames=(_FRAMES - 1) * 4 + 1,
        patch_size=2,
        patch_size_t=None,
        temporal_compression_ratio=4,
        max_text_seq_length=_TEXT_TOKENS,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )


def _cogvideox_rope(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    gh, gw = _LAT_H // 2, _LAT_W // 2
    kwargs = dict(
        embed_dim=_COG_HEAD_DIM,
        crops_coords=((0, 0), (gh, gw)),
        grid_size=(gh, gw),
        temporal_size=_FRAMES,
        use_real=True,
    )
    cos, sin = get_3d_rotary_pos_embed(**_filter_kwargs(get_3d_rotary_pos_embed, kwargs))
    return cos.to(device=device, dtype=torch.float32), sin.to(device=device, dtype=torch.float32)


def _inputs_cogvideox(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return _finish_inputs(
        "CogVideoXTransformer3DModel",
        dict(
            # CogVideoX takes [B, F, C, H, W].
            hidden_states=r.randn(batch_size, _FRAMES, 4, _LAT_H, _LAT_W),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            timestep=r.timestep(batch_size),
            image_rotary_emb=_cogvideox_rope(r.device),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# mochi
# --------------------------------------------------------------------------------------------------


def _build_mochi() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.MochiTransformer3DModel,
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,  # the last block is context_pre_only
        pooled_projection_dim=16,
        in_channels=4,
        out_channels=None,
        qk_norm="rms_norm",
        text_embed_dim=_TEXT_DIM,
        time_embed_dim=16,
        activation_fn="swiglu",
        max_sequence_length=_TEXT_TOKENS,
    )


def _inputs_mochi(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return _finish_inputs(
        "MochiTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, _FRAMES, _LAT_H, _LAT_W),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            timestep=r.timestep(batch_size),
            encoder_attention_mask=r.ones_mask(batch_size, _TEXT_TOKENS),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# ltx_video  (inputs are packed tokens: patch size 1, [B, F*H*W, C])
# --------------------------------------------------------------------------------------------------

_LTX_GRID = (_FRAMES, 4, 6)
_LTX_CHANNELS = 8


def _build_ltx() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.LTXVideoTransformer3DModel,
        in_channels=_LTX_CHANNELS,
        out_channels=_LTX_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,  # = inner_dim: captions are projected to inner_dim first
        num_layers=2,
        caption_channels=_TEXT_DIM,
        qk_norm="rms_norm_across_heads",
    )


def _inputs_ltx(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    f, h, w = _LTX_GRID
    return _finish_inputs(
        "LTXVideoTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, f * h * w, _LTX_CHANNELS),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            timestep=r.timestep(batch_size),
            encoder_attention_mask=r.ones_mask(batch_size, _TEXT_TOKENS),
            num_frames=f,
            height=h,
            width=w,
            # LTX pipeline: (vae_temporal_compression / frame_rate, vae_spatial, vae_spatial)
            rope_interpolation_scale=(8 / 25, 32, 32),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# latte
# --------------------------------------------------------------------------------------------------


def _build_latte() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.LatteTransformer3DModel,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        cross_attention_dim=32,  # = inner_dim (captions are projected to inner_dim)
        attention_bias=True,
        sample_size=_LAT_H,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=_TEXT_DIM,
        video_length=_FRAMES,  # must equal the number of latent frames
    )


def _inputs_latte(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return _finish_inputs(
        "LatteTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, _FRAMES, _LAT_H, _LAT_W),
            timestep=r.timestep(batch_size),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            enable_temporal_attentions=True,
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# flux  (inputs are packed 2x2 patches: [B, (H/2)*(W/2), 4*C])
# --------------------------------------------------------------------------------------------------

_FLUX_GRID = (4, 6)
_FLUX_CHANNELS = 16  # 4 latent channels x 2 x 2 packing


def _build_flux() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.FluxTransformer2DModel,
        patch_size=1,
        in_channels=_FLUX_CHANNELS,
        out_channels=None,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_DIM,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )


def _inputs_flux(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    h, w = _FLUX_GRID
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    return _finish_inputs(
        "FluxTransformer2DModel",
        dict(
            hidden_states=r.randn(batch_size, h * w, _FLUX_CHANNELS),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            pooled_projections=r.randn(batch_size, 16),
            # The Flux pipeline passes t in [0, 1] (the model multiplies by 1000).
            timestep=r.timestep(batch_size, scale=1.0).to(dtype),
            img_ids=img_ids.reshape(h * w, 3).to(device=r.device, dtype=dtype),
            txt_ids=torch.zeros(_TEXT_TOKENS, 3, device=r.device, dtype=dtype),
            guidance=torch.full((batch_size,), 3.5, device=r.device, dtype=torch.float32),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# sd3  (SD3.5-style: qk RMSNorm and one dual-attention layer)
# --------------------------------------------------------------------------------------------------


def _build_sd3() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.SD3Transformer2DModel,
        sample_size=_LAT_H,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_DIM,
        caption_projection_dim=32,  # = inner_dim
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def _inputs_sd3(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return _finish_inputs(
        "SD3Transformer2DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, _LAT_H, _LAT_W),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            pooled_projections=r.randn(batch_size, 16),
            timestep=r.timestep(batch_size),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# pixart
# --------------------------------------------------------------------------------------------------


def _build_pixart() -> nn.Module:
    d = _require_diffusers()
    return _construct(
        d.PixArtTransformer2DModel,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,  # the real models predict 8 (learned sigma); 4 keeps output == input shape
        num_layers=2,
        cross_attention_dim=32,
        attention_bias=True,
        sample_size=_LAT_H,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=_TEXT_DIM,
        use_additional_conditions=False,
    )


def _inputs_pixart(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return _finish_inputs(
        "PixArtTransformer2DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, _LAT_H, _LAT_W),
            encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
            timestep=r.timestep(batch_size),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            encoder_attention_mask=r.ones_mask(batch_size, _TEXT_TOKENS),
            return_dict=False,
        ),
    )


# --------------------------------------------------------------------------------------------------
# manual (no diffusers)
# --------------------------------------------------------------------------------------------------


def _build_manual() -> nn.Module:
    from .manual_dit import ManualVideoDiT

    return ManualVideoDiT(
        in_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        text_dim=_TEXT_DIM,
        freq_dim=32,
        patch_size=(1, 2, 2),
    )


def _inputs_manual(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    r = _Rand(seed, dtype, device)
    return dict(
        hidden_states=r.randn(batch_size, 4, _FRAMES, _LAT_H, _LAT_W),
        timestep=r.timestep(batch_size),
        encoder_hidden_states=r.randn(batch_size, _TEXT_TOKENS, _TEXT_DIM),
    )


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_VIDEO_GRID = (_FRAMES, _LAT_H // 2, _LAT_W // 2)  # (3, 4, 6)
_IMAGE_GRID = (1, _LAT_H // 2, _LAT_W // 2)  # (1, 4, 6)

_ENTRIES = [
    TinyModel(
        name="wan2.1-tiny",
        preset="wan2.1",
        build=_seeded(_build_wan),
        make_inputs=_inputs_wan,
        expected=Expected(
            grid=(_WAN_SHAPE[0], _WAN_SHAPE[1] // 2, _WAN_SHAPE[2] // 2),  # (3, 8, 12)
            text_tokens=_TEXT_TOKENS,
            text_position=None,
            attention={r"blocks\.\d+\.attn1": "self", r"blocks\.\d+\.attn2": "cross"},
            notes="ditaccel demo default; 2 layers, 4 heads x 16, 3x16x24 latent, patch (1,2,2).",
        ),
        description="diffusers WanTransformer3DModel (Wan 2.1 T2V), 2 layers, 4 heads x 16",
    ),
    TinyModel(
        name="hunyuan_video-tiny",
        preset="hunyuan_video",
        build=_seeded(_build_hunyuan),
        make_inputs=_inputs_hunyuan,
        expected=Expected(
            grid=_VIDEO_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position="after",
            attention={
                r"transformer_blocks\.\d+\.attn": "joint",
                r"single_transformer_blocks\.\d+\.attn": "joint",
            },
            aux_attention={r"context_embedder\.token_refiner\.refiner_blocks\.\d+\.attn": "text_self"},
            notes="joint attention carries a bool key-padding mask [B,1,1,S_video+S_text].",
        ),
        description="diffusers HunyuanVideoTransformer3DModel, 1 dual + 1 single-stream block, guidance embeds",
    ),
    TinyModel(
        name="cogvideox-tiny",
        preset="cogvideox",
        build=_seeded(_build_cogvideox),
        make_inputs=_inputs_cogvideox,
        expected=Expected(
            grid=_VIDEO_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position="before",
            attention={r"transformer_blocks\.\d+\.attn1": "joint"},
            latent_layout="BFCHW",
            notes="CogVideoX-5b style: RoPE passed as image_rotary_emb and applied in place to the video slice.",
        ),
        description="diffusers CogVideoXTransformer3DModel (1.0 patching, RoPE), 2 layers",
    ),
    TinyModel(
        name="mochi-tiny",
        preset="mochi",
        build=_seeded(_build_mochi),
        make_inputs=_inputs_mochi,
        expected=Expected(
            grid=_VIDEO_GRID,
            text_tokens=_TEXT_TOKENS,
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
        description="diffusers MochiTransformer3DModel, 2 layers (last one context_pre_only)",
    ),
    TinyModel(
        name="ltx_video-tiny",
        preset="ltx_video",
        build=_seeded(_build_ltx),
        make_inputs=_inputs_ltx,
        expected=Expected(
            grid=_LTX_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position=None,
            attention={r"transformer_blocks\.\d+\.attn1": "self", r"transformer_blocks\.\d+\.attn2": "cross"},
            latent_layout="BSC",
            notes="input already packed as [B, F*H*W, C] (patch size 1); grid passed as num_frames/height/width.",
        ),
        description="diffusers LTXVideoTransformer3DModel, 2 layers",
    ),
    TinyModel(
        name="latte-tiny",
        preset="latte",
        build=_seeded(_build_latte),
        make_inputs=_inputs_latte,
        expected=Expected(
            grid=_VIDEO_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position=None,
            attention={
                r"transformer_blocks\.\d+\.attn1": "spatial",
                r"transformer_blocks\.\d+\.attn2": "cross",
                r"temporal_transformer_blocks\.\d+\.attn1": "temporal",
            },
            notes="spatial attention batches B*F frames of H'*W' tokens; temporal batches B*H'*W' of F tokens.",
        ),
        description="diffusers LatteTransformer3DModel, 2 spatial + 2 temporal blocks",
    ),
    TinyModel(
        name="flux-tiny",
        preset="flux",
        build=_seeded(_build_flux),
        make_inputs=_inputs_flux,
        expected=Expected(
            grid=(1,) + _FLUX_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position="before",
            attention={
                r"transformer_blocks\.\d+\.attn": "joint",
                r"single_transformer_blocks\.\d+\.attn": "joint",
            },
            latent_layout="BSC",
            notes="input already packed as [B, (H/2)*(W/2), 4*C]; RoPE from img_ids/txt_ids.",
        ),
        description="diffusers FluxTransformer2DModel (dev-style guidance), 1 dual + 1 single-stream block",
    ),
    TinyModel(
        name="sd3-tiny",
        preset="sd3",
        build=_seeded(_build_sd3),
        make_inputs=_inputs_sd3,
        expected=Expected(
            grid=_IMAGE_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position="after",
            attention={r"transformer_blocks\.\d+\.attn": "joint", r"transformer_blocks\.\d+\.attn2": "self"},
            latent_layout="BCHW",
            notes="SD3.5-style; block 0 has an extra image-only self attention (attn2).",
        ),
        description="diffusers SD3Transformer2DModel (SD3.5-style qk norm + dual attention), 2 layers",
    ),
    TinyModel(
        name="pixart-tiny",
        preset="pixart",
        build=_seeded(_build_pixart),
        make_inputs=_inputs_pixart,
        expected=Expected(
            grid=_IMAGE_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position=None,
            attention={r"transformer_blocks\.\d+\.attn1": "self", r"transformer_blocks\.\d+\.attn2": "cross"},
            latent_layout="BCHW",
        ),
        description="diffusers PixArtTransformer2DModel, 2 layers",
    ),
    TinyModel(
        name="manual-dit-tiny",
        preset="manual",
        build=_seeded(_build_manual),
        make_inputs=_inputs_manual,
        expected=Expected(
            grid=_VIDEO_GRID,
            text_tokens=_TEXT_TOKENS,
            text_position=None,
            attention={r"blocks\.\d+\.attn1": "self", r"blocks\.\d+\.attn2": "cross"},
            attention_impl="manual",
            notes="attn1: matmul/softmax/matmul in [B,H,S,D]; attn2: baddbmm/softmax/bmm in [B*H,S,D].",
        ),
        description="hand-written pure-torch video DiT (ditcompile.models.manual_dit), 2 layers",
    ),
]

TINY_MODELS: dict[str, TinyModel] = {entry.name: entry for entry in _ENTRIES}


def list_tiny_models() -> list[str]:
    """Names of all registered tiny models."""
    return list(TINY_MODELS)


def get_tiny_model(name: str) -> TinyModel:
    """Return the registry entry ``name``; raises ``KeyError`` listing the valid names."""
    try:
        return TINY_MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(TINY_MODELS))
        raise KeyError(f"unknown tiny model {name!r}; valid names: {valid}") from None
