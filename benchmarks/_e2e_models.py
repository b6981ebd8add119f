"""Models for benchmarks/e2e.py: published transformer configs, random bf16 weights, paper-size inputs.

Every model is a diffusers transformer built from its published config with random weights:
parameters are created on the meta device while the module is constructed (buffers such as
RoPE tables are computed normally, on the target device), then materialised directly on the
target device with small random values (normal, std 0.02; norm weights 1, norm biases 0), so
building even a 14B model takes seconds and never touches host memory. Modules diffusers keeps
in float32 when loading in bf16 (``_keep_in_fp32_modules``) stay float32 here too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

INIT_STD = 0.02

# Published transformer configs (the keys of each model's transformer/config.json on the Hub).
CONFIGS: dict[str, dict] = {
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
    "wan2.1-1.3b": dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    ),
    # Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json
    "wan2.1-14b": dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    ),
    # hunyuanvideo-community/HunyuanVideo, transformer/config.json
    "hunyuan-video": dict(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
        num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
        rope_axes_dim=(16, 56, 56),
    ),
    # THUDM/CogVideoX-5b, transformer/config.json
    "cogvideox-5b": dict(
        num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
        freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42, dropout=0.0, attention_bias=True,
        sample_width=90, sample_height=60, sample_frames=49, patch_size=2, patch_size_t=None,
        temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
        timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
        temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    ),
    # genmo/mochi-1-preview, transformer/config.json
    "mochi-1": dict(
        patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48, pooled_projection_dim=1536,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=4096, time_embed_dim=256,
        activation_fn="swiglu", max_sequence_length=256,
    ),
    # black-forest-labs/FLUX.1-dev, transformer/config.json
    "flux-dev": dict(
        patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    # Tiny Wan for --cpu-smoke: same code path, seconds on a CPU.
    "wan2.1-tiny": dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ),
}  # fmt: skip


@dataclass
class ModelSpec:
    """One benchmarked model: its diffusers class and config, the paper-size inputs, the preset."""

    name: str
    cls_name: str
    latent_shape: tuple[int, ...]  # the latents the scheduler updates (what `hidden_states` gets)
    tokens: int  # video/image tokens after patching
    text_tokens: int
    preset: str
    preset_options: dict = field(default_factory=dict)  # extra ditaccel options (e.g. Flux's grid)
    scheduler: dict = field(default_factory=dict)  # FlowMatchEulerDiscreteScheduler(**scheduler)
    set_timesteps: dict = field(default_factory=dict)  # extra set_timesteps kwargs (Flux: mu)
    timestep_scale: float = 1.0  # the model gets t * timestep_scale (Flux takes t / 1000)
    resolution: str = ""
    # extra inputs besides hidden_states/timestep: (device, dtype, generator, negative) -> kwargs
    make_inputs: Callable[..., dict] = None  # type: ignore[assignment]
    cache_dit_blocks: str = ""  # attribute of the block list, for the cache-dit peer ("" = not wired)
    note: str = ""

    @property
    def config(self) -> dict:
        return CONFIGS[self.name]

    @property
    def config_source(self) -> str:
        return MODEL_SOURCES.get(self.name, "")


MODEL_SOURCES = {
    "wan2.1-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json",
    "wan2.1-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json",
    "hunyuan-video": "hunyuanvideo-community/HunyuanVideo transformer/config.json",
    "cogvideox-5b": "THUDM/CogVideoX-5b transformer/config.json",
    "flux-dev": "black-forest-labs/FLUX.1-dev transformer/config.json",
    "mochi-1": "genmo/mochi-1-preview transformer/config.json",
    "wan2.1-tiny": "tiny Wan2.1 for --cpu-smoke (not a published model)",
}


def _randn(shape, device, dtype, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(device=device, dtype=dtype)


def _wan_inputs(text_tokens: int, text_dim: int):
    def make(device, dtype, gen, negative=False) -> dict:
        return {"encoder_hidden_states": _randn((1, text_tokens, text_dim), device, dtype, gen)}

    return make


def _hunyuan_inputs(device, dtype, gen, negative=False) -> dict:
    return {
        "encoder_hidden_states": _randn((1, 256, 4096), device, dtype, gen),
        "encoder_attention_mask": torch.ones(1, 256, dtype=torch.bool, device=device),
        "pooled_projections": _randn((1, 768), device, dtype, gen),
        "guidance": torch.full((1,), 6.0 * 1000.0, device=device, dtype=torch.float32),  # as the pipeline
    }


def _cogvideox_inputs(device, dtype, gen, negative=False) -> dict:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    frames, grid_h, grid_w = 13, 30, 45  # 480x720, 49 frames -> 13 latent frames, 2x2 patches
    cos, sin = get_3d_rotary_pos_embed(embed_dim=64, crops_coords=((0, 0), (grid_h, grid_w)),
                                       grid_size=(grid_h, grid_w), temporal_size=frames, device=device)  # fmt: skip
    return {
        "encoder_hidden_states": _randn((1, 226, 4096), device, dtype, gen),
        "image_rotary_emb": (cos, sin),
    }


def _mochi_inputs(device, dtype, gen, negative=False) -> dict:
    valid = 64  # a typical prompt: 64 of the T5 encoder's 256 tokens, the rest padding (prefix mask)
    mask = torch.zeros(1, 256, dtype=torch.bool, device=device)
    mask[:, :valid] = True
    return {"encoder_hidden_states": _randn((1, 256, 4096), device, dtype, gen), "encoder_attention_mask": mask}


def _flux_inputs(device, dtype, gen, negative=False) -> dict:
    h = w = 64  # 1024x1024 -> 128x128 latents -> 64x64 packed 2x2 patches
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    return {
        "encoder_hidden_states": _randn((1, 512, 4096), device, dtype, gen),
        "pooled_projections": _randn((1, 768), device, dtype, gen),
        "img_ids": img_ids.reshape(h * w, 3).to(device=device, dtype=dtype),
        "txt_ids": torch.zeros(512, 3, device=device, dtype=dtype),
        "guidance": torch.full((1,), 3.5, device=device, dtype=torch.float32),
    }


MODELS: dict[str, ModelSpec] = {
    "wan2.1-1.3b": ModelSpec(
        "wan2.1-1.3b", "WanTransformer3DModel", (1, 16, 21, 60, 104), 21 * 30 * 52, 512, "wan2.1",
        scheduler=dict(shift=3.0), resolution="480x832, 81 frames", make_inputs=_wan_inputs(512, 4096),
        cache_dit_blocks="blocks",
    ),
    "wan2.1-14b": ModelSpec(
        "wan2.1-14b", "WanTransformer3DModel", (1, 16, 21, 60, 104), 21 * 30 * 52, 512, "wan2.1",
        scheduler=dict(shift=3.0), resolution="480x832, 81 frames", make_inputs=_wan_inputs(512, 4096),
        cache_dit_blocks="blocks",
        note="the wan2.1 preset's TeaCache coefficients are fitted on 1.3B (the preset names 14B's)",
    ),
    "hunyuan-video": ModelSpec(
        "hunyuan-video", "HunyuanVideoTransformer3DModel", (1, 16, 33, 90, 160), 33 * 45 * 80, 256, "hunyuan_video",
        scheduler=dict(shift=7.0), resolution="720x1280, 129 frames", make_inputs=_hunyuan_inputs,
    ),
    "cogvideox-5b": ModelSpec(
        # CogVideoX takes [B, F, C, H, W]; its pipeline uses a DPM scheduler: flow-matching Euler stands
        # in here (the same transformer work per step).
        "cogvideox-5b", "CogVideoXTransformer3DModel", (1, 13, 16, 60, 90), 13 * 30 * 45, 226, "cogvideox",
        scheduler=dict(shift=1.0), resolution="480x720, 49 frames", make_inputs=_cogvideox_inputs,
        note="flow-matching Euler stands in for CogVideoX's DPM scheduler",
    ),
    "mochi-1": ModelSpec(
        # 480x848, 163 frames -> latents 28x60x106 -> 2x2 patches: 28 * 30 * 53 = 44,520 video tokens
        "mochi-1", "MochiTransformer3DModel", (1, 12, 28, 60, 106), 28 * 30 * 53, 256, "mochi",
        scheduler=dict(shift=1.0), resolution="480x848, 163 frames", make_inputs=_mochi_inputs,
        note="flow-matching Euler with shift 1 stands in for Mochi's linear-quadratic schedule",
    ),
    "flux-dev": ModelSpec(
        "flux-dev", "FluxTransformer2DModel", (1, 4096, 64), 64 * 64, 512, "flux",
        preset_options={"graph.token_grid": [1, 64, 64]},
        scheduler=dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        set_timesteps=dict(mu=1.15), timestep_scale=1e-3, resolution="1024x1024", make_inputs=_flux_inputs,
    ),
    "wan2.1-tiny": ModelSpec(
        "wan2.1-tiny", "WanTransformer3DModel", (1, 4, 3, 8, 12), 3 * 4 * 6, 16, "wan2.1",
        scheduler=dict(shift=3.0), resolution="tiny (CPU smoke)", make_inputs=_wan_inputs(16, 32),
        cache_dit_blocks="blocks",
        # 72 tokens: 16-token mask blocks and no dense warm-up, so the 3-step smoke loop runs sparse
        preset_options={"sparse.block_size": 16, "sparse.dense_steps": 0},
    ),
}  # fmt: skip


# ---------------------------------------------------------------------- construction


@contextlib.contextmanager
def _parameters_on_meta():
    """Register every parameter created inside on the meta device (buffers stay where made)."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_model(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The spec's diffusers transformer with random weights, in eval mode, on ``device``."""
    import diffusers

    cls = getattr(diffusers, spec.cls_name)
    device = torch.device(device)
    with _parameters_on_meta(), torch.device(device):
        model = cls(**spec.config)
    keep_fp32 = set(getattr(cls, "_keep_in_fp32_modules", None) or ()) if dtype != torch.float32 else set()
    gen = torch.Generator(device=device).manual_seed(seed) if device.type != "meta" else None  # meta: shapes only
    done: dict[int, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in done:  # tied parameters stay tied
                module._parameters[name] = done[id(param)]
                continue
            path = f"{module_name}.{name}".split(".")
            param_dtype = torch.float32 if keep_fp32.intersection(path) else dtype
            value = torch.empty(param.shape, device=device, dtype=param_dtype)
            if is_norm and name in ("weight", "bias"):
                value.fill_(1.0 if name == "weight" else 0.0)
            else:
                value.normal_(0.0, INIT_STD, generator=gen)
            done[id(param)] = module._parameters[name] = nn.Parameter(value, requires_grad=False)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_kwargs(spec: ModelSpec, latents: torch.Tensor, timestep: torch.Tensor, extra: dict) -> dict[str, Any]:
    """The transformer's keyword arguments for one call (as the model's pipeline passes them)."""
    return dict(extra, hidden_states=latents, timestep=timestep, return_dict=False)
