"""Typed configuration of the backend.

    sections.py   one frozen dataclass per feature (graph, attention, sparse, cache) and DitConfig
    loader.py     resolve_config: defaults < preset TOML < dict entries (nested or dotted keys),
                  every value checked; presets/*.toml (one per model family)
"""
from .loader import PRESET_DIR, available_presets, config_label, config_to_dict, load_preset, preset_metadata, resolve_config
from .sections import SECTIONS, AttentionConfig, CacheConfig, ConfigError, DitConfig, GraphConfig, SparseConfig

__all__ = ["ConfigError", "DitConfig", "GraphConfig", "AttentionConfig", "SparseConfig", "CacheConfig", "SECTIONS",
           "PRESET_DIR", "available_presets", "config_label", "config_to_dict", "load_preset", "preset_metadata", "resolve_config"]
