"""Find `F.linear` calls whose weight is a model parameter (the GEMMs a quantization pass targets).

Dynamo passes parameters as graph *placeholders*; `example_inputs[i]` holds the real
`nn.Parameter`. A weight placeholder is therefore recognised by the type of its example input.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from .fx_utils import example_value, is_function, static_int
from .module_path import block_of, module_path
from .sites import LinearSite

LINEAR_TARGETS = {F.linear, torch._C._nn.linear}


def placeholder_inputs(graph: fx.Graph, example_inputs: Sequence) -> dict[fx.Node, object]:
    """Map each placeholder node to its example input (a tensor, Parameter, SymInt, ...)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    return {node: (example_inputs[i] if i < len(example_inputs) else None) for i, node in enumerate(placeholders)}


def find_linear_sites(graph: fx.Graph, example_inputs: Sequence) -> list[LinearSite]:
    inputs = placeholder_inputs(graph, example_inputs)
    order = {node: i for i, node in enumerate(inputs)}
    sites: list[LinearSite] = []
    for node in graph.nodes:
        if not is_function(node, *LINEAR_TARGETS):
            continue
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not isinstance(weight, fx.Node) or not isinstance(inputs.get(weight), torch.nn.Parameter):
            continue
        w = inputs[weight]
        x = example_value(node.args[0])
        rows = None
        if x is not None:
            leading = [static_int(s) for s in x.shape[:-1]]
            rows = None if None in leading else math.prod(leading)
        path = module_path(node)
        block = block_of(path)
        sites.append(LinearSite(
            index=len(sites), module_path=path, block=block.path if block else None,
            block_index=block.index if block else None, in_features=int(w.shape[1]),
            out_features=int(w.shape[0]), tokens=rows, has_bias=bias is not None,
            weight_placeholder=weight.name, weight_input_index=order[weight], node=node,
        ))
    return sites
