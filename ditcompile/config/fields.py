"""Checking one option value against its field: the whole validation of the configuration.

Every section dataclass (`sections.py`) calls `check_section(self)` in `__post_init__`, so a
config built from a dict, a TOML preset, `dataclasses.replace` or `DitConfig(...)` directly is
checked the same way. A field's metadata says what it accepts:

    choices   accepted strings (a tuple, or a registry whose keys are read at check time)
    min, max  inclusive bounds of a number, or of each item of a list
    multiple  an int (or each int of a list) must be a multiple of this
    length    a list must have exactly this many items
    regex     each string of the list is a regular expression (re.fullmatch)
    module    a dotted module path ("condition_embedder.time_proj") or empty
    tables    a registry: the field holds one parameter dataclass per entry, set through
              keys named after the entries (`sparse.radial = {...}`)
    inductor  a dict of torch._inductor.config keys to values of the same type
    preset    a shipped preset name or a .toml path

Numbers are always finite (NaN and infinities are refused); bools are never numbers.
Every error is a `ConfigError` naming the dotted key, what was given and what is accepted.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from typing import Any, Mapping

from ..masks import parse_params
from .errors import ConfigError
from .preset_files import preset_path

_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.\w+)*")


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def check_section(section: Any) -> None:
    """Check and normalise (lists -> tuples, ints -> floats, tables -> sorted pairs) every field
    of a section dataclass in place; ConfigError naming `<prefix><field>` otherwise."""
    prefix = type(section).PREFIX
    for fld, hint in _fields(type(section)):
        value = getattr(section, fld.name)
        checked = check_value(prefix + fld.name, value, hint, fld)
        if checked is not value:
            object.__setattr__(section, fld.name, checked)


def build(cls: type, data: Mapping) -> Any:
    """`cls(**data)` where `data` may hold, instead of a table field, one key per registry entry
    (e.g. `radial` for `SparseConfig.policy_params`); unknown keys raise ConfigError with the
    accepted keys and the closest match."""
    prefix = cls.PREFIX
    fields = {f.name: f for f, _ in _fields(cls)}
    tables = {name: f for f in fields.values() for name in f.metadata.get("tables", ())}
    kwargs: dict = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"option keys must be strings, got {key!r} in {prefix[:-1] or 'options'}")
        if key in tables:
            kwargs.setdefault(tables[key].name, {})[key] = value
            continue
        if key not in fields or "tables" in fields[key].metadata:
            accepted = sorted([k for k, f in fields.items() if "tables" not in f.metadata] + list(tables))
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
            where = f"section {prefix[:-1]!r}" if prefix else "options"
            raise ConfigError(f"unknown option {prefix + key!r}.{hint} Accepted keys in {where}: {accepted}")
        kwargs[key] = value
    return cls(**kwargs)


def check_value(name: str, value: Any, hint: Any, fld: dataclasses.Field) -> Any:
    """`value` checked against field `fld` of type `hint`, normalised; ConfigError otherwise."""
    meta = fld.metadata
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if "tables" in meta:
        return _tables(name, value, meta["tables"])
    if "inductor" in meta:
        return _inductor_patches(name, value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"option {name!r} is a section; give a dict of its keys, got {value!r}")
        return build(hint, value)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return check_value(name, value, inner, fld)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"option {name!r} must be a list, got {value!r}")
        if "length" in meta and len(value) != meta["length"]:
            raise ConfigError(f"option {name!r} must be a list of {meta['length']} values, got {list(value)!r}")
        items = tuple(_scalar(f"{name}[{i}]", item, args[0], meta) for i, item in enumerate(value))
        if meta.get("regex"):
            _check_regexes(name, items)
        return value if items == value and type(value) is tuple else items
    return _scalar(name, value, hint, meta)


def _scalar(name: str, value: Any, hint: Any, meta: Mapping) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option {name!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"option {name!r} must be an integer, got {value!r}")
        _check_bounds(name, value, meta)
        multiple = meta.get("multiple")
        if multiple and value % multiple:
            raise ConfigError(f"option {name!r} must be a multiple of {multiple}, got {value!r}"
                              f" (e.g. {max(multiple, value // multiple * multiple)} or "
                              f"{(value // multiple + 1) * multiple})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"option {name!r} must be a finite number, got {value!r}")
        _check_bounds(name, value, meta)
        return value if type(value) is float else float(value)
    if hint is str:
        choices = meta.get("choices")
        if not isinstance(value, str) or (choices and value not in choices):
            accepted = f"one of {list(choices)}" if choices else "a string"
            raise ConfigError(f"option {name!r} must be {accepted}, got {value!r}")
        if meta.get("module") and value and not _MODULE_PATH.fullmatch(value):
            raise ConfigError(f"option {name!r} must be a dotted module path such as "
                              f"'condition_embedder.time_proj' (or empty), got {value!r}")
        if meta.get("preset"):
            preset_path(value)  # raises ConfigError naming the presets
        return value
    raise ConfigError(f"option {name!r}: unsupported type {hint}")  # a schema bug, not user input


def _check_bounds(name: str, value: float, meta: Mapping) -> None:
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"option {name!r} must be {bounds}, got {value!r}")


def _check_regexes(name: str, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"option {name!r}: {pattern!r} is not a valid regular expression ({err})") from err


def _tables(name: str, value: Any, registry: Mapping) -> tuple[tuple[str, Any], ...]:
    """(entry name, its params dataclass) pairs, sorted, from a dict or pairs of tables/dataclasses."""
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a dict of {sorted(registry)} tables, got {value!r}")
    prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
    out = []
    for key, table in value.items():
        if key not in registry:
            raise ConfigError(f"unknown option {prefix}{key!r}; tables accepted here: {sorted(registry)}")
        policy = registry[key]
        if not isinstance(table, policy.params):
            if not isinstance(table, Mapping) or not all(isinstance(k, str) for k in table):
                raise ConfigError(f"option '{prefix}{key}' must be a dict of parameter names to values, got {table!r}")
            try:
                table = parse_params(policy, table)
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err)) from err
        out.append((key, table))
    return tuple(sorted(out, key=lambda pair: pair[0]))


def _inductor_patches(name: str, value: Any) -> tuple[tuple[str, Any], ...]:
    """Sorted (key, value) pairs of torch._inductor.config patches; each key must exist and each
    value must have the type of the key's current value (bool, int, float or str)."""
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a dict of Inductor config keys, got {value!r}")
    if not value:
        return ()
    from torch._inductor import config as inductor_config  # third-party, only when patches are given

    for key, patch in value.items():
        found, current = _inductor_value(inductor_config, key) if isinstance(key, str) else (False, None)
        if not found:
            raise ConfigError(f"option {name!r}: {key!r} is not a key of torch._inductor.config "
                              "(e.g. 'max_autotune', 'coordinate_descent_tuning', 'triton.cudagraphs')")
        kind = _kind(current)
        if kind is not None and patch is not None and _kind(patch) != kind and not (kind == "a number"
                                                                                    and _kind(patch) == "an integer"):
            raise ConfigError(f"option '{name}.{key}' must be {kind} (like its current value {current!r}), "
                              f"got {patch!r}")
        if kind == "a number" and patch is not None and not math.isfinite(patch):
            raise ConfigError(f"option '{name}.{key}' must be a finite number, got {patch!r}")
    return tuple(sorted(value.items()))


def _kind(value: Any) -> Any:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return None


def _inductor_value(module: Any, dotted: str) -> tuple[bool, Any]:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


__all__ = ["check_section", "check_value", "build"]
