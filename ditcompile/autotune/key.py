"""What a tuning result is keyed by: the kernel, the device, and bucketed shapes.

Shapes are bucketed (sequence lengths in quarter-octave steps, `length_bucket`; the in-memory
kernel-config table uses powers of two) so that a model run at many resolutions adds a bounded
number of entries, and a symbolic size at compile time does not
matter: the key is built at run time, inside the op, from the real tensors.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


bucket = next_power_of_2
"""The power-of-two ceiling of a length (tile caps; the in-memory kernel-config table)."""


def length_bucket(n: int) -> int:
    """The bucket of a sequence length in a persistent tuning key: the next value of the form
    m * 2**e with m in {4, 5, 6, 7} (quarter-octave steps: 32760 -> 32768, 44776 -> 49152,
    4608 -> 5120), so a model run at many resolutions adds at most four entries per doubling of
    the length, and two lengths that share an entry differ by less than 25%. Exact below 8."""
    n = max(int(n), 1)
    if n < 8:
        return n
    e = n.bit_length() - 3  # n in [4 * 2**e, 8 * 2**e)
    m = -(-n // (1 << e))   # ceil(n / 2**e), in 4..8
    return m << e


def density_bucket(density: float) -> float:
    """The bucket of a block-sparse mask's density (computed tiles / all tiles) in a tuning key:
    the power of two at or above it (1, 0.5, 0.25, ... down to 1/64), since a kernel's best
    choice changes with the order of magnitude of the work, not its last percent."""
    d = min(max(float(density), 1.0 / 64), 1.0)
    step = 1.0
    while step / 2 >= d:
        step /= 2
    return step


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

    def to_str(self) -> str:
        """Canonical JSON of the key (the persistent cache's entry name)."""
        return json.dumps([self.kernel, self.device, [list(f) for f in self.fields]], separators=(",", ":"))

    @classmethod
    def from_str(cls, text: str) -> "TuneKey":
        """The key `to_str` wrote; ValueError for anything else."""
        try:
            kernel, device, fields = json.loads(text)
            return cls(str(kernel), str(device), tuple((str(k), _hashable(v)) for k, v in fields))
        except (TypeError, ValueError) as err:
            raise ValueError(f"not a tuning key: {text[:80]!r}") from err

    @classmethod
    def make(cls, kernel: str, device: torch.device | str, **fields: Any) -> "TuneKey":
        return cls(kernel, device_name(device), tuple(sorted((k, str(v) if isinstance(v, torch.dtype) else v)
                                                             for k, v in fields.items())))


def _hashable(value: Any) -> Any:
    """JSON lists back to tuples (a key's field values must hash)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value
