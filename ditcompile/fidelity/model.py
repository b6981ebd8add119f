"""The fidelity model: a small diffusers Wan transformer trained on the shape videos.

* :func:`build_fidelity_model` - the architecture (``WanTransformer3DModel``, random weights).
* :func:`load_fidelity_model` - the same with the weights shipped in ``fidelity/weights/``
  (checked against their recorded SHA-256, ``fidelity_wan.safetensors.sha256``) or a file of
  yours; a file that cannot be used raises :class:`WeightsFileError` naming it and the problem.
* :func:`text_embeddings` - the tiny "prompt" (``encoder_hidden_states``) for class labels.
* :func:`sample` - a rectified-flow Euler sampler that can call an accelerated transformer.
* :func:`flow_matching_loss` - the training objective (used by ``scripts/train_fidelity.py``).

Flow-matching convention (the same as Wan / diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_t = (1 - t) * x0 + t * noise`` with ``t`` in ``[0, 1]`` (``t = 1`` is pure noise), the model
is called with ``timestep = 1000 * t`` and predicts the velocity ``noise - x0``; sampling
integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_path, atomic_write_text
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
# The SHA-256 of the shipped weights, in `sha256sum` format; rewritten by save_fidelity_weights
# whenever it writes WEIGHTS_PATH (scripts/train_fidelity.py regenerating them).
WEIGHTS_SHA256_PATH = WEIGHTS_PATH.with_name(WEIGHTS_PATH.name + ".sha256")
WEIGHTS_FORMAT = "ditaccel-fidelity-v1"
_REINSTALL = ("reinstall ditaccel (e.g. pip install --force-reinstall ditaccel, or git checkout the file in a "
              "source tree) or regenerate the weights with `python scripts/train_fidelity.py`")


class WeightsFileError(ValueError):
    """A fidelity-weights file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"fidelity weights {self.path}: {problem}")


