"""Split a graph at block boundaries into head, body and tail GraphModules (for the step cache).

    placeholders ─► head ─► body ─► tail ─► outputs
                     │  (embeddings, blocks[:Fn]) │ (blocks[Fn:N-Bn]) │ (blocks[N-Bn:], proj_out)
                     └──────────────── head outputs the tail needs ───┘

Partition of the nodes, in graph order:
  - head: everything up to the last node of block Fn-1;
  - body: everything up to the last node of block N-Bn-1 that depends on the body's blocks;
    body-region glue that depends only on the head (e.g. the timestep modulation computed at
    the model's top level between blocks) is hoisted into the head, so the tail never needs a
    body value other than the streams;
  - tail: the rest and the graph's output.

The body's outputs must all be *streams*: tensors the tail reads whose value is a body input
of the same shape plus what the body added (the residual stream of video tokens, and of text
tokens in dual-stream models). Each is paired with its body input; the cache stores
`output - input` per stream. A graph that does not fit (fewer blocks than Fn + Bn + 1,
interleaved blocks, an in-place write across the split, a body output that is not a stream)
is refused with the reason. Symbolic sizes (a graph Dynamo compiled for dynamic shapes) are
fine: shapes are compared by expression, and the runner compiles each piece per input shape.
"""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch.fx as fx

from ...graph.blocks import BlockSpan, find_blocks
from ...graph.fx_utils import call_name, same_size, shape_of, static_int
from ...graph.module_path import block_of, module_path
from ...runtime.step_cache import GraphSplit, Piece

HEAD, BODY, TAIL = 0, 1, 2
_INPLACE_METHODS = {"add_", "mul_", "copy_", "sub_", "div_", "fill_", "zero_", "clamp_", "masked_fill_"}


class SplitError(ValueError):
    """The graph cannot be split for the step cache; the message says why."""


def split_graph(gm: fx.GraphModule, compute_first: int, compute_last: int,
                num_video_tokens: Optional[int], timestep_node: Optional[str],
                signal_module: str = "") -> GraphSplit:
    graph = gm.graph
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    layout = find_blocks(graph)
    if layout.problem:
        raise SplitError(layout.problem)
    blocks = layout.blocks
    if len(blocks) < compute_first + compute_last + 1:
        raise SplitError(f"{len(blocks)} transformer blocks found; the cache needs at least "
                         f"compute_first + compute_last + 1 = {compute_first + compute_last + 1}")
    head_end = blocks[compute_first - 1].last
    body_end = blocks[len(blocks) - compute_last - 1].last
    body_paths = {b.path for b in blocks[compute_first:len(blocks) - compute_last]}

    part: dict[fx.Node, int] = {}
    for node in nodes:
        if node.op == "placeholder":
            continue
        i = index[node]
        if node.op == "output" or i > body_end:
            part[node] = TAIL
        elif i <= head_end:
            part[node] = HEAD
        else:
            in_body_block = (block_of(module_path(node)) or _NO_BLOCK).path in body_paths
            depends = in_body_block or any(part.get(a) == BODY for a in node.all_input_nodes)
            part[node] = BODY if depends else HEAD
    _check_no_inplace_across(nodes, part)

    def users_in(node: fx.Node, parts: set) -> bool:
        return any(part.get(u) in parts for u in node.users)

    body_nodes = [n for n in nodes if part.get(n) == BODY]
    if not body_nodes:
        raise SplitError("the body is empty")
    body_outputs = [n for n in body_nodes if users_in(n, {TAIL})]
    streams = [(_paired_input(o, part), o) for o in body_outputs]
    for (i, o) in streams:
        if i is None:
            raise SplitError(f"body output {o.name} is not a residual stream (no body input of its shape)")
    after, before = _head_blocks_residual(nodes, index, blocks[compute_first - 1], blocks[0], num_video_tokens)
    if signal_module:
        modulated = _module_output(nodes, signal_module, part)
    else:
        modulated = _modulated_input(nodes, index, blocks[0], before, timestep_node)

    head_nodes = [n for n in nodes if part.get(n) == HEAD]
    tail_nodes = [n for n in nodes if part.get(n) == TAIL and n.op != "output"]
    head_outputs = [n for n in head_nodes if users_in(n, {BODY, TAIL})]
    for extra in (after, before, modulated):
        if extra is not None and part.get(extra) == HEAD and extra not in head_outputs:
            head_outputs.append(extra)
    placeholders = [n.name for n in nodes if n.op == "placeholder"]
    output_node = nodes[-1]
    return GraphSplit(
        placeholders=placeholders,
        head=_extract(gm, head_nodes, head_outputs),
        body=_extract(gm, body_nodes, body_outputs),
        tail=_extract(gm, tail_nodes, None, output_node),
        streams=[(i.name, o.name) for i, o in streams],
        stream_before_blocks=before.name,
        stream_after_head_blocks=after.name,
        modulated_input=modulated.name if modulated is not None else None,
        head_blocks=[b.path for b in blocks[:compute_first]],
        body_blocks=[b.path for b in blocks[compute_first:len(blocks) - compute_last]],
        tail_blocks=[b.path for b in blocks[len(blocks) - compute_last:]],
    )


class _NoBlock:
    path = None


_NO_BLOCK = _NoBlock()


def _check_no_inplace_across(nodes: list[fx.Node], part: dict) -> None:
    for node in nodes:
        inplace = (node.op == "call_function" and node.target is operator.setitem) or (
            node.op == "call_method" and node.target in _INPLACE_METHODS)
        if inplace and node.args and isinstance(node.args[0], fx.Node):
            target = node.args[0]
            if target.op != "placeholder" and part.get(target) != part.get(node):
                raise SplitError(f"in-place write {node.name} crosses the head/body/tail split")


