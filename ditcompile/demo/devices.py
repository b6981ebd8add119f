"""Arguments shared by the demos and the CLI: device spellings (``auto``, ``cpu``, ``cuda``,
``cuda:N``), dtype names (``auto``, ``float32``, ``bfloat16``, ``float16``) and counts."""
from __future__ import annotations

import platform
import re
from typing import Any

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(?::(\d+))?")
"""The accepted device spellings (re.fullmatch): auto, cpu, cuda, cuda:N (group 1: N)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The accepted ``--dtype`` names (besides ``auto``)."""


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(device: str, hint: str = "use device='cpu'") -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; ``cpu``/``cuda``/``cuda:N`` checked.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        hint: what to do instead, appended to the error message.

    Raises:
        ValueError: any other spelling.
        DeviceUnavailableError: CUDA is not available, or ``cuda:N`` does not exist; the message
            gives the torch build and ``hint``.
    """
    match = DEVICE_PATTERN.fullmatch(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not match:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(f"CUDA is not available on this machine (torch {torch.__version__}); {hint}")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(f"CUDA device {index} does not exist: this machine has {count} "
                                     f"(cuda:0 to cuda:{count - 1}); {hint}")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on the CPU; a name of :data:`DTYPES` or a dtype.

    Raises:
        ValueError: another name or dtype, listing the accepted ones.
    """
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or auto, got {dtype}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def positive_int(name: str, value: Any) -> int:
    """``value`` when it is an int >= 1 (not a bool).

    Raises:
        ValueError: "{name} must be an integer >= 1, got {value!r}".
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's (platform.processor(), else "cpu") with its thread count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine() or 'cpu'} ({threads} thread{'' if threads == 1 else 's'})"
