"""ditaccel: a torch.compile backend for Diffusion Transformers.

    pipe.transformer = torch.compile(pipe.transformer, backend="ditaccel",
                                     options={"preset": "wan2.1"})

The backend is registered through an entry point, so importing this package is optional.
Importing it (which `torch.compile(backend="ditaccel")` does) puts a Dynamo-traceable
equivalent in place of the deprecated `torch.backends.cuda.sdp_kernel` (`compat`).
"""
from . import compat as _compat
from .autotune import clear_tuning_cache, reset_autotuners
from .backend import ditaccel_backend
from .config import ConfigError, DitConfig, available_presets, check_options, resolve_config
from .explain import explain
from .masks import clear_mask_cache
from .ops import clear_caches as _clear_op_caches
from .runtime.hooks import track_steps
from .runtime.state import cache_report, cache_stats, generation, new_generation, request_scope, sparse_stats

__version__ = "0.1.0"

_compat.install()


def clear_caches() -> None:
    """Free everything ditaccel keeps between calls outside a model's own state: cached sparse
    patterns (device tensors), parsed plans, in-memory kernel tuning results, the loaded tuning
    cache files (read again at the next call; the files stay) and the record of fallbacks already
    logged (each is logged again). Per-model state is reset by `new_generation(model)`."""
    clear_mask_cache()
    _clear_op_caches()
    clear_tuning_cache()
    reset_autotuners()


__all__ = ["ditaccel_backend", "explain", "check_options", "resolve_config", "DitConfig", "ConfigError", "available_presets",
           "new_generation", "generation", "request_scope", "track_steps", "cache_stats", "cache_report",
           "sparse_stats", "clear_caches"]
