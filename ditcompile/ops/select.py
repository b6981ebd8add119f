"""Which implementation computes attention for a plan and these inputs: the one decision.

    select_impl(q, k, v, is_causal, backend, block_sparse) -> ImplChoice

    backend "sdpa", dense                      -> SDPA (every device)
    the Triton kernel can run these inputs     -> the kernel on CUDA; on the CPU its pure-torch
                                                  reference (same function, same int8 emulation)
    it cannot (causal, dtype, head dim, ...)   -> dense: SDPA; block-sparse on CUDA: the reference
                                                  (slow); `fallback` says why, and the caller
                                                  logs it once per site and reason (`warn_once`)

Kept apart from the op and the executors so that the choice is made, tested and changed in one
place. Its choice is the default of `ops/tunables.run_tuned`, which the tuning cache can override.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..kernels.attention.flash_fwd import unsupported_reason

log = logging.getLogger("ditcompile")

SDPA = "sdpa"            # torch.nn.functional.scaled_dot_product_attention
TRITON = "triton"        # kernels.attention.flash_fwd.sparse_flash_attention (CUDA)
REFERENCE = "reference"  # kernels.attention.reference (pure torch; the CPU path)
IMPLS = (SDPA, TRITON, REFERENCE)


@dataclass(frozen=True)
class ImplChoice:
    impl: str                 # one of IMPLS
    fallback: Optional[str]   # why the plan's kernel cannot run these inputs (None: it runs)


def select_impl(q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, backend: str, block_sparse: bool) -> ImplChoice:
    """The implementation for q/k/v (any tensor layout) under a plan's `backend` ("sdpa" or
    "triton"); `block_sparse`: the call carries a BlockSparseMask (sparse plans)."""
    if backend == SDPA and not block_sparse:
        return ImplChoice(SDPA, None)
    if block_sparse and not q.is_cuda:
        return ImplChoice(REFERENCE, None)  # the CPU runs the kernel's reference
    reason = unsupported_reason(q, k, v, is_causal)
    if reason is None:
        return ImplChoice(TRITON if q.is_cuda else REFERENCE, None)
    return ImplChoice(REFERENCE if block_sparse else SDPA, reason)


class WarnOnce:
    """Log a warning once per key (bounded: at most `limit` keys are remembered; thread-safe)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._seen: set = set()
        self._lock = threading.Lock()

    def __call__(self, key: tuple, message: str, *args: object) -> None:
        with self._lock:
            if key in self._seen:
                return
            if len(self._seen) >= self.limit:
                self._seen.clear()
            self._seen.add(key)
        log.warning(message, *args)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


warn_once = WarnOnce()


def warn_fallback(site_path: str, choice: ImplChoice) -> None:
    """Say once per site and reason that the plan's kernel does not run (no-op without a fallback)."""
    if choice.fallback is None:
        return
    if choice.impl == SDPA:
        warn_once((site_path, choice.impl, choice.fallback),
                  "ditaccel: attention at %s runs SDPA instead of the Triton kernel: %s", site_path or "?",
                  choice.fallback)
    else:
        warn_once((site_path, choice.impl, choice.fallback),
                  "ditaccel: sparse attention at %s runs the (slow) torch reference: %s", site_path or "?",
                  choice.fallback)


__all__ = ["SDPA", "TRITON", "REFERENCE", "IMPLS", "ImplChoice", "select_impl", "WarnOnce", "warn_once",
           "warn_fallback"]
