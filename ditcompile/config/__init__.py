"""Typed configuration of the backend.

    errors.py        ConfigError
    preset_files.py  the shipped presets (presets/*.toml, one per model family) and user TOML files
    fields.py        checking one value against its field (types, ranges, multiples, finite
                     numbers, choices, policy tables, Inductor patches): all of the validation
    sections.py      one frozen dataclass per feature (graph, attention, sparse, cache) and
                     DitConfig; each checks itself in __post_init__
    loader.py        resolve_config / check_options: defaults < preset TOML < dict entries
                     (nested or dotted keys, deep-merged into the preset's tables)
"""
from .errors import ConfigError
from .fields import inductor_patch_dict
from .loader import check_options, config_label, config_to_dict, resolve_config
from .preset_files import PRESET_DIR, available_presets, load_preset, preset_metadata
from .sections import SECTIONS, AttentionConfig, AutotuneConfig, CacheConfig, DitConfig, GraphConfig, SparseConfig

__all__ = ["ConfigError", "DitConfig", "GraphConfig", "AttentionConfig", "SparseConfig", "CacheConfig", "AutotuneConfig", "SECTIONS",
           "PRESET_DIR", "available_presets", "check_options", "inductor_patch_dict", "config_label", "config_to_dict", "load_preset",
           "preset_metadata", "resolve_config"]
