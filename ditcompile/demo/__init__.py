"""`ditaccel demo`.

* :mod:`.trained` - the main job: the shipped, trained fidelity model generates the same labelled
  videos eagerly, with ``torch.compile`` and with each ditaccel family on its own and composed;
  one table of speed and quality (:mod:`.table`), strips and GIFs (:mod:`.images`).
* :mod:`.plumbing` - ``ditaccel demo --model NAME``: a random built-in tiny model, eager vs
  ditaccel, for models without weights.
* :mod:`.variants` - the rows of the table; :mod:`.timing` - interleaved timing;
  :mod:`.devices` - device and dtype spellings.
"""
from .devices import DEVICE_PATTERN, DTYPES, DeviceUnavailableError, resolve_device, resolve_dtype, sync
from .images import write_outputs
from .plumbing import DemoResult, denoise, run_demo
from .trained import DEFAULT_LABELS, REFERENCE_NOTE, Row, TrainedDemoResult, check_labels, run_trained_demo
from .variants import VARIANT_KEYS, Variant, demo_variants, select_variants

__all__ = ["DEVICE_PATTERN", "DTYPES", "DeviceUnavailableError", "resolve_device", "resolve_dtype", "sync",
           "DemoResult", "denoise", "run_demo", "run_trained_demo", "TrainedDemoResult", "Row", "check_labels",
           "DEFAULT_LABELS", "REFERENCE_NOTE", "write_outputs", "VARIANT_KEYS", "Variant", "demo_variants",
           "select_variants"]
