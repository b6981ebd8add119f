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
import numbers
import os
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
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # int, numpy integers
            raise ConfigError(f"option {name!r} must be an integer, got {value!r}")
        value = int(value)
        _check_bounds(name, value, meta)
        multiple = meta.get("multiple")
        if multiple and value % multiple:
            raise ConfigError(f"option {name!r} must be a multiple of {multiple}, got {value!r}"
                              f" (e.g. {max(multiple, value // multiple * multiple)} or "
                              f"{(value // multiple + 1) * multiple})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # int, float, numpy scalars
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"option {name!r} must be a finite number, got {value!r}")
        _check_bounds(name, value, meta)
        return value if type(value) is float else float(value)
    if hint is str:
        if meta.get("preset") and isinstance(value, os.PathLike):
            value = os.fspath(value)
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
    value = _pairs_to_dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a dict of {sorted(registry)} tables, got {value!r}")
    prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
    out = []
    for key, table in value.items():
        if key not in registry:
            raise ConfigError(f"unknown option {prefix}{key!r}; tables accepted here: {sorted(registry)}")
        policy = registry[key]
        if not isinstance(table, policy.params):
            if dataclasses.is_dataclass(table):
                raise ConfigError(f"option '{prefix}{key}' must be a {policy.params.__name__} (or a dict of its "
                                  f"parameters), got a {type(table).__name__}")
            if not isinstance(table, Mapping) or not all(isinstance(k, str) for k in table):
                raise ConfigError(f"option '{prefix}{key}' must be a dict of parameter names to values, got {table!r}")
            try:
                table = parse_params(policy, table)
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err)) from err
        out.append((key, table))
    return tuple(sorted(out, key=lambda pair: pair[0]))


def _inductor_patches(name: str, value: Any) -> tuple[tuple[str, Any], ...]:
    """Sorted (key, value) pairs of torch._inductor.config patches, hashable: each key must be a
    setting (sub-settings by dotted key, "triton.cudagraphs", or a nested dict) and each value
    must have the type of the setting's current value (lists and sets are stored as tuples and
    frozensets; `inductor_patch_dict` gives them back as the setting's type)."""
    value = _pairs_to_dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a dict of Inductor config keys, got {value!r}")
    if not value:
        return ()
    from torch._inductor import config as inductor_config  # third-party, only when patches are given

    out: dict = {}
    for key, patch in _flatten_inductor(name, value, inductor_config).items():
        found, current = _inductor_value(inductor_config, key)
        if not found:
            raise ConfigError(f"option {name!r}: {key!r} is not a key of torch._inductor.config "
                              "(e.g. 'max_autotune', 'coordinate_descent_tuning', 'triton.cudagraphs')")
        where = f"option '{name}.{key}'"
        if _is_group(current):
            raise ConfigError(f"{where} is a group of Inductor settings; set its keys ('{name}.{key}.<setting>')")
        kind, given = _kind(current), _kind(patch)
        if kind == "a dict":
            raise ConfigError(f"{where}: dict-valued Inductor settings cannot be given as options; use "
                              "torch._inductor.config.patch(...) around the first call")
        if kind in ("a list", "a set") and given in ("a list", "a set"):
            try:
                patch = tuple(patch) if kind == "a list" else frozenset(patch)
                hash(patch)
            except TypeError:
                raise ConfigError(f"{where}: the items of {patch!r} must be plain values (strings, numbers)") from None
        elif kind is not None and (patch is not None or kind == "true or false") and given != kind and not (
                kind == "a number" and given == "an integer"):
            raise ConfigError(f"{where} must be {kind} (like its current value {current!r}), got {patch!r}")
        if kind == "a number" and patch is not None and not math.isfinite(patch):
            raise ConfigError(f"{where} must be a finite number, got {patch!r}")
        out[key] = patch
    return tuple(sorted(out.items()))


def inductor_patch_dict(patches: tuple[tuple[str, Any], ...]) -> dict:
    """The `inductor` option as the dict `torch._inductor.config.patch` takes (tuples and
    frozensets back to the list or set the setting holds)."""
    return {key: list(v) if isinstance(v, tuple) else set(v) if isinstance(v, frozenset) else v
            for key, v in patches}


def _is_group(value: Any) -> bool:
    return type(value).__name__ == "SubConfigProxy"  # torch.utils._config_module: a sub-config


def _flatten_inductor(name: str, value: Mapping, module: Any, prefix: str = "") -> dict:
    """{"triton": {"cudagraphs": False}} (what a dotted option key or a TOML sub-table gives) ->
    {"triton.cudagraphs": False}: Inductor's sub-configs are set by dotted keys. A dict given to
    a setting that is not a group stays a value (and is refused by the type check)."""
    out: dict = {}
    for key, patch in value.items():
        if not isinstance(key, str):
            raise ConfigError(f"option {name!r}: keys must be strings, got {key!r}")
        if isinstance(patch, Mapping) and _is_group(_inductor_value(module, prefix + key)[1]):
            out.update(_flatten_inductor(name, patch, module, f"{prefix}{key}."))
        else:
            out[prefix + key] = patch
    return out


def _pairs_to_dict(value: Any) -> Any:
    """A list or tuple of (key, value) pairs as a dict; anything else unchanged."""
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return dict((k, v) for k, v in value)
    return value


def _kind(value: Any) -> Any:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (set, frozenset)):
        return "a set"
    if isinstance(value, Mapping):
        return "a dict"
    return None


def _inductor_value(module: Any, dotted: str) -> tuple[bool, Any]:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


__all__ = ["check_section", "check_value", "build", "inductor_patch_dict"]
