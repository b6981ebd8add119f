"""The step-cache pass (`step_cache_pass.py`) and its graph splitter (`split.py`); the runtime
that runs the pieces is `ditcompile.runtime.step_cache`, the policies `ditcompile.step_cache_policies`."""
from .split import SplitError, split_graph
from .step_cache_pass import StepCachePass

__all__ = ["StepCachePass", "SplitError", "split_graph"]
