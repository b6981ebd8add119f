"""Typed configuration of the backend: frozen dataclasses, TOML presets, clear errors.

`resolve_config(options)` accepts what `torch.compile(..., options=...)` passes through:

    None                               defaults (every pass with its defaults)
    "wan2.1"                           a preset shipped in ditcompile/presets/
    "/path/my.toml"                    a TOML file with the same layout as a preset
    {"preset": "wan2.1", "compiler": "eager", "attention": {"skip": ["blocks.0.*"]},
     "graph.token_grid": [1, 64, 64]}  a dict: nested sections and/or dotted keys
    DitConfig(...)                     a config object

Layers apply in order: defaults < preset < dict entries. Unknown keys and bad values raise
`ConfigError` naming the key and what would be accepted.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A bad `options` value: the message names the key and the accepted values."""


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass(frozen=True)
class GraphConfig:
    """Facts about the model the graph analysis cannot discover on its own."""

    token_grid: Optional[tuple[int, ...]] = field(default=None, metadata={"length": 3, "positive": True})
    """(frames, height, width) of the video tokens after patching; overrides discovery."""
    text_position: str = field(default="auto", metadata=_choices("auto", "before", "after", "none"))
    """Where text sits in joint attention; "auto" discovers it from the concatenation."""


@dataclass(frozen=True)
class AttentionConfig:
    """The attention rewrite pass: every supported site becomes `ditaccel::attention`."""

    enabled: bool = True
    skip: tuple[str, ...] = ()
    """Regular expressions (re.fullmatch) of module paths to leave untouched, e.g. "blocks\\.0\\..*"."""
    backend: str = field(default="sdpa", metadata=_choices("sdpa", "triton"))
    """Dense attention kernel on CUDA: "sdpa" (cuDNN/flash, the fastest dense here) or "triton"
    (ditaccel's flash kernel). CPU always runs the torch reference."""
    quant: str = field(default="none", metadata=_choices("none", "int8"))
    """"int8": SageAttention-style 8-bit attention (INT8 Q/K with K smoothing, FP8 P.V on sm89+);
    runs on the triton backend."""


@dataclass(frozen=True)
class SparseConfig:
    """Sparse attention on video self-attention and the video part of joint attention."""

    enabled: bool = False
    policy: str = field(default="radial", metadata=_choices("radial", "spatial_temporal", "antidiagonal", "tile"))
    """radial: Radial Attention's static energy-decay mask; spatial_temporal: Sparse VideoGen's
    per-head spatial/temporal classification; antidiagonal: XAttention's data-dependent block
    selection; tile: sliding tile attention (3-D windows)."""
    radial: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments of masks.generate_radial_mask, e.g. {"decay_factor": 0.2, "sink": true}."""
    spatial_temporal: tuple[tuple[str, Any], ...] = ()
    """frame_window, position_window, sink (masks.spatial_temporal) and num_samples,
    reclassify_every (how often heads are re-classified, in steps)."""
    antidiagonal: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments of masks.generate_antidiagonal_mask: stride, threshold."""
    tile: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments of masks.generate_tile_mask: tile_size, window."""
    block_size: int = field(default=128, metadata={"min": 16})
    """Mask block in tokens (query and key); a multiple of 16."""
    dense_steps: int = field(default=0, metadata={"min": 0})
    """Denoising steps that run dense at the start of each generation."""
    dense_blocks: tuple[int, ...] = ()
    """Indices of transformer blocks whose attention stays dense."""
    min_tokens: int = field(default=0, metadata={"min": 0})
    """Sites with fewer video tokens stay dense."""
    guard_every: int = field(default=0, metadata={"min": 0})
    """Fidelity guard: every N sparse steps compare with dense attention on sampled rows (0: off)."""
    guard_budget: float = field(default=0.05, metadata={"min": 0.0})
    """Relative L2 error above which a site runs dense for the rest of the generation."""
    guard_rows: int = field(default=64, metadata={"min": 1})

    def params_for(self, policy: str) -> dict:
        """The chosen policy's parameters as a dict (tuples back to lists for JSON)."""
        thaw = lambda v: [thaw(x) for x in v] if isinstance(v, tuple) else v  # noqa: E731
        return {k: thaw(v) for k, v in getattr(self, policy)}