class WeightsChecksumError(WeightsFileError):
    """The shipped weights do not match their recorded SHA-256 (corrupt or modified)."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(path, f"SHA-256 {actual} does not match the recorded {expected} "
                               f"({WEIGHTS_SHA256_PATH.name}): the file is corrupt or was modified; {_REINSTALL}")

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
    """Write the model's weights (fp32) and its config to a safetensors file, atomically.

    Writing the shipped file (:data:`WEIGHTS_PATH`) also records its new SHA-256 in
    :data:`WEIGHTS_SHA256_PATH`.

    Raises:
        OSError: ``path`` cannot be written (a previous file there is then unchanged).
    """
    from safetensors.torch import save_file

    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()
           if k in FIDELITY_CONFIG or k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(cfg), "format": WEIGHTS_FORMAT}
    meta.update(extra_metadata or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    if _is_shipped(path):
        record_weights_checksum(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_weights_checksum(path: str | os.PathLike | None = None) -> str:
    """Record the SHA-256 of ``path`` (default: the shipped weights) in :data:`WEIGHTS_SHA256_PATH`.

    Returns the digest. Raises ``OSError`` when either file cannot be read or written.
    """
    p = Path(path) if path is not None else WEIGHTS_PATH
    digest = file_sha256(p)
    atomic_write_text(WEIGHTS_SHA256_PATH, f"{digest}  {WEIGHTS_PATH.name}\n")
    return digest


def recorded_weights_checksum() -> str:
    """The SHA-256 recorded for the shipped weights.

    Raises:
        WeightsFileError: the record is missing or not a SHA-256 (names the record and the fix).
    """
    try:
        text = WEIGHTS_SHA256_PATH.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsFileError(WEIGHTS_PATH, f"its checksum record {WEIGHTS_SHA256_PATH} is missing, so the "
                                             f"shipped weights cannot be verified; {_REINSTALL}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise WeightsFileError(WEIGHTS_PATH, f"cannot read its checksum record {WEIGHTS_SHA256_PATH} ({err}); "
                                             f"{_REINSTALL}") from err
    fields = text.split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        raise WeightsFileError(WEIGHTS_PATH, f"its checksum record {WEIGHTS_SHA256_PATH} does not start with a "
                                             f"SHA-256 (64 hex digits); {_REINSTALL}")
    return fields[0].lower()


def verify_shipped_weights(path: str | os.PathLike | None = None) -> str:
    """Check the shipped weights (default :data:`WEIGHTS_PATH`) against the recorded SHA-256.

    Returns the digest. Raises ``FileNotFoundError`` when the file is missing,
    :class:`WeightsChecksumError` (naming the file, both digests and the fix) when it differs,
    :class:`WeightsFileError` when the record is missing or malformed.
    """
    p = Path(path) if path is not None else WEIGHTS_PATH
    _require_file(p, shipped=True)
    expected = recorded_weights_checksum()
    actual = file_sha256(p)
    if actual != expected:
        raise WeightsChecksumError(p, expected, actual)
    return actual


def _is_shipped(path: str | os.PathLike) -> bool:
    try:
        return Path(path).resolve() == WEIGHTS_PATH.resolve()
    except OSError:  # pragma: no cover - unresolvable path
        return False


def _require_file(p: Path, shipped: bool) -> None:
    if p.is_file():
        return
    if p.exists():
        raise WeightsFileError(p, "not a regular file (a directory?)")
    fix = _REINSTALL if shipped else f"give an existing file, or write one with `python scripts/train_fidelity.py --out {p}`"
    raise FileNotFoundError(
        f"fidelity model weights not found at {p}. The shipped ones live in the package "
        f"(ditcompile/fidelity/weights/fidelity_wan.safetensors, regenerated by scripts/train_fidelity.py); {fix}")


def _read_weights(p: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; :class:`WeightsFileError` naming it when unreadable."""
    from safetensors import safe_open

    size = p.stat().st_size
    if size == 0:
        raise WeightsFileError(p, "the file is empty (an interrupted download or write?)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except OSError:
        raise
    except Exception as err:  # safetensors' own error types differ between releases
        raise WeightsFileError(p, f"not a valid safetensors file ({size} bytes; truncated or corrupt?): "
                                  f"{type(err).__name__}: {err}") from err
    return meta, state


def _config_from(p: Path, meta: dict[str, str]) -> dict[str, Any]:
    if "format" in meta and meta["format"] != WEIGHTS_FORMAT:
        raise WeightsFileError(p, f"format {meta['format']!r} is not {WEIGHTS_FORMAT!r}")
    if "config" not in meta:
        return {}
    try:
        cfg = json.loads(meta["config"])
    except json.JSONDecodeError as err:
        raise WeightsFileError(p, f"its 'config' metadata is not JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise WeightsFileError(p, f"its 'config' metadata is a {type(cfg).__name__}, not a JSON object")
    for key, value in cfg.items():  # each value of the kind FIDELITY_CONFIG holds, numbers finite
        default = FIDELITY_CONFIG.get(key)
        if default is None:
            continue  # an unknown key: build_fidelity_model names it
        if isinstance(default, tuple):
            ok = isinstance(value, list) and len(value) == len(default) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise WeightsFileError(p, f"its 'config' metadata has {key}={value!r}; expected a value like "
                                      f"{list(default) if isinstance(default, tuple) else default!r}")
    return cfg


def load_fidelity_model(path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32):
    """The trained fidelity model (eval mode), from ``path`` or the weights shipped in the package.

    The shipped weights (``path`` None or :data:`WEIGHTS_PATH`) are first checked against their
    recorded SHA-256; a file of yours has nothing to compare with and is not.

    Raises:
        FileNotFoundError: the file does not exist (the message says how to get it).
        WeightsChecksumError: the shipped file differs from its recorded SHA-256.
        WeightsFileError: the file is empty, not a safetensors file (truncated, corrupt), has a bad
            config, or its tensors do not fit the fidelity architecture (missing, unexpected or
            wrongly shaped); the message names the file and the problem.
    """
    p = Path(path) if path is not None else WEIGHTS_PATH
    shipped = path is None or _is_shipped(p)
    if shipped:
        verify_shipped_weights(p)
    else:
        _require_file(p, shipped=False)
    meta, state = _read_weights(p)
    cfg = _config_from(p, meta)
    try:
        model = build_fidelity_model(**cfg)
    except ImportError:
        raise
    except Exception as err:
        raise WeightsFileError(p, f"its config metadata does not build a fidelity model: "
                                  f"{type(err).__name__}: {err}") from err
    bad = [k for k, v in state.items() if not v.is_floating_point()]
    if bad:
        raise WeightsFileError(p, f"tensors {bad[:5]} are not floating point")
    state = {k: v.to(torch.float32) for k, v in state.items()}  # stored fp32 (or fp16): cast back
    non_finite = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if non_finite:
        raise WeightsFileError(p, f"tensors {non_finite[:5]} hold NaN or infinite values "
                                  f"({len(non_finite)} such tensors; a diverged training run or a corrupt file?)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsFileError(p, f"does not match the fidelity architecture: {len(missing)} tensors missing "
                                  f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    shapes = [f"{k}: {tuple(state[k].shape)} instead of {tuple(v.shape)}" for k, v in expected.items()
              if state[k].shape != v.shape]
    if shapes:
        raise WeightsFileError(p, f"tensors have the wrong shape for the fidelity architecture: {shapes[:3]}")
    model.load_state_dict(state)
    model = model.to(device)
    if dtype != torch.float32:
        cast_keeping_fp32_modules(model, dtype)
    return model.eval()


def compute_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and the dtype most of ``model``'s parameter elements have (the dtype its inputs
    take: with float32-kept modules, the first parameter may not have it)."""
    counts: dict[torch.dtype, int] = {}
    device = None
    for p in model.parameters():
        device = device or p.device
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if device is None:
        raise ValueError("the model has no parameters")
    return device, max(counts, key=counts.get) if counts else torch.float32


def cast_keeping_fp32_modules(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast ``model``'s floating-point parameters and buffers to ``dtype`` in place, except those
    of the modules diffusers keeps in float32 (``_keep_in_fp32_modules``: Wan's time embedder,
    norms, scale-shift tables, rope), as ``from_pretrained(torch_dtype=...)`` does -- without
    ``ModelMixin.to(dtype)``'s warning about exactly that."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for kind in ("_parameters", "_buffers"):
                for name, tensor in getattr(module, kind).items():
                    full = f"{module_name}.{name}" if module_name else name
                    if tensor is None or not tensor.is_floating_point() or any(k in full for k in keep):
                        continue
                    if kind == "_parameters":
                        tensor.data = tensor.data.to(dtype)
                    else:
                        module._buffers[name] = tensor.to(dtype)


def training_metadata(path: str | os.PathLike | None = None) -> dict[str, str]:
    """The metadata stored with the weights (config, training steps, final loss, ...).

    Raises ``FileNotFoundError`` or :class:`WeightsFileError` (naming the file) as
    :func:`load_fidelity_model` does; the checksum is not checked.
    """
    from safetensors import safe_open

    p = Path(path) if path is not None else WEIGHTS_PATH
    _require_file(p, shipped=path is None or _is_shipped(p))
    if p.stat().st_size == 0:
        raise WeightsFileError(p, "the file is empty (an interrupted download or write?)")
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except OSError:
        raise
    except Exception as err:
        raise WeightsFileError(p, f"not a valid safetensors file (truncated or corrupt?): "
                                  f"{type(err).__name__}: {err}") from err


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
    dev, dtype = compute_device_dtype(model)
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
