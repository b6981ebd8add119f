"""Site descriptions: the one record of each attention and linear call that every pass reads.

An `AttentionSite` is built by `graph.attention_match` from the Dynamo FX graph; passes never
re-derive shapes or kinds themselves. Sizes are ints when static and None when symbolic
(`*_text` fields keep the printable expression for reports).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch.fx as fx

# Attention kinds.
SELF = "self"          # all tokens of one stream attend each other (video, image or text)
CROSS = "cross"        # queries from one stream, keys/values from another (video -> text)
JOINT = "joint"        # text and video tokens concatenated into one sequence (MM-DiT)
SPATIAL = "spatial"    # factorized: tokens of one frame attend each other (batch = B*F)
TEMPORAL = "temporal"  # factorized: one spatial position across frames (batch = B*H*W)
KINDS = (SELF, CROSS, JOINT, SPATIAL, TEMPORAL)

# Tensor layouts of q/k/v as the op receives them.
BHSD = "bhsd"  # [B, H, S, D]
BSHD = "bshd"  # [B, S, H, D]; the op writes its output in the same layout
LAYOUTS = (BHSD, BSHD)


@dataclass(frozen=True)
class TokenGrid:
    """Video tokens after patching: frames x height x width (images have frames == 1)."""

    frames: int
    height: int
    width: int
    source: str  # how it was found: "conv3d patch embedding at patch_embedding", "option", ...

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width} ({self.source})"


@dataclass(frozen=True)
class TextSegment:
    """Where the text tokens sit inside a joint (text + video) attention sequence."""

    position: str  # "before" or "after" the video tokens
    length: Optional[int]  # None when it varies at run time (Mochi keeps only valid text tokens)
    source: str

    def token_range(self, total: int) -> tuple[int, int]:
        """[start, end) of the text tokens in a joint sequence of `total` tokens."""
        length = self.length or 0
        return (0, length) if self.position == "before" else (total - length, total)


@dataclass
class AttentionSite:
    """One attention call in the graph: what it computes and whether a pass may replace it.

    The tensors (`q`, `k`, `v`, `output`) are FX nodes; `q`, `k`, `v` are already in `layout`
    (for a BSHD site they are the tensors *before* the permute to [B,H,S,D], so the op reads
    them without a copy).
    """

    index: int
    pattern: str                 # "sdpa", "matmul-softmax-matmul", "baddbmm-softmax-bmm"
    module_path: str             # "blocks.3.attn1"
    module_class: str            # "WanAttention"
    block: Optional[str]         # "blocks.3"
    block_index: Optional[int]   # 3
    layout: str                  # BHSD or BSHD
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

    @property
    def equal_lengths(self) -> bool:
        """q and kv lengths are known to be equal (same static value or same expression)."""
        return self.q_len_expr == self.kv_len_expr and self.q_len_expr != "?"

    def unsupported(self, reason: str) -> None:
        self.supported = False
        self.reason = self.reason or reason


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


@dataclass
class GraphAnalysis:
    """Everything the passes need to know about one Dynamo graph."""

    attention: list[AttentionSite]
    linear: list[LinearSite]
    grid: Optional[TokenGrid]
    num_video_tokens: Optional[int]
    batch: Optional[int]
    main_input: Optional[str]
    notes: list[str] = field(default_factory=list)
    dynamic: bool = False
    timestep_input: Optional[int] = None  # index into example_inputs of the timestep
    anchor_input: Optional[int] = None    # index of the first parameter (identifies the model)
