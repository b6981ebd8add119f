"""The backend's options as frozen dataclasses: one section per feature, each field with its
unit, default and effect. `loader.resolve_config` builds them from presets and user options and
validates every value (`fields.check_section`, called by each section's `__post_init__`, so a
section built directly is checked too); the registries (`masks.POLICIES`, `step_cache_policies.CACHE_POLICIES`)
give the accepted policy names and the policies' parameter dataclasses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from ..autotune import MODES as AUTOTUNE_MODES
from ..kernels.block_mask import MIN_BLOCK
from ..masks import POLICIES, get_policy
from ..step_cache_policies import CACHE_POLICIES
from .errors import ConfigError
from .fields import check_section


def _choices(*values: str) -> dict:
    """Field metadata: the accepted strings (a tuple, or a registry whose keys are read at validation)."""
    return {"choices": values}


@dataclass(frozen=True)
class GraphConfig:
    """Facts about the model the graph analysis cannot discover on its own."""

    PREFIX: ClassVar[str] = "graph."
    token_grid: Optional[tuple[int, ...]] = field(default=None, metadata={"length": 3, "min": 1})
    """(frames, height, width) of the video tokens after patching; overrides discovery."""
    text_position: str = field(default="auto", metadata=_choices("auto", "before", "after", "none"))
    """Where text sits in joint attention; "auto" discovers it from the concatenation."""
    capture_dynamic_output_shape_ops: bool = True
    """While Dynamo traces a model for ditaccel, capture operators whose output size depends on
    the data (`torch.nonzero`, boolean indexing) instead of breaking the graph there
    (`torch._dynamo.config.capture_dynamic_output_shape_ops`); valid-token selections before
    attention (Mochi) are then rewritten as key-padding masks on static shapes. Takes effect
    through `torch.compile(..., options=...)` and `explain()`; False traces as Dynamo's default."""

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True)
class AttentionConfig:
    """The attention rewrite pass: every supported site becomes `ditaccel::attention`."""

    PREFIX: ClassVar[str] = "attention."
    enabled: bool = True
    skip: tuple[str, ...] = field(default=(), metadata={"regex": True})
    """Regular expressions (re.fullmatch) of module paths to leave untouched, e.g. "blocks\\.0\\..*"."""
    backend: str = field(default="sdpa", metadata=_choices("sdpa", "triton"))
    """Dense attention kernel: "sdpa" (torch SDPA: cuDNN/flash on CUDA; lowered to aten SDPA when
    nothing else needs the op, see `lower_dense`) or "triton" (ditaccel's flash kernel on CUDA, its
    torch reference on the CPU)."""
    quant: str = field(default="none", metadata=_choices("none", "int8"))
    """"int8": SageAttention-style 8-bit attention (INT8 Q/K with K smoothing, FP8 P.V on sm89+);
    runs on the triton backend."""
    lower_dense: bool = True
    """Sites whose final plan is plain dense SDPA become aten SDPA again, which Inductor compiles
    as plain `torch.compile` would (no per-call cost, CUDA graphs); False keeps
    `ditaccel::attention` at every rewritten site (debugging, measuring the op's cost)."""

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True)
class SparseConfig:
    """Sparse attention on video self-attention and the video part of joint attention."""

    PREFIX: ClassVar[str] = "sparse."
    enabled: bool = False
    policy: str = field(default="radial", metadata={"choices": POLICIES})
    """A name in `masks.POLICIES`: radial (Radial Attention's static energy-decay mask),
    spatial_temporal (Sparse VideoGen's per-head spatial/temporal classification), antidiagonal
    (XAttention's data-dependent block selection), tile (sliding tile attention, 3-D windows)."""
    policy_params: tuple[tuple[str, Any], ...] = field(default=(), metadata={"tables": POLICIES})
    """(policy name, its parameter dataclass) for each `[sparse.<policy>]` table given, e.g.
    {"sparse.radial": {"decay_factor": 0.2, "sink": true}}; set through those tables. Each
    policy's parameters are documented on its dataclass (masks.RadialParams, ...)."""
    block_size: int = field(default=128, metadata={"min": MIN_BLOCK, "multiple": MIN_BLOCK})
    """Mask block in tokens (query and key); a multiple of 16 (the kernel's smallest tile)."""
    dense_steps: int = field(default=0, metadata={"min": 0})
    """Denoising steps that run dense at the start of each generation."""
    dense_blocks: tuple[int, ...] = field(default=(), metadata={"min": 0})
    """Indices of transformer blocks whose attention stays dense."""
    min_tokens: int = field(default=0, metadata={"min": 0})
    """Sites with fewer video tokens stay dense."""
    guard_every: int = field(default=0, metadata={"min": 0})
    """Fidelity guard: every N sparse steps compare with dense attention on sampled rows (0: off)."""
    guard_budget: float = field(default=0.05, metadata={"min": 0.0})
    """Relative L2 error above which a site runs dense for the rest of the generation."""
    guard_rows: int = field(default=64, metadata={"min": 1})
    """Query rows the guard samples per check."""

    def __post_init__(self) -> None:
        check_section(self)
        for name, params in {**dict(self.policy_params), self.policy: self.params_for(self.policy)}.items():
            try:
                get_policy(name).check_block(params, self.block_size)
            except ValueError as err:
                raise ConfigError(f"option 'sparse.{name}' does not fit sparse.block_size={self.block_size}: "
                                  f"{err}") from err

    def params_for(self, policy: str) -> Any:
        """The parameter dataclass of `policy`: from its table, else the policy's defaults."""
        return dict(self.policy_params).get(policy) or get_policy(policy).params()


