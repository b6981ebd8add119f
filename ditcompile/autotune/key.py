"""What a tuning result is keyed by: the kernel, the device, and bucketed shapes.

Shapes are bucketed (sequence lengths to the next power of two) so that a model run at many
resolutions adds a bounded number of entries, and a symbolic size at compile time does not
matter: the key is built at run time, inside the op, from the real tensors.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


bucket = next_power_of_2
"""The bucket of a length in a tuning key: lengths share a result up to the next power of two."""


def device_name(device: torch.device | str) -> str:
    """The device a tuning result is valid for: "cpu", or the GPU's name and compute capability
    ("NVIDIA H200 sm90"), so that two GPUs of the same kind share results and two kinds do not."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    return _cuda_device_name(dev.index if dev.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=64)
def _cuda_device_name(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm{major}{minor}"


@dataclass(frozen=True)
class TuneKey:
    """kernel: the tunable's name; device: `device_name(...)`; fields: sorted (name, value)
    pairs of everything else the choice depends on (dtype, layout, head dim, length buckets,
    mask block shape, ...), all hashable."""

    kernel: str
    device: str
    fields: tuple[tuple[str, Any], ...]

    @classmethod
    def make(cls, kernel: str, device: torch.device | str, **fields: Any) -> "TuneKey":
        return cls(kernel, device_name(device), tuple(sorted((k, str(v) if isinstance(v, torch.dtype) else v)
                                                             for k, v in fields.items())))
