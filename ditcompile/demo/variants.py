"""The variants `ditaccel demo` runs on the fidelity model: what each row of its table is.

    eager     the model as is: dense attention, every step computed (the quality reference)
    compile   torch.compile(model) with its defaults (Inductor): the speed baseline
    cache     ditaccel, step cache only: First-Block Cache + TaylorSeer (order 2)
    sparse    ditaccel, sparse attention only: Radial Attention, the first steps dense
    int8      ditaccel, 8-bit attention only: INT8 Q/K per block, smoothed K (SageAttention)
    all       ditaccel, the three composed

The options are tuned for the fidelity model's 8 x 8 x 8 token grid (512 video tokens, 16-token
mask blocks) and short (6-20 step) samplers; `benchmarks/fidelity.py` sweeps the alternatives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

EAGER, COMPILE, CACHE, SPARSE, INT8, ALL = "eager", "compile", "cache", "sparse", "int8", "all"
VARIANT_KEYS = (EAGER, COMPILE, CACHE, SPARSE, INT8, ALL)
QUICK_KEYS = (EAGER, CACHE, SPARSE, ALL)
"""``--quick``: without torch.compile (its cold Inductor compile alone takes about a minute on a
2-core CPU) and 8-bit attention on its own (the composed row has it); each ditaccel row costs
~5 s of Dynamo tracing on such a CPU."""

BLOCK = 16
"""Mask block (tokens) for the fidelity model's 512-token sequence."""

# Options every ditaccel variant shares: fail loudly if a pass cannot handle the model (the demo
# must not show a silently dense "sparse" row); the fidelity model's self-attention holds only
# video tokens (its text enters by cross-attention); the explain report is not logged.
DITACCEL_BASE: dict[str, Any] = {"strict": True, "graph.text_position": "none", "report": False}

# First-Block Cache: reuse the trunk's residual while the first block's output changes by less than
# 30% (relative L1), never in the first 2 steps; TaylorSeer extrapolates the reused residual from the
# last computed ones (order 2). On the fidelity model at 10 steps: 4 of 10 steps reused, 38 dB
# (order 1: 35 dB; threshold 0.25: 38 dB, 4 reused; 0.2: 1 reused).
CACHE_OPTIONS: dict[str, Any] = {"cache.enabled": True, "cache.policy": "fbcache", "cache.threshold": 0.3,
                                 "cache.taylor_order": 2, "cache.warmup_steps": 2}

INT8_OPTIONS: dict[str, Any] = {"attention.quant": "int8"}

DENSE_WARMUP = 0.2
"""Share of the steps the sparse variants compute densely first (Radial Attention's warm-up)."""


def sparse_options(steps: int) -> dict[str, Any]:
    """Radial Attention (exponentially shrinking temporal window, attention sink kept) with the
    first ``max(1, round(0.2 * steps))`` steps dense."""
    return {"sparse.enabled": True, "sparse.policy": "radial", "sparse.block_size": BLOCK,
            "sparse.radial": {"decay_factor": 1.0, "sink": True},
            "sparse.dense_steps": dense_warmup_steps(steps)}


def dense_warmup_steps(steps: int) -> int:
    return max(1, round(DENSE_WARMUP * steps))


@dataclass(frozen=True)
class Variant:
    """One row of the demo: how the model is called.

    ``compiler``: None (the model itself), "torch.compile" (torch's default backend) or "ditaccel"
    (``options`` are its backend options, before the run's compiler and the user's overrides).
    ``families``: the ditaccel features it enables ("cache", "sparse", "int8").
    """

    key: str
    title: str
    compiler: Optional[str]
    options: dict = field(default_factory=dict)
    families: tuple[str, ...] = ()

    @property
    def sparse(self) -> bool:
        return SPARSE in self.families

    @property
    def quant(self) -> str:
        return "int8" if INT8 in self.families else "none"

    @property
    def cached(self) -> bool:
        return CACHE in self.families


def demo_variants(steps: int) -> dict[str, Variant]:
    """Every variant, by key (in table order), for a sampler of ``steps`` steps."""
    sparse = sparse_options(steps)
    warm = sparse["sparse.dense_steps"]
    return {v.key: v for v in (
        Variant(EAGER, "eager (dense)", None),
        Variant(COMPILE, "torch.compile", "torch.compile"),
        Variant(CACHE, "ditaccel step cache", "ditaccel", {**DITACCEL_BASE, **CACHE_OPTIONS}, (CACHE,)),
        Variant(SPARSE, f"ditaccel sparse ({warm} dense)", "ditaccel", {**DITACCEL_BASE, **sparse}, (SPARSE,)),
        Variant(INT8, "ditaccel 8-bit attention", "ditaccel", {**DITACCEL_BASE, **INT8_OPTIONS}, (INT8,)),
        Variant(ALL, "ditaccel all composed", "ditaccel", {**DITACCEL_BASE, **CACHE_OPTIONS, **sparse, **INT8_OPTIONS},
                (CACHE, SPARSE, INT8)),
    )}


def select_variants(keys: Optional[Sequence[str]], steps: int, quick: bool = False) -> list[Variant]:
    """The variants to run, in table order. ``keys`` None: all of them (``quick``:
    :data:`QUICK_KEYS`). The eager variant is always included: it is the quality reference.

    Raises:
        ValueError: an unknown or repeated key, naming it and the accepted keys.
    """
    table = demo_variants(steps)
    if keys is None:
        chosen = list(QUICK_KEYS if quick else VARIANT_KEYS)
    else:
        chosen = list(keys)
        unknown = [k for k in chosen if k not in table]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANT_KEYS)}")
        repeated = sorted({k for k in chosen if chosen.count(k) > 1})
        if repeated:
            raise ValueError(f"variant {repeated[0]!r} is given twice")
    wanted = set(chosen) | {EAGER}
    return [table[k] for k in VARIANT_KEYS if k in wanted]


__all__ = ["Variant", "VARIANT_KEYS", "QUICK_KEYS", "demo_variants", "select_variants", "sparse_options", "dense_warmup_steps",
           "CACHE_OPTIONS", "INT8_OPTIONS", "DITACCEL_BASE", "BLOCK"]