@dataclass(frozen=True)
class CacheConfig:
    """Step cache: reuse the trunk's residual across denoising steps when it barely changes.

    The graph is split at block boundaries into head (embeddings + the first `compute_first`
    blocks), body (middle blocks) and tail (last `compute_last` blocks + output projection).
    """

    enabled: bool = False
    policy: str = field(default="fbcache", metadata=_choices("fbcache", "dbcache", "teacache"))
    """fbcache: relative L1 change of the first block's residual (ParaAttention / diffusers);
    dbcache: the same signal over the first `compute_first` blocks, with `compute_last` tail
    blocks, warm-up and a cap on consecutive cached steps (cache-dit); teacache: accumulated,
    polynomially rescaled relative L1 change of the first block's modulated input (TeaCache)."""
    threshold: float = field(default=0.05, metadata={"min": 0.0})
    compute_first: int = field(default=1, metadata={"min": 1})
    compute_last: int = field(default=0, metadata={"min": 0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    """Denoising steps always computed at the start of a generation."""
    max_cached_steps: int = field(default=0, metadata={"min": 0})
    """Most consecutive reused steps per branch (0: no limit)."""
    teacache_coefficients: tuple[float, ...] = ()
    """TeaCache rescaling polynomial, highest degree first; empty: no rescaling (identity)."""
    teacache_signal: str = ""
    """Module whose output is TeaCache's signal (e.g. "condition_embedder.time_proj" for Wan,
    whose coefficients were fitted on the timestep projection); empty: the first block's
    timestep-modulated input (HunyuanVideo, Flux, Mochi)."""
    taylor_order: int = field(default=0, metadata={"min": 0, "max": 2})
    """TaylorSeer: 0 reuses the cached residual; 1 or 2 extrapolates it from its history."""


@dataclass(frozen=True)
class DitConfig:
    preset: Optional[str] = None
    compiler: str = field(default="inductor", metadata=_choices("inductor", "eager"))
    """"inductor" compiles the rewritten graph; "eager" runs it as is (debugging, explain)."""
    mode: str = field(default="default", metadata=_choices(
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    """Inductor mode (torch.compile refuses `mode=` together with `options=`, so it lives here)."""
    report: bool = True
    """Log the explain report at INFO level on the 'ditcompile' logger."""
    strict: bool = False
    """Raise when the analysis or a pass fails, instead of compiling the graph unchanged."""
    inductor: tuple[tuple[str, Any], ...] = ()
    """Inductor config patches, e.g. {"max_autotune": True} (keys of torch._inductor.config)."""
    graph: GraphConfig = GraphConfig()
    attention: AttentionConfig = AttentionConfig()
    sparse: SparseConfig = SparseConfig()
    cache: CacheConfig = CacheConfig()

    def section(self, name: str) -> Any:
        return getattr(self, name)


SECTIONS = {f.name: f.type for f in dataclasses.fields(DitConfig) if dataclasses.is_dataclass(f.default)}


# ----------------------------------------------------------------------------- presets


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _preset_path(name: str) -> Path:
    if name.endswith(".toml") or os.sep in name or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"preset file {name!r} does not exist")
        return path
    wanted = name.lower().replace("-", "_")
    for stem in available_presets():
        if stem.lower().replace("-", "_") == wanted:
            return PRESET_DIR / f"{stem}.toml"
    close = difflib.get_close_matches(name, available_presets(), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ConfigError(f"unknown preset {name!r}.{hint} Available presets: {available_presets()}, "
                      "or a path to a .toml file")


def load_preset(name: str) -> dict:
    """The preset's settings as a nested dict (its [preset] metadata table removed)."""
    path = _preset_path(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"preset file {path} is not valid TOML: {err}") from err
    data.pop("preset", None)
    return data


def preset_metadata(name: str) -> dict:
    """The [preset] table of a preset: description, models, ..."""
    return tomllib.loads(_preset_path(name).read_text()).get("preset", {})


# ----------------------------------------------------------------------------- resolve


def resolve_config(options: Any = None) -> DitConfig:
    if options is None:
        return DitConfig()
    if isinstance(options, DitConfig):
        return options
    if isinstance(options, (str, os.PathLike)):
        options = {"preset": os.fspath(options)}
    if not isinstance(options, Mapping):
        raise ConfigError(f"options must be a preset name, a TOML path, a dict or a DitConfig; "
                          f"got {type(options).__name__}")
    merged: dict = {}
    preset = options.get("preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"options['preset'] must be a preset name or TOML path, got {preset!r}")
        _merge(merged, load_preset(preset))
        merged["preset"] = preset
    for key, value in options.items():
        if key == "preset":
            continue
        if not isinstance(key, str):
            raise ConfigError(f"option keys must be strings, got {key!r}")
        _merge(merged, _unflatten(key, value))
    return _build(DitConfig, merged, "")


def _unflatten(key: str, value: Any) -> dict:
    """'graph.token_grid' = v -> {'graph': {'token_grid': v}}."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"option key {key!r} is malformed (empty part between dots)")
    out: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def _merge(into: dict, update: Mapping) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict) and key in SECTIONS:
            _merge(into[key], value)
        elif isinstance(value, Mapping) and key in SECTIONS:
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def _build(cls: type, data: Mapping, prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            accepted = sorted(fields)
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
            where = f"section {prefix[:-1]!r}" if prefix else "options"
            raise ConfigError(f"unknown option {name!r}.{hint} Accepted keys in {where}: {accepted}")
        kwargs[key] = _convert(name, value, hints[key], fields[key])
    return cls(**kwargs)


def _convert(name: str, value: Any, hint: Any, fld: dataclasses.Field) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"option {name!r} is a section; give a dict of its keys, got {value!r}")
        return _build(hint, value, f"{name}.")
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _convert(name, value, inner, fld)
    if name == "inductor" or name.endswith(".inductor"):
        return _inductor_patches(name, value)
    if name.startswith("sparse.") and name.split(".", 1)[1] in _SPARSE_POLICIES:
        return _json_params(name, value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option {name!r} must be true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        return _check_bounds(name, float(value), fld)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"option {name!r} must be an integer, got {value!r}")
        return _check_bounds(name, value, fld)
    if hint is str:
        choices = fld.metadata.get("choices")
        if not isinstance(value, str) or (choices and value not in choices):
            accepted = f"one of {list(choices)}" if choices else "a string"
            raise ConfigError(f"option {name!r} must be {accepted}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"option {name!r} must be a list, got {value!r}")
        item_type = args[0]
        length = fld.metadata.get("length")
        if length is not None and len(value) != length:
            raise ConfigError(f"option {name!r} must be a list of {length} values, got {list(value)!r}")
        items = []
        for i, item in enumerate(value):
            if item_type is int and (isinstance(item, bool) or not isinstance(item, int)):
                raise ConfigError(f"option {name!r}[{i}] must be an integer, got {item!r}")
            if item_type is int and fld.metadata.get("positive") and item <= 0:
                raise ConfigError(f"option {name!r}[{i}] must be positive, got {item!r}")
            if item_type is float and (isinstance(item, bool) or not isinstance(item, (int, float))):
                raise ConfigError(f"option {name!r}[{i}] must be a number, got {item!r}")
            if item_type is float:
                item = float(item)
            if item_type is str and not isinstance(item, str):
                raise ConfigError(f"option {name!r}[{i}] must be a string, got {item!r}")
            items.append(item)
        if item_type is str and name.endswith(".skip"):
            _check_regexes(name, items)
        return tuple(items)
    raise ConfigError(f"option {name!r}: unsupported type {hint}")  # a schema bug, not user input


def _check_bounds(name: str, value: float, fld: dataclasses.Field) -> float:
    low, high = fld.metadata.get("min"), fld.metadata.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"option {name!r} must be {bounds}, got {value!r}")
    return value


def _check_regexes(name: str, patterns: list[str]) -> None:
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"option {name!r}: {pattern!r} is not a valid regular expression ({err})") from err


def _inductor_patches(name: str, value: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a dict of Inductor config keys, got {value!r}")
    from torch._inductor import config as inductor_config

    for key in value:
        if not isinstance(key, str) or not _has_inductor_key(inductor_config, key):
            raise ConfigError(f"option {name!r}: {key!r} is not a key of torch._inductor.config "
                              "(e.g. 'max_autotune', 'coordinate_descent_tuning', 'triton.cudagraphs')")
    return tuple(sorted(value.items()))


_SPARSE_POLICIES = ("radial", "spatial_temporal", "antidiagonal", "tile")


def _json_params(name: str, value: Any) -> tuple[tuple[str, Any], ...]:
    """A dict of JSON values, frozen as sorted (key, value) pairs (lists become tuples)."""
    import json

    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"option {name!r} must be a dict of parameter names to values, got {value!r}")
    try:
        json.dumps(dict(value))
    except TypeError as err:
        raise ConfigError(f"option {name!r}: values must be numbers, strings, booleans or lists ({err})") from err
    freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, list) else v  # noqa: E731
    return tuple(sorted((k, freeze(v)) for k, v in value.items()))


def _has_inductor_key(module: Any, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def config_to_dict(config: DitConfig) -> dict:
    """Plain nested dict (JSON-ready) of a config, for reports and cache keys."""
    return dataclasses.asdict(config)
