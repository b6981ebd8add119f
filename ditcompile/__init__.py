"""ditaccel: a torch.compile backend for Diffusion Transformers.

    pipe.transformer = torch.compile(pipe.transformer, backend="ditaccel",
                                     options={"preset": "wan2.1"})

The backend is registered through an entry point, so importing this package is optional.
"""
from .backend import ditaccel_backend
from .config import ConfigError, DitConfig, available_presets, resolve_config
from .explain import explain
from .runtime.state import generation, new_generation
from .runtime.sparse import sparse_stats
from .runtime.step_cache import cache_report, cache_stats

__version__ = "0.1.0"
__all__ = ["ditaccel_backend", "explain", "resolve_config", "DitConfig", "ConfigError", "available_presets",
           "new_generation", "generation", "cache_stats", "cache_report", "sparse_stats"]
