"""The repeated transformer blocks of a graph, in execution order, with their node ranges.

A block is a `<container>.<index>` module path prefix whose container's blocks compute attention
and sit at the shallowest depth of all such containers: the trunk (`blocks.3`,
`transformer_blocks.0`, `single_transformer_blocks.12`; `inner.blocks.3` for a model wrapped in
another module). Deeper containers such as HunyuanVideo's
`context_embedder.token_refiner.refiner_blocks` are parts of the embedding, and containers without
attention (an `nn.Sequential` such as a final `out_modulation.0/1`) are not transformer blocks. Dynamo traces blocks one after the other, so each
block's nodes form one contiguous range of the graph (checked: a block whose nodes interleave
with another block's is reported, and passes that split the graph refuse such graphs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.fx as fx

from ..ops import attention_op
from .fx_utils import call_name
from .module_path import BlockRef, block_of, module_path


@dataclass(frozen=True)
class BlockSpan:
    ref: BlockRef
    order: int   # position among all trunk blocks in execution order
    first: int   # index (in graph.nodes order) of its first node
    last: int    # index of its last node

    @property
    def path(self) -> str:
        return self.ref.path


@dataclass(frozen=True)
class BlockLayout:
    blocks: tuple[BlockSpan, ...]
    problem: Optional[str] = None  # why the blocks cannot be used as split points


_ATTENTION_CALLS = {"scaled_dot_product_attention", "softmax"}  # attention before a rewrite


def _computes_attention(node: fx.Node) -> bool:
    return node.target is attention_op or call_name(node) in _ATTENTION_CALLS


def find_blocks(graph: fx.Graph) -> BlockLayout:
    spans: dict[str, list[int]] = {}
    refs: dict[str, BlockRef] = {}
    attending: set[str] = set()  # containers with attention in at least one block
    for i, node in enumerate(graph.nodes):
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        ref = block_of(module_path(node))
        if ref is None:
            continue
        key = ref.path
        refs[key] = ref
        span = spans.setdefault(key, [i, i])
        span[1] = i
        if _computes_attention(node):
            attending.add(ref.container)
    # the trunk: the shallowest containers with attention (a wrapper's `inner.blocks` too)
    depth = min((c.count(".") for c in attending), default=0)
    trunk = {c for c in attending if c.count(".") == depth}
    spans = {k: v for k, v in spans.items() if refs[k].container in trunk}
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    blocks = tuple(BlockSpan(refs[k], n, s[0], s[1]) for n, (k, s) in enumerate(ordered))
    for a, b in zip(blocks, blocks[1:]):
        if b.first <= a.last:
            return BlockLayout(blocks, f"blocks {a.path} and {b.path} interleave in the graph")
    return BlockLayout(blocks)
