"""Typed configuration of the backend: frozen dataclasses, TOML presets, clear errors.

`resolve_config(options)` accepts what `torch.compile(..., options=...)` passes through:

    None                               defaults (every pass with its defaults)
    "wan2.1"                           a preset shipped in ditcompile/config/presets/
    "/path/my.toml"                    a TOML file with the same layout as a preset
    {"preset": "wan2.1", "compiler": "eager", "attention": {"skip": ["blocks.0.*"]},
     "graph.token_grid": [1, 64, 64]}  a dict: nested sections and/or dotted keys
    DitConfig(...)                     a config object

Layers apply in order: defaults < preset < dict entries. Unknown keys and bad values raise
`ConfigError` naming the key and what would be accepted.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Optional

from .errors import ConfigError
from .fields import build
from .preset_files import PRESET_DIR, available_presets, load_preset, preset_metadata
from .sections import DitConfig


# ----------------------------------------------------------------------------- resolve


def resolve_config(options: Any = None) -> DitConfig:
    """The `DitConfig` of `options` (see the module docstring), every value checked.

    Dict entries merge into the preset key by key, tables included: `{"preset": "wan2.1",
    "sparse.radial.decay_factor": 0.3}` keeps the preset's other radial parameters; a parameter
    dataclass given as a table (`{"sparse.radial": RadialParams(...)}`) is the whole table, its
    defaults included. Raises ConfigError naming the key and what would be accepted."""
    if options is None:
        return DitConfig()
    if isinstance(options, DitConfig):
        return options  # checked when it was built (DitConfig.__post_init__)
    if isinstance(options, (str, os.PathLike)):
        options = {"preset": os.fspath(options)}
    if not isinstance(options, Mapping):
        raise ConfigError(f"options must be a preset name, a TOML path, a dict or a DitConfig; "
                          f"got {type(options).__name__}")
    merged: dict = {}
    preset = options.get("preset")
    if preset is not None:
        if not isinstance(preset, (str, os.PathLike)):
            raise ConfigError(f"options['preset'] must be a preset name or TOML path, got {preset!r}")
        preset = os.fspath(preset)
        _merge(merged, load_preset(preset))
        merged["preset"] = preset
    for key, value in options.items():
        if key == "preset":
            continue
        if not isinstance(key, str):
            raise ConfigError(f"option keys must be strings, got {key!r}")
        _merge(merged, _unflatten(key, value))
    return build(DitConfig, merged)


def check_options(options: Any = None) -> DitConfig:
    """Validate `options` -- what `torch.compile(..., backend="ditaccel", options=...)` takes --
    before the first call, and return the `DitConfig` the backend will use.

    Raises ConfigError (a ValueError) naming the key and the accepted values; the backend raises
    the same error, wrapped by Dynamo, at the first call."""
    return resolve_config(options)


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
    """Deep merge: a dict value merges into the dict already there (a section, a policy's table,
    Inductor patches); anything else replaces it. Values are copied, never aliased."""
    for key, value in update.items():
        if isinstance(key, str) and "." in key:  # a dotted key inside a table ("sparse.enabled" = true in TOML)
            _merge(into, _unflatten(key, value))
            continue
        if isinstance(value, Mapping):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def config_to_dict(config: DitConfig) -> dict:
    """Plain nested dict (JSON-ready) of a config, in the form `resolve_config` accepts:
    `resolve_config(config_to_dict(c)) == c`. Policy parameters appear as their tables
    (`{"sparse": {"radial": {...}}}`), Inductor patches as a dict."""
    return _section_dict(config)


def config_label(config: DitConfig) -> str:
    """The options of `config` that differ from the defaults (of its preset, if any), flattened
    ("preset=wan2.1, sparse.dense_steps=1"; "defaults" when none): a short name for a compiled
    callable's config in reports."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict) and value:
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out
    default, mine = flat(config_to_dict(_default_config(config.preset))), flat(config_to_dict(config))
    changed = [f"{key}={value}" for key, value in mine.items() if default.get(key, object()) != value]
    if config.preset:
        changed.insert(0, f"preset={config.preset}")
    return ", ".join(changed) or "defaults"


@functools.lru_cache(maxsize=16)
def _default_config(preset: Optional[str]) -> DitConfig:
    return resolve_config({"preset": preset} if preset else None)


def _section_dict(section: Any) -> dict:
    out: dict = {}
    for fld in dataclasses.fields(section):
        value = getattr(section, fld.name)
        if "tables" in fld.metadata:  # (name, params dataclass) pairs -> one table per name
            out.update({name: dataclasses.asdict(params) for name, params in value})
        elif dataclasses.is_dataclass(value):
            out[fld.name] = _section_dict(value)
        elif fld.name == "inductor":
            out[fld.name] = dict(value)
        else:
            out[fld.name] = list(value) if isinstance(value, tuple) else value
    return out


__all__ = ["available_presets", "load_preset", "preset_metadata", "resolve_config", "check_options", "config_to_dict",
           "config_label", "PRESET_DIR"]
