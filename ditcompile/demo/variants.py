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

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..config import DitConfig, resolve_config

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


def ditaccel_title(families: Sequence[str], dense_steps: int) -> str:
    """The row name of a ditaccel variant with these families (warm-up shown where sparse)."""
    names = {CACHE: "step cache", SPARSE: f"sparse ({dense_steps} dense)", INT8: "8-bit attention"}
    if set(families) == {CACHE, SPARSE, INT8}:
        return "ditaccel all composed"
    return "ditaccel " + (" + ".join(names[f] for f in families) if families else "dense")


def families_of(cfg: DitConfig) -> tuple[str, ...]:
    """The features a resolved config turns on, in table order."""
    on = ((CACHE, cfg.cache.enabled), (SPARSE, cfg.sparse.enabled), (INT8, cfg.attention.quant == "int8"))
    return tuple(name for name, enabled in on if enabled)


def demo_variants(steps: int) -> dict[str, Variant]:
    """Every variant, by key (in table order), for a sampler of ``steps`` steps."""
    sparse = sparse_options(steps)
    warm = sparse["sparse.dense_steps"]

    def ditaccel(key: str, options: dict, families: tuple[str, ...]) -> Variant:
        return Variant(key, ditaccel_title(families, warm), "ditaccel", {**DITACCEL_BASE, **options}, families)

    return {v.key: v for v in (
        Variant(EAGER, "eager (dense)", None),
        Variant(COMPILE, "torch.compile", "torch.compile"),
        ditaccel(CACHE, CACHE_OPTIONS, (CACHE,)),
        ditaccel(SPARSE, sparse, (SPARSE,)),
        ditaccel(INT8, INT8_OPTIONS, (INT8,)),
        ditaccel(ALL, {**CACHE_OPTIONS, **sparse, **INT8_OPTIONS}, (CACHE, SPARSE, INT8)),
    )}


def as_run(variant: Variant, compiler: str, overrides: Optional[dict] = None) -> tuple[Variant, Optional[DitConfig]]:
    """The variant as it will run, and its resolved config (None for eager / torch.compile).

    Its options get the run's ``compiler`` ("inductor" or "eager") and the user's ``overrides``
    on top; its families and title are read back from the resolved config, so an override that
    turns a feature on or off or changes the dense warm-up shows in the row's name and in what the
    demo measures for it.

    Raises:
        ConfigError: the merged options are refused (naming the key).
    """
    if variant.compiler != "ditaccel":
        return variant, None
    options = {**variant.options, "compiler": compiler, **(overrides or {})}
    cfg = resolve_config(options)
    families = families_of(cfg)
    return dataclasses.replace(variant, options=options, families=families,
                               title=ditaccel_title(families, cfg.sparse.dense_steps)), cfg


def select_variants(keys: Optional[Sequence[str]], steps: int, quick: bool = False) -> list[Variant]:
    """The variants to run, in table order. ``keys`` None: all of them (``quick``:
    :data:`QUICK_KEYS`). The eager variant is always included: it is the quality reference.

    Raises:
        ValueError: an unknown or repeated key, naming it and the accepted keys.
    """
    table = demo_variants(steps)
    if isinstance(keys, str) or (keys is not None and not isinstance(keys, (list, tuple))):
        raise ValueError(f"variants must be a list of keys from {', '.join(VARIANT_KEYS)} (e.g. ['cache', 'all']), "
                         f"got {keys!r}")
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


__all__ = ["Variant", "VARIANT_KEYS", "QUICK_KEYS", "demo_variants", "as_run", "families_of", "ditaccel_title", "select_variants", "sparse_options", "dense_warmup_steps",
           "CACHE_OPTIONS", "INT8_OPTIONS", "DITACCEL_BASE", "BLOCK"]
