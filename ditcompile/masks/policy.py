"""What a sparse-attention policy is: a name, a parameter dataclass, and how it picks patterns.

A policy has two parts, either of which may be empty:

* `static_patterns(tokens, block, params, device)`: the patterns fixed by the geometry alone
  (token grid, text, block size), built once and cached by the factories -- Radial's mask,
  the tiles of STA, Sparse VideoGen's spatial and temporal patterns;
* `choose(inputs, tokens, block, params, statics)`: the data-dependent part, run on q/k at
  run time -- XAttention builds a mask per (batch, head); Sparse VideoGen assigns each head
  one of its two static patterns. Its result is reused for `refresh_steps(params)` denoising
  steps (0: recomputed at every call).

The result of both is a `PatternChoice`: which pattern each (batch, head) runs. The executor
(`ditcompile.ops.impl.sparse`) runs any choice the same way, so it never names a policy.

Parameters are frozen dataclasses that validate themselves in `__post_init__` (ValueError
naming the parameter); `parse_params` builds one from a dict of options and names unknown keys.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from ..geometry import TokenLayout
from .pattern import SparsePattern


@dataclass(frozen=True)
class PatternChoice:
    """Which pattern each (batch, head) runs.

    patterns: one or more patterns over the same sequence.
    assignment: int64 [B, H] indices into `patterns`, or None: every head runs patterns[0].
    """

    patterns: tuple[SparsePattern, ...]
    assignment: Optional[Tensor] = None

    @property
    def density(self) -> float:
        """Fraction of tiles computed, averaged over (batch, head)."""
        densities = [p.density for p in self.patterns]
        if self.assignment is None:
            return densities[0]
        per_head = torch.tensor(densities, dtype=torch.float64)[self.assignment.cpu()]  # [B, H]
        return float(per_head.mean())

    def fits(self, batch: int, heads: int) -> bool:
        """True when the choice can run inputs of this batch size and head count."""
        return self.assignment is None or tuple(self.assignment.shape) == (batch, heads)


@dataclass(frozen=True)
class ChoiceInputs:
    """What a data-dependent policy reads at run time: q/k/v in `tensor_layout` ("bhsd" or
    "bshd"), the softmax scale (None: 1/sqrt(D)) and the denoising step (None: unknown), which
    seeds any sampling so that a run is reproducible."""

    q: Tensor
    k: Tensor
    v: Tensor
    tensor_layout: str
    scale: Optional[float]
    step: Optional[int]


StaticPatterns = Callable[[TokenLayout, int, Any, Any], tuple[SparsePattern, ...]]
Choose = Callable[[ChoiceInputs, TokenLayout, int, Any, tuple[SparsePattern, ...]], PatternChoice]


@dataclass(frozen=True)
class Policy:
    """One sparse-attention policy (see the module docstring).

    name: the option value (`sparse.policy`) and the `[sparse.<name>]` table of its parameters.
    params: frozen dataclass type of its tunables; `params()` gives the defaults.
    static_patterns: (token layout, block size, params, device) -> patterns fixed by the geometry.
    choose: None for data-independent policies; else the run-time choice (see PatternChoice).
    refresh_steps: how many steps a data-dependent choice is reused (0: every call).
    check_block: (params, block size) -> None; ValueError when the parameters cannot run with
        that mask block size (checked with the options, before anything compiles).
    paper: where the method comes from.
    caches: the `functools.lru_cache`d factories holding its patterns (bounded; emptied by
        `masks.clear_mask_cache()`).
    """

    name: str
    params: type
    static_patterns: StaticPatterns
    choose: Optional[Choose] = None
    refresh_steps: Callable[[Any], int] = lambda params: 0
    check_block: Callable[[Any, int], None] = lambda params, block: None
    paper: str = ""
    caches: tuple = ()

    @property
    def data_dependent(self) -> bool:
        """True: the pattern depends on q/k (no static density, nothing fixed to draw alone)."""
        return self.choose is not None

    def static_choice(self, tokens: TokenLayout, block: int, params: Any, device: Any) -> PatternChoice:
        """A data-independent policy's choice: its one static pattern, for every head.

        Raises ValueError when the policy is data-dependent or does not give exactly one pattern.
        """
        if self.data_dependent:
            raise ValueError(f"sparse policy {self.name!r} chooses its patterns from the data")
        patterns = self.static_patterns(tokens, block, params, device)
        if len(patterns) != 1:
            raise ValueError(f"sparse policy {self.name!r} has no choose() and {len(patterns)} static patterns; "
                             "a data-independent policy gives exactly one")
        return PatternChoice(patterns)


def parse_params(policy: Policy, values: Mapping[str, Any]) -> Any:
    """`policy.params(**values)`, lists turned into tuples; ValueError naming unknown keys
    ("sparse.<policy>: unknown parameter(s) [...]; accepted: [...]") or the bad value."""
    accepted = sorted(f.name for f in dataclasses.fields(policy.params))
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise ValueError(f"sparse.{policy.name}: unknown parameter(s) {unknown}; accepted: {accepted}")
    try:
        return policy.params(**{k: _plain(v) for k, v in values.items()})
    except ValueError as err:
        raise ValueError(f"sparse.{policy.name}: {err}") from err


def _plain(value: Any) -> Any:
    """Lists as tuples, numpy scalars as Python numbers (a params dataclass is hashed and JSON'd)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(x) for x in value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def params_json(params: Any) -> str:
    """Canonical JSON of a params dataclass (tuples as lists), for plans."""
    return json.dumps(dataclasses.asdict(params), sort_keys=True, separators=(",", ":"))


__all__ = ["ChoiceInputs", "PatternChoice", "Policy", "parse_params", "params_json"]
