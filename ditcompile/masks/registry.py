"""The one list of sparse-attention policies.

Config validation (`sparse.policy` and the `[sparse.<policy>]` tables), the plans, the executor
(`ditcompile.ops.impl.sparse`), the sparse pass, the `ditaccel masks` command and the benchmarks
all read `POLICIES`; none of them names a policy. Adding a policy: write its family file (a
params dataclass, its factories and a `Policy` object), add it to the tuple below, and test it.
"""
from __future__ import annotations

from .antidiagonal import ANTIDIAGONAL
from .policy import Policy
from .radial import RADIAL
from .spatial_temporal import SPATIAL_TEMPORAL
from .tile import TILE

POLICIES: dict[str, Policy] = {p.name: p for p in (RADIAL, SPATIAL_TEMPORAL, ANTIDIAGONAL, TILE)}


def get_policy(name: str) -> Policy:
    """The policy called `name`; ValueError listing the known policies otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown sparse policy {name!r}; known policies: {sorted(POLICIES)}") from None


def clear_mask_cache() -> None:
    """Drop every cached data-independent pattern (e.g. to free device memory)."""
    for policy in POLICIES.values():
        for cached in policy.caches:
            cached.cache_clear()


__all__ = ["POLICIES", "get_policy", "clear_mask_cache"]
