"""Kernel choice by measurement (a leaf package: torch, the standard library, platformdirs and
filelock).

    key.py         TuneKey (op, device, bucketed shape fields; to_str/from_str), length_bucket(),
                   density_bucket(), bucket()/next_power_of_2()
    candidates.py  Candidate, Tunable, register_tunable(), add_candidate(), candidate_set_hash()
    tuner.py       tune_problem() (validate against the reference, then time; TuneResult);
                   TuneSettings, pick_fastest(), tuned() (the Triton launcher's kernel configs)
    store.py       TuneStore: the persistent cache, one JSON file per device and software stack
                   (platformdirs, filelock, atomic writes; foreign or corrupt files set aside)
    lookup.py      Autotuner.choose() at run time (modes offline / online / off), cached_winners()
                   (compile-time peek), record_choice(), recording()
    timing.py      median_ms (CUDA events on a GPU, wall time on the CPU)
    cache.py       TuneCache, the in-memory table of kernel configs

The ops register their tunables (`ops/tunables.py`); `ditaccel autotune` fills the cache offline.
"""
from .cache import TuneCache, clear_tuning_cache, default_cache
from .candidates import Candidate, Tunable, add_candidate, candidate_set_hash, get_tunable, register_tunable, tunables
from .key import TuneKey, bucket, density_bucket, device_name, length_bucket, next_power_of_2
from .lookup import (MODES, TUNE_COMMAND, Autotuner, Choice, Recorded, Recorder, autotuner, clear_recorded_choices,
                     is_recording, record_choice, recorded_choices, recording, reset_autotuners)
from .store import ENV_DIR, TuneStore, TuneStoreError, default_cache_dir, stack_identity
from .timing import cpu_median_ms, cuda_median_ms, median_ms
from .tuner import TuneResult, TuneSettings, pick_fastest, tune_problem, tuned, validate_candidate

__all__ = ["TuneCache", "TuneKey", "TuneSettings", "bucket", "clear_tuning_cache", "cuda_median_ms",
           "cpu_median_ms", "median_ms", "default_cache", "device_name", "next_power_of_2", "length_bucket",
           "density_bucket", "pick_fastest", "tuned", "tune_problem", "validate_candidate", "TuneResult",
           "Candidate", "Tunable", "add_candidate", "candidate_set_hash", "get_tunable", "register_tunable",
           "tunables", "MODES", "TUNE_COMMAND", "Autotuner", "Choice", "autotuner", "clear_recorded_choices",
           "record_choice", "recorded_choices", "reset_autotuners", "Recorder", "Recorded", "recording", "is_recording", "ENV_DIR", "TuneStore", "TuneStoreError",
           "default_cache_dir", "stack_identity"]
