"""Model code patterns Dynamo cannot trace, replaced by equivalents it can (issue 13, item 3).

``torch.backends.cuda.sdp_kernel(...)`` (deprecated since torch 2.3, still in Open-Sora-style
code around each attention call) is a generator-based context manager that Dynamo does not
enter: the graph breaks there and the attention inside runs eagerly, unseen by the backend.
:func:`install` replaces it -- on ``import ditcompile``, which ``torch.compile(backend="ditaccel")``
does before tracing -- with :func:`sdp_kernel`, which enables the same SDPA backends through
``torch.nn.attention.sdpa_kernel`` (traced by Dynamo) and gives the same ``FutureWarning`` when
run eagerly. Code that bound the original before ditcompile was imported (``from
torch.backends.cuda import sdp_kernel``) keeps it; :func:`uninstall` restores it.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.backends.cuda as _cuda_backends
from torch.nn.attention import SDPBackend, sdpa_kernel

_DEPRECATION = ("`torch.backends.cuda.sdp_kernel()` is deprecated. In the future, this context manager will be "
                "removed. Please see `torch.nn.attention.sdpa_kernel()` for the new context manager, with updated "
                "signature.")
_ORIGINAL: Any = getattr(_cuda_backends, "sdp_kernel", None)


def sdp_kernel(enable_flash: bool = True, enable_math: bool = True, enable_mem_efficient: bool = True,
               enable_cudnn: bool = True):
    """``torch.backends.cuda.sdp_kernel`` with the same meaning (the enabled SDPA backends for the
    ``with`` block), as ``torch.nn.attention.sdpa_kernel(backends)`` so that Dynamo traces it."""
    if not torch.compiler.is_compiling():
        warnings.warn(_DEPRECATION, FutureWarning, stacklevel=2)
    flags = ((enable_flash, SDPBackend.FLASH_ATTENTION), (enable_mem_efficient, SDPBackend.EFFICIENT_ATTENTION),
             (enable_math, SDPBackend.MATH), (enable_cudnn, SDPBackend.CUDNN_ATTENTION))
    return sdpa_kernel([backend for enabled, backend in flags if enabled])


def install() -> bool:
    """Put :func:`sdp_kernel` in place of torch's (idempotent). False when this torch has none."""
    if _ORIGINAL is None:
        return False
    _cuda_backends.sdp_kernel = sdp_kernel
    return True


def uninstall() -> None:
    """Restore torch's own ``torch.backends.cuda.sdp_kernel``."""
    if _ORIGINAL is not None:
        _cuda_backends.sdp_kernel = _ORIGINAL


__all__ = ["sdp_kernel", "install", "uninstall"]
