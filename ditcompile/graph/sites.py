"""Site descriptions: the one record of each attention and linear call that every pass reads.

An `AttentionSite` is built by `graph.attention_match` from the Dynamo FX graph; passes never
re-derive shapes or kinds themselves. Sizes are ints when static and None when symbolic
(`*_text` fields keep the printable expression for reports).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch.fx as fx

from ..geometry import TENSOR_LAYOUTS, TextSegment, TokenGrid
from ..runtime.continuity import LatentView

# Attention kinds.
SELF = "self"          # all tokens of one stream attend each other (video, image or text)
CROSS = "cross"        # queries from one stream, keys/values from another (video -> text)
JOINT = "joint"        # text and video tokens concatenated into one sequence (MM-DiT)
SPATIAL = "spatial"    # factorized: tokens of one frame attend each other (batch = B*F)
TEMPORAL = "temporal"  # factorized: one spatial position across frames (batch = B*H*W)
KINDS = (SELF, CROSS, JOINT, SPATIAL, TEMPORAL)

LAYOUTS = TENSOR_LAYOUTS  # tensor layouts of q/k/v as the op receives them (geometry.BHSD / BSHD)


@dataclass(frozen=True)
class AttentionSite:
    """One attention call in the graph: what it computes and whether a pass may replace it.

    Immutable once the analysis has built it (passes read it; none edits it). The tensors (`q`,
    `k`, `v`, `output`) are FX nodes of the analysed graph; `q`, `k`, `v` are already in
    `layout` (for a BSHD site they are the tensors *before* the permute to [B,H,S,D], so the op
    reads them without a copy). Its `module_path` is the site path plans, reports and run-time
    state use to name the site.
    """

    index: int                   # position among the graph's attention sites, in graph order
    pattern: str                 # "sdpa", "matmul-softmax-matmul", "baddbmm-softmax-bmm"
    module_path: str             # "blocks.3.attn1"
    module_class: str            # "WanAttention"
    block: Optional[str]         # "blocks.3"
    block_index: Optional[int]   # 3
    layout: str                  # tensor layout of q/k/v: BHSD or BSHD
    batch: Optional[int]
    heads: Optional[int]         # None when folded into the batch and not recoverable
    kv_heads: Optional[int]
    head_dim: Optional[int]
    value_dim: Optional[int]
    q_len: Optional[int]
    kv_len: Optional[int]
    q_len_expr: str              # printable q length ("32760", or "u0 + 72" when symbolic)
    kv_len_expr: str
    shape_text: str              # "B=1 H=12 Sq=32760 Skv=32760 D=128" with symbols if dynamic
    scale: Optional[float]       # None: SDPA default 1/sqrt(head_dim)
    is_causal: bool
    has_mask: bool
    dropout_p: float
    dtype: str
    kind: str = SELF
    tokens: str = "unknown"      # which tokens: "video", "text", "video+text", "unknown"
    text: Optional[TextSegment] = None
    supported: bool = True
    reason: Optional[str] = None  # why a pass may not replace it (when not supported)
    # FX nodes (not part of the report)
    q: Optional[fx.Node] = field(default=None, repr=False)
    k: Optional[fx.Node] = field(default=None, repr=False)
    v: Optional[fx.Node] = field(default=None, repr=False)
    output: Optional[fx.Node] = field(default=None, repr=False)       # node producing [B,H,S,D]
    replaced: tuple = field(default=(), repr=False)                    # nodes made dead by a rewrite
    folded_heads: bool = False   # q/k/v are [B*H, S, D] (heads folded into batch)
    mask: Optional[fx.Node] = field(default=None, repr=False)         # SDPA's attn_mask, carried to the op
    mask_kind: str = "none"      # "none", "key_padding" ([B|1, 1, 1, Skv]) or "dense" (any other shape)
    output_layout: str = "bhsd"  # layout of `output`: "bshd" for ops that return [B, S, H, D] (flash-attn)

    @property
    def equal_lengths(self) -> bool:
        """q and kv lengths are known to be equal (same static value or same expression)."""
        return self.q_len_expr == self.kv_len_expr and self.q_len_expr != "?"

    def with_reasons(self, reasons: list[str]) -> "AttentionSite":
        """This site, unsupported for the first of `reasons` (unchanged when there are none)."""
        if not reasons:
            return self
        return dataclasses.replace(self, supported=False, reason=self.reason or reasons[0])


@dataclass(frozen=True)
class LinearSite:
    """`F.linear(x, weight, bias)` whose weight is a model parameter."""

    index: int
    module_path: str
    block: Optional[str]
    block_index: Optional[int]
    in_features: int
    out_features: int
    tokens: Optional[int]        # rows of the GEMM (product of x's leading dims), None if dynamic
    has_bias: bool
    weight_placeholder: str      # the placeholder node's name (parameters are graph inputs)
    weight_input_index: int      # its position in example_inputs
    node: fx.Node = field(repr=False, compare=False, hash=False)


@dataclass(frozen=True)
class DynamicGrid:
    """The video token grid of a graph Dynamo compiled for dynamic shapes: its sizes are known
    only at run time, read from the patch embedding's output `node` along `dims` (frames,
    height, width; None: a single frame). `tokens_expr` is the printed token count (F*H*W), as
    the sites' printed lengths show it."""

    node: fx.Node = field(repr=False, compare=False)
    dims: tuple[Optional[int], int, int]
    text: str          # "3x(s42//2)x(s18//2)"
    tokens_expr: str   # "3*((s18//2))*((s42//2))"
    source: str
    # per-frame patch embedding (conv2d on [B*F, C, H, W]): frames = node.size(dims[0]) //
    # frames_from.size(0), the main input's batch
    frames_from: Optional[fx.Node] = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.text} ({self.source}; sizes read at run time)"


@dataclass(frozen=True)
class GraphAnalysis:
    """Everything the passes need to know about one Dynamo graph (immutable: passes only read it)."""

    attention: tuple[AttentionSite, ...]
    linear: tuple[LinearSite, ...]
    grid: Optional[TokenGrid]
    num_video_tokens: Optional[int]
    batch: Optional[int]
    main_input: Optional[str]
    notes: tuple[str, ...] = ()
    dynamic: bool = False
    timestep_input: Optional[int] = None  # index into example_inputs of the timestep
    anchor_input: Optional[int] = None    # index of the first parameter (identifies the model)
    main_input_index: Optional[int] = None        # index of the main input (the latents)
    condition_inputs: tuple[int, ...] = ()        # indices of the conditioning inputs (CFG branches)
    dynamic_grid: Optional[DynamicGrid] = None    # the grid of a dynamic-shape graph (grid is None then)
    main_output_index: Optional[int] = None       # index of the graph output the model predicts (same
                                                  # shape as the main input, up to one dimension)
    latent_view: Optional[LatentView] = None      # how that output relates to the main input
    unmatched_softmax: int = 0                    # softmax calls outside any recognised attention site

    @classmethod
    def empty(cls) -> "GraphAnalysis":
        """The analysis of a graph the backend could not analyse (reports only)."""
        return cls((), (), None, None, None, None)

    def site(self, index: int) -> AttentionSite:
        """The attention site with this index (ValueError naming the known range otherwise)."""
        if not 0 <= index < len(self.attention) or self.attention[index].index != index:
            raise ValueError(f"no attention site {index} in this graph ({len(self.attention)} sites)")
        return self.attention[index]
