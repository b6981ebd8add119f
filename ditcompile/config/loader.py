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
import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Mapping, Optional

from ..masks import parse_params
from .sections import SECTIONS, ConfigError, DitConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PRESET_DIR = Path(__file__).parent / "presets"


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
    """`cls(**data)` with every value converted and checked. A field whose metadata names a
    registry ("tables") is set through keys named after the registry's entries: each such key
    holds that entry's parameter table (e.g. `sparse.radial`), parsed by its params dataclass."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    tables = {name: f for f in fields.values() for name in f.metadata.get("tables", ())}
    hints = typing.get_type_hints(cls)
    kwargs: dict = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key in tables:
            kwargs.setdefault(tables[key].name, {})[key] = _policy_params(name, key, value, tables[key])
            continue
        if key not in fields or "tables" in fields[key].metadata:
            accepted = sorted([k for k, f in fields.items() if "tables" not in f.metadata] + list(tables))
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
            where = f"section {prefix[:-1]!r}" if prefix else "options"
            raise ConfigError(f"unknown option {name!r}.{hint} Accepted keys in {where}: {accepted}")
        kwargs[key] = _convert(name, value, hints[key], fields[key])
    for fld in {f.name for f in tables.values()}:
        if fld in kwargs:
            kwargs[fld] = tuple(sorted(kwargs[fld].items()))
    return cls(**kwargs)


def _policy_params(name: str, key: str, value: Any, fld: dataclasses.Field) -> Any:
    """The parameter dataclass of registry entry `key` from its table (a dict, or the dataclass)."""
    policy = fld.metadata["tables"][key]
    if isinstance(value, policy.params):
        return value
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"option {name!r} must be a dict of parameter names to values, got {value!r}")
    try:
        return parse_params(policy, value)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err


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
    from torch._inductor import config as inductor_config  # third-party, only when patches are given

    for key in value:
        if not isinstance(key, str) or not _has_inductor_key(inductor_config, key):
            raise ConfigError(f"option {name!r}: {key!r} is not a key of torch._inductor.config "
                              "(e.g. 'max_autotune', 'coordinate_descent_tuning', 'triton.cudagraphs')")
    return tuple(sorted(value.items()))


def _has_inductor_key(module: Any, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


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


__all__ = ["available_presets", "load_preset", "preset_metadata", "resolve_config", "config_to_dict", "config_label",
           "PRESET_DIR"]
