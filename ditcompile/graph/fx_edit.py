"""Inserting nodes into a Dynamo FX graph the way the passes need them.

    add_node(graph, like, "call_method", "transpose", (x, 1, 2), fake_mode)

A new node copies `like`'s module stack (later passes and the report read it) and gets a fake
example value computed under the graph's fake mode, so the next pass (and the block finder,
and the step cache's splitter) can read its shape as it reads Dynamo's own nodes.
"""
from __future__ import annotations

from typing import Any, Optional

import torch.fx as fx

from .fx_utils import example_of

_COPIED_META = ("nn_module_stack", "stack_trace", "source_fn_stack")


def add_node(graph: fx.Graph, like: fx.Node, op: str, target: Any, args: tuple, fake_mode: Any,
             kwargs: Optional[dict] = None) -> fx.Node:
    """A new node `op`/`target`(*args, **kwargs) at the graph's insertion point, with `like`'s
    module stack and, when every node argument has one, a fake example value."""
    kwargs = dict(kwargs or {})
    node = graph.create_node(op, target, args, kwargs)
    for key in _COPIED_META:
        if key in like.meta:
            node.meta[key] = like.meta[key]
    if fake_mode is None:
        return node
    values = [example_of(a) for a in args]
    kw_values = {k: example_of(v) for k, v in kwargs.items()}
    nodes = [a for a in (*args, *kwargs.values()) if isinstance(a, fx.Node)]
    if any(example_of(n) is None for n in nodes):
        return node
    with fake_mode:
        if op == "call_method":
            node.meta["example_value"] = getattr(values[0], target)(*values[1:], **kw_values)
        else:
            node.meta["example_value"] = target(*values, **kw_values)
    return node


__all__ = ["add_node"]
