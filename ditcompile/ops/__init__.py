"""ditaccel's custom ops and the one place that runs a plan.

    attention.py     `ditaccel::attention`: schema, fake, autograd; `run_plan` (plan -> impl)
    select.py        `select_impl`: which implementation runs (SDPA, Triton kernel, reference),
                     `warn_once` / `warn_fallback`: one log line per site and fallback reason
    impl/dense.py    SDPA, the kernel runner (Triton or reference), dense plans
    impl/sparse.py   the block-sparse executor (patterns, permutations, warm-up, fidelity guard)

`clear_caches()` drops what the ops keep between calls (parsed plans, warned fallbacks).
"""
from ..plans.codec import parse_plan
from .attention import attention_op, run_plan
from .select import select_impl, warn_once


def clear_caches() -> None:
    """Forget parsed plans and already-logged fallbacks (the next fallback is logged again)."""
    parse_plan.cache_clear()
    warn_once.clear()


__all__ = ["attention_op", "run_plan", "select_impl", "warn_once", "clear_caches"]
