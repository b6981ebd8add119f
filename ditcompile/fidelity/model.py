"""The fidelity model: a small diffusers Wan transformer trained on the shape videos.

* :func:`build_fidelity_model` - the architecture (``WanTransformer3DModel``, random weights).
* :func:`load_fidelity_model` - the same with the weights shipped in ``fidelity/weights/``.
* :func:`text_embeddings` - the tiny "prompt" (``encoder_hidden_states``) for class labels.
* :func:`sample` - a rectified-flow Euler sampler that can call an accelerated transformer.
* :func:`flow_matching_loss` - the training objective (used by ``scripts/train_fidelity.py``).

Flow-matching convention (the same as Wan / diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_t = (1 - t) * x0 + t * noise`` with ``t`` in ``[0, 1]`` (``t = 1`` is pure noise), the model
is called with ``timestep = 1000 * t`` and predicts the velocity ``noise - x0``; sampling
integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .videos import (
    DIRECTIONS,
    FRAMES,
    HEIGHT,
    NUM_CLASSES,
    NUM_DIRECTIONS,
    SHAPES,
    WIDTH,
)

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "fidelity_wan.safetensors"

# Architecture of the shipped model. 8 x 32 x 32 RGB videos, (1, 4, 4) patches -> a token grid
# of 8 x 8 x 8 = 512 video tokens per sample; 4 text tokens.
FIDELITY_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=32,
    freq_dim=64,
    ffn_dim=512,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)

VIDEO_SHAPE = (3, FRAMES, HEIGHT, WIDTH)  # C, F, H, W of one sample
TEXT_TOKENS = 4
TEXT_DIM = FIDELITY_CONFIG["text_dim"]
NULL_LABEL = -1  # the unconditional "prompt" (trained with label dropout; used by guidance)

# Vocabulary of the tiny prompt: [bos, shape, direction, eos]; "null" replaces shape and
# direction for the unconditional prompt.
_VOCAB = ["<bos>", "<eos>", "<null>", *SHAPES, *DIRECTIONS]


def token_grid(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH,
               patch_size: Sequence[int] = FIDELITY_CONFIG["patch_size"]) -> tuple[int, int, int]:
    """(frames, height, width) of the video-token grid after patching."""
    pt, ph, pw = patch_size
    return frames // pt, height // ph, width // pw


def _require_diffusers():
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as e:  # pragma: no cover - exercised only without diffusers
        raise ImportError("the fidelity model needs diffusers: pip install 'ditaccel[diffusers]'") from e
    return WanTransformer3DModel


def build_fidelity_model(**overrides: Any):
    """A randomly initialised ``WanTransformer3DModel`` with the fidelity architecture.

    Keyword arguments override entries of :data:`FIDELITY_CONFIG`.
    """
    WanTransformer3DModel = _require_diffusers()
    cfg = dict(FIDELITY_CONFIG, **overrides)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return WanTransformer3DModel(**cfg)


def save_fidelity_weights(model, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
    """Write the model's weights (fp32) and its config to a safetensors file."""
    from safetensors.torch import save_file

    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()
           if k in FIDELITY_CONFIG or k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(cfg), "format": "ditaccel-fidelity-v1"}
    meta.update(extra_metadata or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_fidelity_model(path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32):
    """The trained fidelity model (eval mode), from ``path`` or the weights shipped in the package.

    Raises ``FileNotFoundError`` with instructions when the file is missing.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise FileNotFoundError(
            f"fidelity model weights not found at {p}. They ship with the repository "
            f"(ditcompile/fidelity/weights/fidelity_wan.safetensors); regenerate them with "
            f"`python scripts/train_fidelity.py --out {WEIGHTS_PATH}`.")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    cfg = json.loads(meta["config"]) if "config" in meta else {}
    model = build_fidelity_model(**cfg)
    state = load_file(str(p))
    state = {k: v.to(torch.float32) for k, v in state.items()}  # stored fp32 (or fp16): cast back
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{p} does not match the fidelity architecture: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model = model.to(device)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def training_metadata(path: str | os.PathLike | None = None) -> dict[str, str]:
    """The metadata stored with the weights (config, training steps, final loss, ...)."""
    from safetensors import safe_open

    with safe_open(str(path or WEIGHTS_PATH), framework="pt") as f:
        return dict(f.metadata() or {})


# --------------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------------


def _token_table(dim: int = TEXT_DIM) -> torch.Tensor:
    """Fixed embeddings of the prompt vocabulary: orthogonal DCT-II rows (no randomness), scaled
    to unit RMS. Independent of the torch version and device."""
    n = torch.arange(dim, dtype=torch.float64)
    rows = []
    for i in range(len(_VOCAB)):
        rows.append(math.sqrt(2.0) * torch.cos(math.pi * (i + 1) * (n + 0.5) / dim))
    return torch.stack(rows).to(torch.float32)


def text_tokens(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """[B, TEXT_TOKENS] vocabulary ids of the prompts for class labels (``NULL_LABEL`` = none)."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
    if ((labels < NULL_LABEL) | (labels >= NUM_CLASSES)).any():
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES}) or be NULL_LABEL ({NULL_LABEL})")
    bos, eos, null = _VOCAB.index("<bos>"), _VOCAB.index("<eos>"), _VOCAB.index("<null>")
    shape_ids = 3 + labels.clamp(min=0) // NUM_DIRECTIONS
    dir_ids = 3 + len(SHAPES) + labels.clamp(min=0) % NUM_DIRECTIONS
    is_null = labels == NULL_LABEL
    shape_ids = torch.where(is_null, torch.full_like(shape_ids, null), shape_ids)
    dir_ids = torch.where(is_null, torch.full_like(dir_ids, null), dir_ids)
    return torch.stack([torch.full_like(labels, bos), shape_ids, dir_ids, torch.full_like(labels, eos)], 1)


