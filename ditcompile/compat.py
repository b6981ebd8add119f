"""Model code patterns Dynamo cannot trace, replaced by equivalents it can (issue 13, item 3),
and a trace-time context for backends (issue 16).

``torch.backends.cuda.sdp_kernel(...)`` (deprecated since torch 2.3, still in Open-Sora-style
code around each attention call) is a generator-based context manager that Dynamo does not
enter: the graph breaks there and the attention inside runs eagerly, unseen by the backend.
:func:`install` replaces it -- on ``import ditcompile``, which ``torch.compile(backend="ditaccel")``
does before tracing -- with :func:`sdp_kernel`, which enables the same SDPA backends through
``torch.nn.attention.sdpa_kernel`` (traced by Dynamo) and gives the same ``FutureWarning`` when
run eagerly. Code that bound the original before ditcompile was imported (``from
torch.backends.cuda import sdp_kernel``) keeps it; :func:`uninstall` restores it.

Trace-time context: Dynamo enters a backend's ``backend_ctx_ctor()`` around every call of the
compiled function (so around tracing too), but ``torch.compile(backend=..., options=...)``
wraps the backend in ``torch._TorchCompileWrapper``, which drops that attribute. The installed
``torch._dynamo.eval_frame.get_compiler_fn`` gives it back: when the backend function (or the
one inside torch.compile's wrapper) has ``trace_context_for(options)``, its result (a factory of
context managers, or None) becomes the ``backend_ctx_ctor``. ditaccel uses it to turn on
``capture_dynamic_output_shape_ops`` (``torch._dynamo.config.patch``, restored after each call of
the compiled function).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional

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
    """Put :func:`sdp_kernel` in place of torch's and the trace-context forwarding in place of
    Dynamo's ``get_compiler_fn`` (idempotent). False when this torch has no ``sdp_kernel``."""
    install_trace_context()
    if _ORIGINAL is None:
        return False
    _cuda_backends.sdp_kernel = sdp_kernel
    return True


def uninstall() -> None:
    """Restore torch's own ``torch.backends.cuda.sdp_kernel`` and ``get_compiler_fn``."""
    if _ORIGINAL is not None:
        _cuda_backends.sdp_kernel = _ORIGINAL
    if _ORIGINAL_GET_COMPILER_FN is not None:
        _eval_frame.get_compiler_fn = _ORIGINAL_GET_COMPILER_FN


try:
    import torch._dynamo.eval_frame as _eval_frame
    _ORIGINAL_GET_COMPILER_FN: Any = getattr(_eval_frame, "get_compiler_fn", None)
except Exception:  # noqa: BLE001 -- a torch without Dynamo: nothing to forward
    _eval_frame, _ORIGINAL_GET_COMPILER_FN = None, None


def trace_context_of(compiler_fn: Any) -> Optional[Callable[[], Any]]:
    """The trace-time context factory of a backend as `torch.compile` or `torch._dynamo.optimize`
    hands it to Dynamo: the backend itself, a registered name, or torch.compile's wrapper
    (``compiler_fn`` + ``kwargs["options"]``). None when it declares none or its options are bad
    (the backend raises about them when it is called)."""
    options = None
    inner = compiler_fn
    if hasattr(compiler_fn, "compiler_fn") and isinstance(getattr(compiler_fn, "kwargs", None), dict):
        inner, options = compiler_fn.compiler_fn, compiler_fn.kwargs.get("options")
    elif isinstance(compiler_fn, str):
        try:
            from torch._dynamo.backends.registry import lookup_backend
            inner = lookup_backend(compiler_fn)
        except Exception:  # noqa: BLE001 -- an unknown name: Dynamo says so itself
            return None
    if isinstance(inner, functools.partial):  # functools.partial(ditaccel_backend, options=...)
        options = inner.keywords.get("options", options)
        inner = inner.func
    factory = getattr(inner, "trace_context_for", None)
    if not callable(factory):
        return None
    try:
        return factory(options)
    except Exception:  # noqa: BLE001 -- bad options surface when the backend runs
        return None


def _get_compiler_fn(compiler_fn: Any) -> Any:
    wrapped = _ORIGINAL_GET_COMPILER_FN(compiler_fn)
    ctor = trace_context_of(compiler_fn)
    if ctor is not None and getattr(wrapped, "backend_ctx_ctor", None) is None:
        try:
            wrapped.backend_ctx_ctor = ctor
        except AttributeError:  # a wrapper type that takes no attributes: trace as Dynamo would
            pass
    return wrapped


def install_trace_context() -> bool:
    """Install the forwarding (idempotent); False when this torch's Dynamo has no
    ``get_compiler_fn`` to wrap (backends then trace with Dynamo's defaults)."""
    if _ORIGINAL_GET_COMPILER_FN is None:
        return False
    _eval_frame.get_compiler_fn = _get_compiler_fn
    return True


__all__ = ["sdp_kernel", "install", "uninstall", "install_trace_context", "trace_context_of"]
