"""Small helpers for reading a Dynamo FX graph without adding shape guards.

Everything here is read-only: it inspects `node.meta["example_value"]` (a FakeTensor whose
sizes may be SymInts when the graph was traced with dynamic shapes) and never calls `bool()`
on a symbolic expression, which would add a guard after Dynamo has already installed them.
"""
from __future__ import annotations

import operator
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.fx as fx

Dim = Optional[int]  # a static size, or None when the size is symbolic


def static_int(value: Any) -> Dim:
    """`value` as a Python int when it is a concrete size, else None (symbolic or unknown)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.SymInt):
        text = str(value)
        try:
            return int(text)
        except ValueError:
            return None
    return None


def dim_text(value: Any) -> str:
    """Printable size: '128' for a static size, the SymPy expression ('s0*s1') otherwise."""
    if isinstance(value, torch.SymInt) or isinstance(value, int):
        return str(value)
    return "?"


def example_of(arg: Any) -> Any:
    """An argument's example value: a node's fake tensor or SymInt, lists element by element,
    constants as they are (None for a node without one)."""
    if isinstance(arg, fx.Node):
        return arg.meta.get("example_value", arg.meta.get("val"))
    if isinstance(arg, (list, tuple)):
        return type(arg)(example_of(a) for a in arg)
    return arg


def example_value(node: Any) -> Optional[torch.Tensor]:
    """The (fake) tensor a node produces, if the node is an FX node producing one tensor."""
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def shape_of(node: Any) -> Optional[tuple]:
    """Sizes (ints or SymInts) of the tensor a node produces, or None."""
    value = example_value(node)
    return tuple(value.shape) if value is not None else None


def static_shape(node: Any) -> Optional[tuple[Dim, ...]]:
    """Sizes as ints, None for each symbolic size; None when the node is not a tensor."""
    shape = shape_of(node)
    return None if shape is None else tuple(static_int(s) for s in shape)


def dtype_of(node: Any) -> Optional[torch.dtype]:
    value = example_value(node)
    return value.dtype if value is not None else None


def same_size(a: Any, b: Any) -> bool:
    """True only when both sizes are known to be equal (static equal, or the same symbol)."""
    sa, sb = static_int(a), static_int(b)
    if sa is not None and sb is not None:
        return sa == sb
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return str(a) == str(b)
    return False


def is_method(node: fx.Node, *names: str) -> bool:
    return node.op == "call_method" and node.target in names


def is_function(node: fx.Node, *targets: Any) -> bool:
    return node.op == "call_function" and node.target in targets


def call_name(node: fx.Node) -> str:
    """A short name for what a node calls: 'softmax', 'linear', 'matmul', 'transpose', ..."""
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        target = node.target
        if target is operator.getitem:
            return "getitem"
        name = getattr(target, "__name__", None) or str(target)
        if isinstance(target, torch._ops.OpOverload):
            name = target._opname
        return name
    return node.op


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The FX nodes among a node's positional and keyword arguments (lists flattened)."""
    found: list[fx.Node] = []

    def visit(arg: Any) -> None:
        if isinstance(arg, fx.Node):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            for item in arg:
                visit(item)
        elif isinstance(arg, dict):
            for item in arg.values():
                visit(item)

    visit(node.args)
    visit(node.kwargs)
    return found


def walk_back(start: fx.Node, limit: int) -> Iterator[fx.Node]:
    """Breadth-first walk over the producers of `start` (itself first), at most `limit` nodes."""
    seen = {start}
    queue = [start]
    count = 0
    while queue and count < limit:
        node = queue.pop(0)
        count += 1
        yield node
        for arg in tensor_inputs(node):
            if arg not in seen:
                seen.add(arg)
                queue.append(arg)


def normalize_dim(dim: Any, rank: int) -> Optional[int]:
    if not isinstance(dim, int) or rank <= 0:
        return None
    return dim + rank if dim < 0 else dim


def permutation_of(node: fx.Node) -> Optional[tuple[int, ...]]:
    """The full dim permutation a transpose/permute node applies to its 4-D-or-other input."""
    src = node.args[0] if node.args else None
    value = example_value(src)
    if value is None:
        return None
    rank = value.dim()
    if is_method(node, "transpose") or is_function(node, torch.transpose):
        a, b = (normalize_dim(d, rank) for d in node.args[1:3])
        if a is None or b is None:
            return None
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
        return tuple(perm)
    if is_method(node, "permute") or is_function(node, torch.permute):
        dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
        perm = tuple(normalize_dim(d, rank) for d in dims)
        return perm if len(perm) == rank and None not in perm else None
    return None


def is_seq_head_swap(node: Any) -> bool:
    """node is x.transpose(1, 2) / x.permute(0, 2, 1, 3) of a 4-D x ([B,S,H,D] <-> [B,H,S,D])."""
    return isinstance(node, fx.Node) and permutation_of(node) == (0, 2, 1, 3)


def node_arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument `name` of a call, whether it was passed by position `index` or by keyword."""
    if name in node.kwargs:
        return node.kwargs[name]
    if len(node.args) > index:
        return node.args[index]
    return default


def erase_if_unused(graph: fx.Graph, nodes: Iterable[fx.Node]) -> None:
    """Erase the given nodes that have no users left, producers after consumers.

    Targeted instead of `graph.eliminate_dead_code()`, which could drop in-place writes
    (`operator.setitem` into an `empty_like` buffer, as Wan's rotary embedding does).
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in sorted(set(nodes), key=lambda n: order.get(n, -1), reverse=True):
        if node in order and not node.users and node.op in ("call_function", "call_method"):
            graph.erase_node(node)
