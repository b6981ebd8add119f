"""Kernel choice by measurement (a leaf package: torch and the standard library only).

    key.py     TuneKey (kernel, device name, bucketed shape fields), bucket(), next_power_of_2()
    cache.py   TuneCache (bounded, thread-safe; in memory until the autotuner issue persists it),
               default_cache(), clear_tuning_cache()
    tuner.py   TuneSettings (explicit settings, no environment variables), pick_fastest(), tuned()
    timing.py  cuda_median_ms (CUDA events, warm-up, median)

Kernel launchers declare their own config space beside the kernel and call `tuned(...)`.
"""
from .cache import TuneCache, clear_tuning_cache, default_cache
from .key import TuneKey, bucket, device_name, next_power_of_2
from .timing import cuda_median_ms
from .tuner import TuneSettings, pick_fastest, tuned

__all__ = ["TuneCache", "TuneKey", "TuneSettings", "bucket", "clear_tuning_cache", "cuda_median_ms",
           "default_cache", "device_name", "next_power_of_2", "pick_fastest", "tuned"]
