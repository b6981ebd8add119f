"""The preset files: one TOML per model family in `presets/`, or a user's own TOML path.

    available_presets()   the shipped names ("wan2.1", "flux", ...)
    preset_path(name)     the file of a shipped name (case and -/_ insensitive) or a .toml path
    load_preset(name)     its settings as a nested dict ([preset] metadata removed)
    preset_metadata(name) its [preset] table (description, models, ...)

Every error is a `ConfigError` naming the preset or file and what would be accepted.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PRESET_DIR = Path(__file__).parent / "presets"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    """The TOML file of preset `name`; ConfigError naming the close matches when there is none."""
    if name.endswith(".toml") or os.sep in name or "/" in name:
        path = Path(name).expanduser()
        if path.is_dir():
            raise ConfigError(f"preset file {name!r} is a folder; give a .toml file")
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


def _read(name: str) -> dict:
    path = preset_path(name)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"preset file {path} is not valid TOML: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"preset file {path} cannot be read: {err}") from err


def load_preset(name: str) -> dict:
    """The preset's settings as a nested dict (its [preset] metadata table removed). A preset
    file cannot name another preset (`preset = "wan2.1"` at the top): ConfigError."""
    data = _read(name)
    meta = data.pop("preset", None)
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError(f"preset file {preset_path(name)}: preset = {meta!r} is not supported (a preset file cannot "
                          "build on another preset): copy that preset's tables into this file, or pass a dict "
                          f"{{'preset': {meta!r}, ...}} with your keys as options")
    return data


def preset_metadata(name: str) -> dict:
    """The [preset] table of a preset: description, models, ..."""
    meta = _read(name).get("preset", {})
    return meta if isinstance(meta, dict) else {}


__all__ = ["PRESET_DIR", "available_presets", "preset_path", "load_preset", "preset_metadata"]
