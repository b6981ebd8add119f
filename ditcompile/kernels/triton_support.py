"""Triton when it is installed, else a stand-in that keeps the kernel modules importable.

Triton is optional: the CPU build of torch does not bring it, and every kernel has a pure-torch
reference that runs on the CPU. Kernel modules import `triton` and `tl` from here; without
Triton, `@triton.jit` functions become `MissingKernel`s that raise a clear error when launched,
and `HAVE_TRITON` is False, which the ops read to choose the reference instead.
"""
from __future__ import annotations

from typing import Any, Callable

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # optional dependency
    HAVE_TRITON = False

    class MissingKernel:
        """A `@triton.jit` function on a machine without Triton."""

        def __init__(self, fn: Callable) -> None:
            self.__name__ = getattr(fn, "__name__", "kernel")

        def __getitem__(self, grid: Any) -> Callable:
            raise RuntimeError(f"Triton kernel {self.__name__} needs triton (pip install 'ditaccel[triton]'); "
                               "on the CPU the torch reference runs instead")

    class _NoTriton:
        @staticmethod
        def jit(fn: Callable) -> MissingKernel:
            return MissingKernel(fn)

    triton = _NoTriton()  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

__all__ = ["HAVE_TRITON", "triton", "tl"]