def _same_shape(a: fx.Node, shape) -> bool:
    other = shape_of(a)
    return other is not None and len(other) == len(shape) and all(map(same_size, other, shape))


def _paired_input(output: fx.Node, part: dict) -> Optional[fx.Node]:
    """The body input that `output` is the updated value of.

    First by walking back through same-shape arguments (the residual adds of a block); else,
    when the stream is concatenated with another inside the body (HunyuanVideo's and Flux's
    single-stream blocks), the only body input of the output's shape among its ancestors.
    """
    shape = shape_of(output)
    seen, queue = {output}, [output]
    while queue:
        node = queue.pop(0)
        for arg in node.all_input_nodes:
            if arg in seen or not _same_shape(arg, shape):
                continue
            seen.add(arg)
            if part.get(arg) != BODY:
                return arg
            queue.append(arg)
    candidates, seen, queue = [], {output}, [output]
    while queue:
        node = queue.pop(0)
        for arg in node.all_input_nodes:
            if arg in seen:
                continue
            seen.add(arg)
            if part.get(arg) == BODY:
                queue.append(arg)
            elif _same_shape(arg, shape) and shape_of(arg) is not None:
                candidates.append(arg)
    return candidates[0] if len(candidates) == 1 else None


def _head_blocks_residual(nodes, index, last_head: BlockSpan, first: BlockSpan,
                          num_video_tokens: Optional[int]) -> tuple[fx.Node, fx.Node]:
    """(output of the head's last block, the same stream before the first block).

    The output is a node of the last head block used after it, of the video-token stream when
    its shape shows the token count (else the largest), that leads back through same-shape
    arguments to a value computed before the first block.
    """
    outputs = [n for n in nodes[last_head.first:last_head.last + 1]
               if any(index.get(u, -1) > last_head.last for u in n.users) and shape_of(n) is not None]

    def rank(n: fx.Node):
        shape = shape_of(n)
        sizes = [static_int(x) for x in shape]
        video = num_video_tokens is not None and num_video_tokens in sizes
        known = [x for x in sizes if x is not None]
        return (not video, -math.prod(known) if len(known) == len(sizes) else 0)

    for out in sorted(outputs, key=rank):
        try:
            return out, _stream_before(out, first, index)
        except SplitError:
            continue
    raise SplitError(f"cannot find the residual stream through {first.path}..{last_head.path}")


def _stream_before(stream: fx.Node, first_block: BlockSpan, index: dict) -> fx.Node:
    """The main stream's value before the first block: breadth-first through same-shape
    arguments (the block's residual adds) to the nearest node computed before the block."""
    shape = shape_of(stream)
    seen, queue = {stream}, [stream]
    while queue:
        node = queue.pop(0)
        if index.get(node, -1) < first_block.first:
            return node
        for arg in node.all_input_nodes:
            if arg not in seen and _same_shape(arg, shape):
                seen.add(arg)
                queue.append(arg)
    raise SplitError(f"cannot find the stream entering {first_block.path}")


def _module_output(nodes: list[fx.Node], module: str, part: dict) -> fx.Node:
    """The last head node computed inside `module` (its output)."""
    found = [n for n in nodes if part.get(n) == HEAD and (module_path(n) == module
                                                         or module_path(n).startswith(module + "."))]
    if not found:
        raise SplitError(f"no node of module {module!r} found before the body (cache.teacache_signal)")
    return found[-1]


_ELEMENTWISE = {"add", "mul", "sub", "type_as", "to", "float", "addcmul"}


def _modulated_input(nodes, index, first_block: BlockSpan, before: fx.Node,
                     timestep: Optional[str]) -> Optional[fx.Node]:
    """First node of block 0 depending on both the stream and the timestep (TeaCache's signal)."""
    if timestep is None:
        return None
    shape = shape_of(before)
    on_stream, on_time = {before}, set()
    for node in nodes[: first_block.last + 1]:
        inputs = node.all_input_nodes
        if node.op == "placeholder" and node.name == timestep:
            on_time.add(node)
        if any(a in on_time for a in inputs):
            on_time.add(node)
        if any(a in on_stream for a in inputs):
            on_stream.add(node)
        if index[node] >= first_block.first and node in on_time and node in on_stream:
            node_shape = shape_of(node)
            if node_shape is not None and len(node_shape) == len(shape) and all(map(same_size, node_shape, shape)):
                while len(node.users) == 1:
                    user = next(iter(node.users))
                    if call_name(user) not in _ELEMENTWISE or index[user] > first_block.last:
                        break
                    node = user
                return node
    return None


def _extract(gm: fx.GraphModule, nodes: list[fx.Node], outputs: Optional[list[fx.Node]],
             output_node: Optional[fx.Node] = None) -> Piece:
    """A GraphModule computing `outputs` (or the graph's own output) from `nodes`."""
    members = set(nodes)
    needed: list[fx.Node] = []
    for node in nodes + ([output_node] if output_node is not None else []):
        for arg in node.all_input_nodes:
            if arg not in members and arg not in needed:
                needed.append(arg)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for arg in needed:
        env[arg] = graph.placeholder(arg.name)
        env[arg].meta = dict(arg.meta)
    for node in nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    if output_node is not None:
        graph.output(fx.map_arg(output_node.args[0], lambda a: env[a]))
        names = []
    else:
        graph.output(tuple(env[o] for o in outputs))
        names = [o.name for o in outputs]
    graph.lint()
    return Piece(fx.GraphModule(gm, graph), [a.name for a in needed], names)
