"""Built-in example models: tiny, randomly initialised diffusers DiTs with example inputs.

What `ditaccel explain --model NAME` and `ditaccel demo --model NAME` run, and a quick way to
try the backend on a real architecture without weights (`ditaccel explain --help` lists them):

    from ditcompile.models import get_tiny_model, run_model
    spec = get_tiny_model("wan2.1-tiny")
    model, inputs = spec.build(), spec.make_inputs(batch_size=2, seed=0)
    out = run_model(torch.compile(model, backend="ditaccel", options=spec.preset), inputs)

Every entry is a :class:`TinyModel` (`build`, `make_inputs`, `preset`). Weights come from a
fixed seed; parameters a constructor leaves entirely zero (e.g. Mochi's `pos_frequencies`) are
re-randomised so that the output depends on every block. Inputs carry all-ones masks (no padded
text tokens) and `return_dict=False` where the model accepts it. Diffusers is imported only
when an entry is built or its inputs are made (`pip install 'ditaccel[diffusers]'`).

What the tests expect of each model (token grid, text position, attention kinds, graph breaks)
lives with the tests, in `tests/models/zoo.py`. `load_model_spec("pkg.module:NAME")` loads any
other object with the same three attributes (the tests' hand-written DiT is one).
"""

from __future__ import annotations

import inspect
import math
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn

__all__ = ["TinyModel", "TINY_MODELS", "get_tiny_model", "list_tiny_models", "load_model_spec", "run_model",
           "seeded", "RandomInputs", "TEXT_TOKENS", "TEXT_DIM", "FRAMES", "LATENT_HW"]

_INIT_SEED = 1234


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModel:
    """A tiny model: its factory, its example inputs and the preset that fits it.

    build(): a fresh fp32 model in eval mode, weights from a fixed seed (bit-identical builds).
    make_inputs(batch_size=1, seed=0, dtype=torch.float32, device="cpu"): the forward kwargs,
        fresh random data from a CPU generator (same seed, same data on every device).
        wan2.1-tiny, hunyuan_video-tiny and mochi-tiny also take latent=(frames, height, width)
        (latent pixels, height and width even) for inputs of another size (`ditaccel autotune`).
    preset: the shipped preset for the model family, or None.
    """

    name: str
    preset: Optional[str]
    build: Callable[[], nn.Module]
    make_inputs: Callable[..., dict]
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


def seeded(factory: Callable[[], nn.Module], seed: int = _INIT_SEED) -> Callable[[], nn.Module]:
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


class RandomInputs:
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
            "the built-in example models are diffusers models: pip install 'ditaccel[diffusers]'"
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
TEXT_TOKENS = _TEXT_TOKENS = 10
TEXT_DIM = _TEXT_DIM = 32
FRAMES = _FRAMES = 3  # latent frames (no temporal patching in any tiny config)
_LAT_H, _LAT_W = 8, 12  # latent pixels -> 4 x 6 tokens with a 2x2 patch
LATENT_HW = (_LAT_H, _LAT_W)


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


def _latent(latent: Optional[tuple], default: tuple, multiple: tuple = (1, 2, 2)) -> tuple:
    """(frames, height, width) of the latent video: `default`, or `latent` checked against the
    patch (`multiple` per dim). Raises ValueError naming the accepted sizes."""
    if latent is None:
        return default
    dims = tuple(int(x) for x in latent)
    if len(dims) != 3 or any(d < 1 or d % m for d, m in zip(dims, multiple)):
        raise ValueError(f"latent size {latent!r} must be (frames, height, width) of positive multiples of "
                         f"{multiple}")
    return dims


def _inputs_wan(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu",
                latent: Optional[tuple] = None) -> dict:
    r = RandomInputs(seed, dtype, device)
    f, h, w = _latent(latent, _WAN_SHAPE)
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


def _inputs_hunyuan(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu",
                    latent: Optional[tuple] = None) -> dict:
    r = RandomInputs(seed, dtype, device)
    f, h, w = _latent(latent, (_FRAMES, _LAT_H, _LAT_W))
    return _finish_inputs(
        "HunyuanVideoTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, f, h, w),
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
    r = RandomInputs(seed, dtype, device)
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


def _inputs_mochi(batch_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu",
                  latent: Optional[tuple] = None) -> dict:
    r = RandomInputs(seed, dtype, device)
    f, h, w = _latent(latent, (_FRAMES, _LAT_H, _LAT_W))
    return _finish_inputs(
        "MochiTransformer3DModel",
        dict(
            hidden_states=r.randn(batch_size, 4, f, h, w),
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
    r = RandomInputs(seed, dtype, device)
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
    r = RandomInputs(seed, dtype, device)
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
    r = RandomInputs(seed, dtype, device)
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
    r = RandomInputs(seed, dtype, device)
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
    r = RandomInputs(seed, dtype, device)
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
# Registry
# --------------------------------------------------------------------------------------------------

def _example(preset: str, build: Callable[[], nn.Module], make_inputs: Callable[..., dict], description: str
             ) -> TinyModel:
    """The built-in example "<preset>-tiny": seeded weights, the family's preset."""
    return TinyModel(f"{preset}-tiny", preset, seeded(build), make_inputs, description)


_ENTRIES = [
    _example("wan2.1", _build_wan, _inputs_wan,
             "diffusers WanTransformer3DModel (Wan 2.1 T2V), 2 layers, 4 heads x 16"),
    _example("hunyuan_video", _build_hunyuan, _inputs_hunyuan,
             "diffusers HunyuanVideoTransformer3DModel, 1 dual + 1 single-stream block, guidance embeds"),
    _example("cogvideox", _build_cogvideox, _inputs_cogvideox,
             "diffusers CogVideoXTransformer3DModel (1.0 patching, RoPE), 2 layers"),
    _example("mochi", _build_mochi, _inputs_mochi,
             "diffusers MochiTransformer3DModel, 2 layers (last one context_pre_only)"),
    _example("ltx_video", _build_ltx, _inputs_ltx,
             "diffusers LTXVideoTransformer3DModel, 2 layers"),
    _example("latte", _build_latte, _inputs_latte,
             "diffusers LatteTransformer3DModel, 2 spatial + 2 temporal blocks"),
    _example("flux", _build_flux, _inputs_flux,
             "diffusers FluxTransformer2DModel (dev-style guidance), 1 dual + 1 single-stream block"),
    _example("sd3", _build_sd3, _inputs_sd3,
             "diffusers SD3Transformer2DModel (SD3.5-style qk norm + dual attention), 2 layers"),
    _example("pixart", _build_pixart, _inputs_pixart,
             "diffusers PixArtTransformer2DModel, 2 layers"),
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


def load_model_spec(name: str) -> Any:
    """A built-in model by name, or `"package.module:ATTR"`: an object with `build()`,
    `make_inputs(...)` and `preset` (for example a `TinyModel` of your own).

    Raises KeyError naming the valid built-in names, or ValueError when the module or the
    attribute cannot be loaded or lacks those attributes.
    """
    if ":" not in name:
        return get_tiny_model(name)
    module_name, _, attr = name.partition(":")
    try:
        spec = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model {name!r}: {err}") from err
    missing = [a for a in ("build", "make_inputs", "preset") if not hasattr(spec, a)]
    if missing:
        raise ValueError(f"model {name!r} has no {missing}: expected an object like ditcompile.models.TinyModel")
    return spec
