"""The table of tuning results: key -> the chosen candidate (a kernel config).

In memory for now: one `TuneCache` per process unless a caller passes its own. It is bounded
(least recently used entries go first), thread-safe, and cleared by `clear_tuning_cache()`.
The autotuner issue makes it persistent (one file per device and software stack).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Optional

from .key import TuneKey


class TuneCache:
    """Bounded, thread-safe map TuneKey -> chosen candidate."""

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[TuneKey, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: TuneKey) -> Optional[Any]:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: TuneKey, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def items(self) -> list[tuple[TuneKey, Any]]:
        with self._lock:
            return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)


_DEFAULT = TuneCache()


def default_cache() -> TuneCache:
    """The process's tuning table, used by kernels when the caller passes none."""
    return _DEFAULT


def clear_tuning_cache() -> None:
    """Forget every tuning result of this process (the next call of each shape tunes again)."""
    _DEFAULT.clear()
