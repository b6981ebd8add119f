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
    inductor  a dict of torch._inductor.config settings (dotted for sub-settings) to values of
              the type torch declares for each
    preset    a shipped preset name or a .toml path

Numbers are always finite (NaN and infinities are refused); bools are never numbers.
Every error is a `ConfigError` naming the dotted key, what was given and what is accepted.
"""
from __future__ import annotations

import collections.abc
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
        if not _finite(value):
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
    setting of torch._inductor.config (sub-settings by dotted key, "triton.cudagraphs", or a
    nested dict) and each value must fit the setting's declared type (its current value's type
    where torch declares none); numbers are finite. Lists and sets are stored as tuples and
    frozensets; `inductor_patch_dict` gives them back as the setting's type."""
    value = _pairs_to_dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"option {name!r} must be a dict of Inductor config keys, got {value!r}")
    if not value:
        return ()
    from torch._inductor import config as inductor_config  # third-party, only when patches are given

    settings = _inductor_settings(inductor_config)
    out: dict = {}
    for key, patch in _flatten_inductor(name, value, settings).items():
        where = f"option '{name}.{key}'"
        if key not in settings:
            if any(other.startswith(key + ".") for other in settings):
                raise ConfigError(f"{where} is a group of Inductor settings; set its keys ('{name}.{key}.<setting>')")
            close = difflib.get_close_matches(key, list(settings), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"option {name!r}: {key!r} is not a setting of torch._inductor.config.{hint} "
                              "(e.g. 'max_autotune', 'coordinate_descent_tuning', 'triton.cudagraphs')")
        declared, current = settings[key]
        if isinstance(patch, numbers.Real) and not isinstance(patch, bool) and not _finite(patch):
            raise ConfigError(f"{where} must be a finite number, got {patch!r}")
        if isinstance(patch, Mapping) or isinstance(current, Mapping):
            raise ConfigError(f"{where}: dict-valued Inductor settings cannot be given as options; use "
                              "torch._inductor.config.patch(...) around the first call")
        if not _fits(patch, declared, current):
            expected = declared if declared is not None else type(current).__name__
            raise ConfigError(f"{where} must be {_type_text(expected)} (the setting's type), got {patch!r}")
        if isinstance(patch, (list, tuple, set, frozenset)):
            try:
                patch = frozenset(patch) if isinstance(current, (set, frozenset)) else tuple(patch)
                hash(patch)
            except TypeError:
                raise ConfigError(f"{where}: the items of {patch!r} must be plain values (strings, numbers)") from None
        out[key] = patch
    return tuple(sorted(out.items()))


def inductor_patch_dict(patches: tuple[tuple[str, Any], ...]) -> dict:
    """The `inductor` option as the dict `torch._inductor.config.patch` takes (tuples and
    frozensets back to the list or set the setting holds)."""
    return {key: list(v) if isinstance(v, tuple) else set(v) if isinstance(v, frozenset) else v
            for key, v in patches}


def _inductor_settings(module: Any) -> dict:
    """setting name -> (declared type or None, current value), from torch's config registry."""
    entries = getattr(module, "_config", None)
    values = module.get_config_copy()
    if isinstance(entries, dict):
        return {k: (getattr(entries.get(k), "value_type", None), v) for k, v in values.items()}
    return {k: (None, v) for k, v in values.items()}


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _fits(value: Any, declared: Any, current: Any) -> bool:
    """True when `value` may be given to a setting of type `declared` (a typing form, or None:
    then the type of its `current` value, anything when that is None)."""
    if declared is None:
        if current is None:
            return True
        declared = type(current)
    options = typing.get_args(declared) if typing.get_origin(declared) in (typing.Union, _UNION) else (declared,)
    return any(_fits_one(value, option) for option in options)


_UNION = type(int | None)


def _fits_one(value: Any, option: Any) -> bool:
    origin = typing.get_origin(option) or option
    if option is type(None):
        return value is None
    if option is Any or isinstance(option, typing.TypeVar):
        return True
    if origin is typing.Literal:
        return value in typing.get_args(option)
    if option is bool:
        return isinstance(value, bool)
    if option is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if option is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin in (list, tuple, set, frozenset):
        return isinstance(value, (list, tuple, set, frozenset))
    if origin is collections.abc.Callable:
        return callable(value)
    if isinstance(origin, type):
        return isinstance(value, origin)
    return True  # a typing form this check does not know: Inductor will judge


def _type_text(declared: Any) -> str:
    text = getattr(declared, "__name__", None) if isinstance(declared, type) else None
    return text or str(declared).replace("typing.", "")


def _flatten_inductor(name: str, value: Mapping, settings: dict, prefix: str = "") -> dict:
    """{"triton": {"cudagraphs": False}} (what a dotted option key or a TOML sub-table gives) ->
    {"triton.cudagraphs": False}: Inductor's sub-configs are set by dotted keys. A dict given to
    a real setting stays a value (and is refused)."""
    out: dict = {}
    for key, patch in value.items():
        if not isinstance(key, str):
            raise ConfigError(f"option {name!r}: keys must be strings, got {key!r}")
        if isinstance(patch, Mapping) and prefix + key not in settings:
            out.update(_flatten_inductor(name, patch, settings, f"{prefix}{key}."))
        else:
            out[prefix + key] = patch
    return out


def _pairs_to_dict(value: Any) -> Any:
    """A list or tuple of (key, value) pairs as a dict; anything else unchanged."""
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return dict((k, v) for k, v in value)
    return value


__all__ = ["check_section", "check_value", "build", "inductor_patch_dict"]