def text_embeddings(labels: torch.Tensor | Sequence[int], device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``encoder_hidden_states`` [B, TEXT_TOKENS, TEXT_DIM] for class labels."""
    table = _token_table()
    return table[text_tokens(labels)].to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Flow matching: training objective and sampler
# --------------------------------------------------------------------------------------------------


def _unwrap(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "sample"):
        return out.sample
    raise TypeError(f"transformer_call returned {type(out).__name__}, expected a tensor")


def flow_matching_loss(model, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                       label_dropout: float = 0.1, t: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified-flow loss: ``x_t = (1 - t) x0 + t noise``, target ``noise - x0``, ``timestep = 1000 t``.

    ``t`` is drawn from a logit-normal (mean 0, std 1), the SD3 / Wan choice, unless given.
    A fraction ``label_dropout`` of the prompts is replaced by the null prompt (for guidance).
    """
    B = x0.shape[0]
    dev = x0.device
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(dev, x0.dtype)
    if t is None:
        t = torch.sigmoid(torch.randn(B, generator=generator)).to(dev)
    t = t.to(dev, torch.float32)
    labels = torch.as_tensor(labels).cpu().clone()
    if label_dropout > 0:
        drop = torch.rand(B, generator=generator) < label_dropout
        labels[drop] = NULL_LABEL
    tb = t.view(B, 1, 1, 1, 1).to(x0.dtype)
    xt = (1 - tb) * x0 + tb * noise
    ctx = text_embeddings(labels, device=dev, dtype=x0.dtype)
    pred = _unwrap(model(hidden_states=xt, timestep=t * 1000.0, encoder_hidden_states=ctx, return_dict=False))
    return torch.mean((pred.float() - (noise - x0).float()) ** 2)


def sigma_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` noise levels from 1 down to 0 (linear, then the SD3/Wan time shift)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        s = shift * s / (1 + (shift - 1) * s)
    return s


@torch.no_grad()
def sample(
    model,
    labels: torch.Tensor | Sequence[int],
    steps: int = 20,
    seed: int = 0,
    transformer_call: Callable[..., Any] | None = None,
    guidance_scale: float = 1.0,
    shift: float = 1.0,
    noise: torch.Tensor | None = None,
    frames: int = FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
    clamp: bool = True,
    step_callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Generate videos [B, 3, F, H, W] in [-1, 1] for class labels with a rectified-flow Euler loop.

    ``transformer_call`` replaces ``model`` in the loop (e.g. ``torch.compile(model,
    backend="ditaccel")``); it is called as ``transformer_call(hidden_states=...,
    timestep=..., encoder_hidden_states=...)`` and may return a tensor, a tuple or a diffusers
    output. ``model`` still supplies the device and dtype. The starting noise is drawn from a CPU
    generator seeded with ``seed`` (identical on every device) unless ``noise`` is given.
    With ``guidance_scale != 1`` the conditional and null prompts run as one batch of 2B
    (classifier-free guidance). ``step_callback(i, t, x)`` sees the state after each step.
    """
    param = next(model.parameters())
    dev, dtype = param.device, param.dtype
    call = transformer_call if transformer_call is not None else model
    labels_t = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    B = labels_t.numel()
    if noise is None:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn((B, 3, frames, height, width), generator=g, dtype=torch.float32)
    x = noise.to(dev, torch.float32)
    ctx = text_embeddings(labels_t, device=dev, dtype=dtype)
    cfg = guidance_scale != 1.0
    if cfg:
        ctx = torch.cat([ctx, text_embeddings([NULL_LABEL] * B, device=dev, dtype=dtype)])
    sig = sigma_schedule(steps, shift)
    for i in range(steps):
        s, s_next = float(sig[i]), float(sig[i + 1])
        xin = torch.cat([x, x]) if cfg else x
        ts = torch.full((xin.shape[0],), s * 1000.0, device=dev, dtype=torch.float32)
        v = _unwrap(call(hidden_states=xin.to(dtype), timestep=ts, encoder_hidden_states=ctx)).float()
        if cfg:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance_scale * (v_c - v_u)
        x = x + (s_next - s) * v
        if step_callback is not None:
            step_callback(i, s_next, x)
    return x.clamp(-1, 1) if clamp else x
