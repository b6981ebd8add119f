"""The plan each rewritten attention site carries into `ditaccel::attention` (the pass <-> op contract).

A plan is a frozen dataclass, serialised to canonical JSON (`plans.codec`) and passed to the
custom op as a string argument, so Inductor's FX-graph cache key covers it and the op needs no
hidden per-site state. Each feature owns one part, set by its own pass:

    AttentionPlan
      site_path   module path of the site ("blocks.3.attn1"), for logs and run-time state
      backend     "sdpa" (torch SDPA) or "triton" (ditaccel's flash kernel; its reference on CPU)
      quant       "none" or "int8" (INT8 QK^T with K smoothing, FP8/16-bit P.V; triton only)
      sparse      SparseSpec or None (dense): policy, its parameters, the token layout, warm-up, guard

Later features add parts the same way (a mask spec, a parallel spec, a KV-cache spec), each
with a default that means "off", so a plan without them keeps its meaning.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from ..autotune import MODES as AUTOTUNE_MODES
from ..geometry import TEXT_POSITIONS, TextSegment, TokenLayout
from ..kernels.block_mask import check_block_sizes
from ..masks import POLICIES, get_policy, parse_params

BACKENDS = ("sdpa", "triton")
QUANTS = ("none", "int8")
MASKS = ("none", "key_padding", "dense")
PLAN_VERSION = 2  # of the JSON form; `plans.codec` also reads version 1 (ditaccel 0.1)


@dataclass(frozen=True)
class SparseSpec:
    """How a site runs sparse attention (`ditcompile.ops.impl.sparse` executes it).

    policy: a name in `masks.POLICIES`; params_json: its parameters as canonical JSON.
    grid: (frames, height, width) of the video tokens; with dynamic_grid the grid is () and the
    op receives (frames, height, width) at run time (a graph compiled for dynamic shapes).
    text_position "before"/"after" with text_length tokens, or "" without text. block_size: mask
    block (query and key), a multiple
    of 16. dense_steps: denoising steps run dense at the start of a generation. guard_every:
    the fidelity guard checks every N sparse calls (0: off), switching the site to dense for the
    rest of the generation above guard_budget (relative L2 error) on guard_rows sampled rows.
    dense_blocks: block indices that run dense, for a site whose block is known only at run time
    (a regionally compiled block: `ModelRuntime.block`); a dynamic_grid site without a grid
    argument takes the grid of the enclosing model call (`runtime.state.parent_grid`).

    Derived on construction (attributes, not fields: they are not part of the JSON):
    token_layout, where video and text tokens sit in the site's sequence (`geometry.TokenLayout`;
    None with dynamic_grid: see `layout(grid)`), and policy_params, the policy's parameter
    dataclass parsed from `params_json`.
    """

    policy: str
    params_json: str = "{}"
    grid: tuple = ()
    text_position: str = ""
    text_length: int = 0
    block_size: int = 128
    dense_steps: int = 0
    guard_every: int = 0
    guard_budget: float = 0.05
    guard_rows: int = 64
    dynamic_grid: bool = False
    dense_blocks: tuple = ()

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"sparse attention plan policy {self.policy!r} is not one of {tuple(POLICIES)}")
        object.__setattr__(self, "grid", tuple(self.grid))
        object.__setattr__(self, "dense_blocks", tuple(int(b) for b in self.dense_blocks))
        if len(self.grid) != (0 if self.dynamic_grid else 3):
            raise ValueError(f"sparse attention plan needs a 3-D grid (or none with dynamic_grid), got "
                             f"grid={self.grid}, dynamic_grid={self.dynamic_grid}")
        check_block_sizes(self.block_size, self.block_size)
        if self.text_position not in ("", *TEXT_POSITIONS):
            raise ValueError(f"sparse attention plan text_position {self.text_position!r} is not '', "
                             f"{TEXT_POSITIONS[0]!r} or {TEXT_POSITIONS[1]!r}")
        if not (math.isfinite(self.guard_budget) and self.guard_budget >= 0):
            raise ValueError(f"sparse attention plan guard_budget must be a finite number >= 0, got {self.guard_budget}")
        # parse and check now: a bad parameter, grid or text length fails where the plan is built
        object.__setattr__(self, "policy_params", parse_params(get_policy(self.policy), json.loads(self.params_json)))
        object.__setattr__(self, "token_layout", None if self.dynamic_grid else self.layout())

    def layout(self, grid: Optional[Sequence[int]] = None) -> TokenLayout:
        """The token layout of the site's sequence: from the plan's grid, or from `grid` (the
        run-time (frames, height, width) of a dynamic-shape graph). ValueError for a bad grid."""
        if self.dynamic_grid:
            if grid is None or len(grid) != 3:
                raise ValueError(f"a sparse plan with dynamic_grid needs the run-time grid (frames, height, width), "
                                 f"got {grid!r}")
            return _token_layout(tuple(int(x) for x in grid), self.text_position, self.text_length)
        return _token_layout(self.grid, self.text_position, self.text_length)


@functools.lru_cache(maxsize=256)
def _token_layout(grid: tuple, text_position: str, text_length: int) -> TokenLayout:
    text = TextSegment(text_position, text_length, "plan") if text_position else None
    return TokenLayout.of(grid, text)



DENSE_MASK_NOTE = ("dense mask: block-sparse in the kernel when its tiles are uniform at run time (block-causal "
                   "frames), else exact SDPA")
SPARSE_MASK_NOTE = {
    "key_padding": "key padding kept in every tile",
    "dense": ("dense mask: intersected with the pattern when its tiles are uniform at run time (block-causal "
              "frames), else the call runs dense and exact"),
}


@dataclass(frozen=True)
class AttentionPlan:
    site_path: str = ""
    backend: str = "sdpa"
    quant: str = "none"
    sparse: Optional[SparseSpec] = None
    mask: str = "none"
    """The op's attn_mask argument: "none", "key_padding" ([B|1, 1, 1, Skv]: the kernel's key
    bias, composes with every plan) or "dense" (any SDPA-broadcastable bool / additive float
    mask: block-sparse in the kernel when its tiles are uniform, else exact SDPA)."""
    autotune: str = "offline"
    """How the op picks its kernel per call (`autotune.lookup`): "offline" (the tuning cache, else
    the default kernel), "online" (tune a miss on first use) or "off" (the default kernel)."""
    autotune_dir: str = ""
    """The tuning cache folder ("": $DITACCEL_AUTOTUNE_DIR, else the user cache directory)."""

    def __post_init__(self) -> None:
        for name, value, accepted in (("backend", self.backend, BACKENDS), ("quant", self.quant, QUANTS),
                                      ("mask", self.mask, MASKS), ("autotune", self.autotune, AUTOTUNE_MODES)):
            if value not in accepted:
                raise ValueError(f"attention plan {name} {value!r} is not one of {accepted}")
        if self.quant != "none" and self.backend != "triton":
            raise ValueError(f"attention plan quant={self.quant!r} needs backend 'triton'")
        if self.sparse is not None and self.backend != "triton":
            raise ValueError("a sparse attention plan needs backend 'triton' (the block-sparse kernel)")

    @property
    def method(self) -> str:
        """What the op computes: "dense" (softmax over all keys) or "sparse"."""
        return "sparse" if self.sparse is not None else "dense"

    def dense_fallback(self) -> "AttentionPlan":
        """The dense plan a sparse plan runs at its warm-up steps and after the guard trips:
        SDPA (the fastest dense), or the Triton kernel when the plan is 8-bit."""
        return AttentionPlan(site_path=self.site_path, backend="triton" if self.quant != "none" else "sdpa",
                             quant=self.quant, mask=self.mask, autotune=self.autotune, autotune_dir=self.autotune_dir)

    @property
    def depends_on_step(self) -> bool:
        """True when the computation changes with the denoising step (warm-up, guard, reuse)."""
        return self.sparse is not None

    def describe(self) -> str:
        quant = f"/{self.quant}" if self.quant != "none" else ""
        mask = f"+{self.mask.replace('_', '-')} mask" if self.mask != "none" else ""
        if self.sparse is not None:
            warm = f", dense {self.sparse.dense_steps} steps" if self.sparse.dense_steps else ""
            return f"sparse/{self.sparse.policy}{quant}{mask}{warm}"
        return f"dense/{self.backend}{quant}{mask}"

    def to_dict(self) -> dict:
        """The fields; ``mask``, ``autotune`` and ``autotune_dir`` only when set, so plans without a mask keep their JSON of before."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["sparse"] = dataclasses.asdict(self.sparse) if self.sparse is not None else None
        for name, default in (("mask", "none"), ("autotune", "offline"), ("autotune_dir", "")):
            if data[name] == default:  # plans that do not set them keep their JSON of before
                del data[name]
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces, with the version): equal plans, equal strings."""
        return json.dumps({"version": PLAN_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":"))


__all__ = ["AttentionPlan", "SparseSpec", "DENSE_MASK_NOTE", "SPARSE_MASK_NOTE", "BACKENDS", "QUANTS", "MASKS", "PLAN_VERSION"]