@dataclass(frozen=True)
class CacheConfig:
    """Step cache: reuse the trunk's residual across denoising steps when it barely changes.

    The graph is split at block boundaries into head (embeddings + the first `compute_first`
    blocks), body (middle blocks) and tail (last `compute_last` blocks + output projection).
    """

    PREFIX: ClassVar[str] = "cache."
    enabled: bool = False
    policy: str = field(default="fbcache", metadata={"choices": CACHE_POLICIES})
    """fbcache: relative L1 change of the first block's residual (ParaAttention / diffusers);
    dbcache: the same signal over the first `compute_first` blocks, with `compute_last` tail
    blocks, warm-up and a cap on consecutive cached steps (cache-dit); teacache: accumulated,
    polynomially rescaled relative L1 change of the first block's modulated input (TeaCache)."""
    threshold: float = field(default=0.05, metadata={"min": 0.0})
    """Reuse while the policy's change signal stays below this (a finite number >= 0)."""
    compute_first: int = field(default=1, metadata={"min": 1})
    compute_last: int = field(default=0, metadata={"min": 0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    """Denoising steps always computed at the start of a generation."""
    max_cached_steps: int = field(default=0, metadata={"min": 0})
    """Most consecutive reused steps per branch (0: no limit)."""
    teacache_coefficients: tuple[float, ...] = ()
    """TeaCache rescaling polynomial, highest degree first; empty: no rescaling (identity)."""
    teacache_signal: str = field(default="", metadata={"module": True})
    """Module whose output is TeaCache's signal (e.g. "condition_embedder.time_proj" for Wan,
    whose coefficients were fitted on the timestep projection); empty: the first block's
    timestep-modulated input (HunyuanVideo, Flux, Mochi)."""
    taylor_order: int = field(default=0, metadata={"min": 0, "max": 2})
    """TaylorSeer: 0 reuses the cached residual; 1 or 2 extrapolates it from its history."""

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True)
class AutotuneConfig:
    """Which kernel runs each attention call: the persistent tuning cache (`ditaccel autotune`)."""

    PREFIX: ClassVar[str] = "autotune."
    mode: str = field(default="offline", metadata=_choices(*AUTOTUNE_MODES))
    """"offline": look up the cache filled by `ditaccel autotune`; a miss runs the plan's default
    kernel (one log line names the command). "online": a miss is tuned on first use (validated,
    timed, saved), which slows the first call of each new shape. "off": the default, no lookup."""
    cache_dir: str = ""
    """Folder of the tuning cache; empty: $DITACCEL_AUTOTUNE_DIR, else the user cache directory
    (platformdirs: ~/.cache/ditaccel/autotune on Linux)."""

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True)
class DitConfig:
    """The whole configuration. Built from options by `resolve_config` (defaults < preset < the
    dict's entries); built directly, every field is checked the same way. `preset` is only the
    label of where the values came from: `DitConfig(preset="wan2.1")` does not load the preset's
    values; `resolve_config({"preset": "wan2.1", ...})` does."""

    PREFIX: ClassVar[str] = ""
    preset: Optional[str] = field(default=None, metadata={"preset": True})
    compiler: str = field(default="inductor", metadata=_choices("inductor", "eager"))
    """"inductor" compiles the rewritten graph; "eager" runs it as is (debugging, explain)."""
    mode: str = field(default="default", metadata=_choices(
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    """Inductor mode (torch.compile refuses `mode=` together with `options=`, so it lives here)."""
    report: bool = True
    """Log the explain report at INFO level on the 'ditcompile' logger."""
    strict: bool = False
    """Raise when the analysis or a pass fails, instead of compiling the graph unchanged."""
    inductor: tuple[tuple[str, Any], ...] = field(default=(), metadata={"inductor": True})
    """Inductor config patches, e.g. {"max_autotune": True} (keys of torch._inductor.config)."""
    graph: GraphConfig = GraphConfig()
    attention: AttentionConfig = AttentionConfig()
    sparse: SparseConfig = SparseConfig()
    cache: CacheConfig = CacheConfig()
    autotune: AutotuneConfig = AutotuneConfig()

    def __post_init__(self) -> None:
        check_section(self)

    def section(self, name: str) -> Any:
        return getattr(self, name)


SECTIONS = {f.name: type(f.default) for f in dataclasses.fields(DitConfig) if dataclasses.is_dataclass(f.default)}


__all__ = ["ConfigError", "GraphConfig", "AttentionConfig", "SparseConfig", "CacheConfig", "AutotuneConfig",
           "DitConfig", "SECTIONS"]
