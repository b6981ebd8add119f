"""Valid-token selection before attention, rewritten as key padding (issue 16).

Mochi's attention processor (diffusers `MochiAttnProcessor2_0`) keeps only the valid prompt
tokens of each batch element before its joint attention, and pads the result back::

    idx = torch.nonzero(mask[b][None, :].flatten()).flatten()        # [u], u data-dependent
    q_b = torch.cat([q[b:b+1], enc_q[b:b+1, :, idx, :]], dim=2)       # [1, H, S + u, D]
    (k_b, v_b alike)
    o_b = F.scaled_dot_product_attention(q_b, k_b, v_b)               # [1, H, S + u, D]
    o_b = F.pad(o_b, (0, 0, 0, S + T - (S + u)))                      # [1, H, S + T, D]

`nonzero` has a data-dependent output size. Dynamo breaks the graph there unless it captures
such operators (ditaccel turns `torch._dynamo.config.capture_dynamic_output_shape_ops` on while
it traces, `compat.install_trace_context`); captured, the sequence length is an unbacked size
and the graph cannot be split by the step cache or tuned per shape. This rewrite replaces the
selection by the same computation on static shapes::

    valid = mask[b][None, :].flatten() != 0                           # [T] bool
    q_b = torch.cat([q[b:b+1], enc_q[b:b+1, :, :, :]], dim=2)         # [1, H, S + T, D]
    keep = torch.cat([ones(S, bool), valid])                          # [S + T] which keys count
    o = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=keep.view(1, 1, 1, S + T))
    o_b = compact(o)                                                  # [1, H, S + T, D]

Why it is the same: attention over the selected keys equals attention over all keys with the
others masked out (a masked key gets weight exactly 0), and each selected query row is computed
the same way. The eager result lists the outputs of the kept tokens in order, then zeros;
`compact` zeroes the rows of dropped queries and moves them to the end with a stable sort of the
drop flags (`argsort(~keep, stable=True)`): an identity for the usual prefix masks, exact for
any mask. Only the piece that holds the selection is reordered when it is the last piece.

The selection index may be `torch.nonzero(m).flatten()` of a 1-D mask (or `argwhere`),
`torch.nonzero(m, as_tuple=True)[0]` (or `torch.where(m)[0]`), or the boolean mask itself
(`x[:, :, m]`) -- not `nonzero(m)[0]`, which is one row; q, k and v must select with the same index in the same piece
of their `cat`, the SDPA must have no mask, dropout or causality of its own, and its output's only
user must be the pad back to the full length. Anything else is left as it is (the report's
attention row then shows a data-dependent text length).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols, statically_known_true

from .attention_match import SDPA_TARGETS
from .fx_edit import add_node
from .fx_utils import call_name, example_of, example_value, is_function, is_method, node_arg, normalize_dim
from .module_path import module_path

_NONZERO = (torch.nonzero, torch.Tensor.nonzero)
_PAD = (F.pad, torch._C._nn.pad)
_SEQ_DIM = 2  # q, k, v are [B, H, S, D]


@dataclass(frozen=True)
class Selection:
    """One operand piece `x[:, :, idx]` along the sequence dim (2): the tensor indexed, the index
    tuple, and the 1-D bool node saying which tokens are kept."""
    base: fx.Node
    index: tuple
    key: fx.Node          # the index node (shared by q, k and v)
    valid_source: fx.Node  # the 1-D mask whose nonzero entries are kept
    via_nonzero: bool


def rewrite_valid_token_selections(gm: fx.GraphModule) -> list[str]:
    """Rewrite every matching SDPA call of `gm` (module docstring); returns one note per graph
    region rewritten, e.g. "blocks.0.attn1: valid-token selection (torch.nonzero) -> key-padding
    mask (4 calls)". Never raises on a graph it does not understand: such calls stay."""
    done: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in SDPA_TARGETS and _rewrite(gm.graph, node):
            path = module_path(node) or "<top>"
            done[path] = done.get(path, 0) + 1
    if done:
        _erase_dead_nonzero(gm.graph)
        gm.recompile()
    return [f"{path}: valid-token selection (torch.nonzero / boolean index) rewritten as a key-padding mask"
            f"{f' ({n} calls)' if n > 1 else ''}" for path, n in done.items()]


def data_dependent_ops(gm: fx.GraphModule) -> list[str]:
    """Notes on the operators left in `gm` whose output size depends on the data (captured by
    Dynamo with unbacked sizes: `nonzero`, boolean indexing, `masked_select`, `torch.where(m)`,
    `argwhere`, `unique`, ...): what follows them has sizes known only at run time. A producer is
    a node whose example value has an unbacked size symbol none of its inputs has."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method") or not _new_unbacked(node):
            continue
        what = "boolean index" if _bool_index(node) else f"torch.{call_name(node)}"
        where = f"{what} at {module_path(node) or '<top>'}"
        counts[where] = counts.get(where, 0) + 1
    return [f"data-dependent size kept: {where}{f' ({n} calls)' if n > 1 else ''} (the tensors after it have "
            "sizes known only at run time)" for where, n in counts.items()]


def _unbacked(value: Any) -> set:
    try:
        return set(free_unbacked_symbols(value))
    except Exception:  # noqa: BLE001 -- a value the helper does not know: no symbols
        return set()


def _new_unbacked(node: fx.Node) -> bool:
    value = example_of(node)
    if not isinstance(value, (torch.Tensor, tuple, list)):
        return False
    mine = _unbacked(value)
    if not mine:
        return False
    inherited = set().union(*(_unbacked(example_of(n)) for n in node.all_input_nodes))
    return bool(mine - inherited)


def _bool_index(node: fx.Node) -> bool:
    if not is_function(node, operator.getitem):
        return False
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    return any(isinstance(i, fx.Node) and getattr(example_value(i), "dtype", None) == torch.bool for i in index)


def _rewrite(graph: fx.Graph, sdpa: fx.Node) -> bool:
    q, k, v = (node_arg(sdpa, i, name) for i, name in enumerate(("query", "key", "value")))
    if node_arg(sdpa, 3, "attn_mask") is not None or node_arg(sdpa, 4, "dropout_p", 0.0) not in (0, 0.0):
        return False
    if node_arg(sdpa, 5, "is_causal", False) is not False:
        return False
    cats = [_seq_cat(t) for t in (q, k, v)]
    if any(c is None for c in cats):
        return False
    found = [_selection_piece(pieces) for pieces, _ in cats]
    if any(f is None for f in found):
        return False
    (pos, sel), *others = found
    if any(p != pos or s.key is not sel.key for p, s in others):
        return False
    pad = _only_pad_user(sdpa)
    full = _seq_len(pad) if pad is not None else None
    lengths = [_piece_lengths(pieces, pos, s) for (pieces, _), (_, s) in zip(cats, found)]
    if full is None or any(n is None for n in lengths):
        return False
    if not all(_same(a, b) for n in lengths[1:] for a, b in zip(n, lengths[0])):
        return False
    before, total = sum(lengths[0][:pos]), sum(lengths[0])  # ints, or SymInts with dynamic shapes
    if not _same(total, full):
        return False  # the pad does not restore the full length
    fake_mode = getattr(example_value(q), "fake_mode", None)
    with graph.inserting_before(sdpa):
        operands = [_full_cat(graph, sdpa, pieces, dim, pos, s, fake_mode) for (pieces, dim), (_, s) in zip(cats, found)]
        valid = _valid_flags(graph, sdpa, sel, fake_mode)                                  # [T] bool
        keep = _keep_flags(graph, sdpa, cats[0][0], pos, valid, fake_mode)                   # [L] bool
        mask = add_node(graph, sdpa, "call_method", "view", (keep, 1, 1, 1, -1), fake_mode)
        kwargs = {"attn_mask": mask}
        if node_arg(sdpa, 7, "scale") is not None:
            kwargs["scale"] = node_arg(sdpa, 7, "scale")
        out = add_node(graph, sdpa, "call_function", F.scaled_dot_product_attention, tuple(operands), fake_mode,
                       kwargs)                                                               # [B, H, L, D]
        if pos == len(cats[0][0]) - 1 and isinstance(total, int):  # the selection is the last piece: only it moves
            head = add_node(graph, sdpa, "call_function", operator.getitem,
                            (out, (slice(None), slice(None), slice(0, before))), fake_mode)
            tail = add_node(graph, sdpa, "call_function", operator.getitem,
                            (out, (slice(None), slice(None), slice(before, total))), fake_mode)
            tail = _compact(graph, sdpa, tail, valid, fake_mode)
            result = add_node(graph, sdpa, "call_function", torch.cat, ([head, tail],), fake_mode, {"dim": 2})
        else:
            result = _compact(graph, sdpa, out, keep, fake_mode)
    pad.replace_all_uses_with(result)
    result.meta.update({k: v for k, v in pad.meta.items() if k not in ("example_value", "val")})
    inputs = [*pad.all_input_nodes, *sdpa.all_input_nodes]
    graph.erase_node(pad)
    graph.erase_node(sdpa)
    _erase_unused(graph, inputs)
    return True


def _seq_cat(node: Any) -> Optional[tuple[list, int]]:
    """(pieces, dim) when `node` is `torch.cat(pieces, dim)` of 4-D tensors along dim 2."""
    if not isinstance(node, fx.Node) or not is_function(node, torch.cat):
        return None
    pieces = node_arg(node, 0, "tensors")
    value = example_value(node)
    if not isinstance(pieces, (list, tuple)) or len(pieces) < 2 or value is None or value.dim() != 4:
        return None
    dim = normalize_dim(node_arg(node, 1, "dim", 0), 4)
    return (list(pieces), dim) if dim == _SEQ_DIM else None


def _selection_piece(pieces: list) -> Optional[tuple[int, Selection]]:
    found = [(i, s) for i, s in enumerate(_selection(p) for p in pieces) if s is not None]
    return found[0] if len(found) == 1 else None


def _selection(node: Any) -> Optional[Selection]:
    """`base[(..., idx, ...)]` with one tensor index at dim 2 of a 4-D base, slices elsewhere."""
    if not isinstance(node, fx.Node) or not is_function(node, operator.getitem):
        return None
    base, index = node.args
    base_value = example_value(base)
    if base_value is None or base_value.dim() != 4 or not isinstance(index, tuple) or len(index) < 3:
        return None
    tensors = [i for i, part in enumerate(index) if isinstance(part, fx.Node)]
    if tensors != [_SEQ_DIM] or any(not isinstance(p, slice) for i, p in enumerate(index) if i != _SEQ_DIM):
        return None
    if any(p != slice(None) for p in index[_SEQ_DIM + 1:]):
        return None
    key = index[_SEQ_DIM]
    source = _nonzero_source(key)
    if source is not None:
        return Selection(base, index, key, source, True)
    value = example_value(key)
    if value is not None and value.dtype == torch.bool and value.dim() == 1:
        return Selection(base, index, key, key, False)
    return None


def _nonzero_source(node: fx.Node) -> Optional[fx.Node]:
    """The 1-D tensor m when `node` is `nonzero(m).flatten()` ([u, 1] -> [u]),
    `argwhere(m).flatten()`, `nonzero(m, as_tuple=True)[0]` or `torch.where(m)[0]`."""
    inner = node
    as_tuple = False
    if is_method(inner, "flatten") or is_function(inner, torch.flatten):
        if len(inner.args) > 1 or inner.kwargs:
            return None  # flatten(start, end): not checked, leave it
        inner = inner.args[0]
    elif is_function(inner, operator.getitem) and inner.args[1] == 0:
        inner, as_tuple = inner.args[0], True  # only the as_tuple=True form: nonzero(m)[0] is one row
    if not isinstance(inner, fx.Node):
        return None
    if as_tuple and is_function(inner, torch.where) and len(inner.args) == 1 and not inner.kwargs:
        pass  # torch.where(m) is nonzero(m, as_tuple=True)
    elif not as_tuple and (is_function(inner, torch.argwhere) or is_method(inner, "argwhere")):
        pass  # argwhere(m) is nonzero(m)
    elif not (is_function(inner, *_NONZERO) or is_method(inner, "nonzero")):
        return None
    elif bool(node_arg(inner, 1, "as_tuple", False)) != as_tuple:
        return None
    source = inner.args[0]
    value = example_value(source)
    return source if value is not None and value.dim() == 1 else None


def _only_pad_user(sdpa: fx.Node) -> Optional[fx.Node]:
    users = list(sdpa.users)
    if len(users) != 1 or not is_function(users[0], *_PAD):
        return None
    pad = users[0]
    widths = node_arg(pad, 1, "pad")
    mode = node_arg(pad, 2, "mode", "constant")
    fill = node_arg(pad, 3, "value", None)
    if not isinstance(widths, (list, tuple)) or len(widths) != 4 or tuple(widths[:3]) != (0, 0, 0):
        return None  # (0, 0, 0, n): pads only the end of the sequence dim
    return pad if mode == "constant" and fill in (None, 0, 0.0) else None


def _seq_len(node: fx.Node) -> Any:
    """Dim 2 of a 4-D node's value: an int, a SymInt (dynamic shapes), or None."""
    value = example_value(node)
    return value.shape[2] if value is not None and value.dim() == 4 else None


def _same(a: Any, b: Any) -> bool:
    """a == b for sizes, without adding a guard: symbolic sizes must be provably equal."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        return bool(statically_known_true(a == b))
    except Exception:  # noqa: BLE001 -- not comparable: not the pattern
        return False


def _piece_lengths(pieces: list, pos: int, sel: Selection) -> Optional[list]:
    """Sequence lengths of the pieces (ints or SymInts) with the selection's piece at its full
    length, which must be the mask's length."""
    out = []
    for i, piece in enumerate(pieces):
        n = _seq_len(sel.base) if i == pos else _seq_len(piece)
        if n is None:
            return None
        out.append(n)
    full_valid = example_value(sel.valid_source)
    if full_valid is None or not _same(full_valid.shape[0], out[pos]):
        return None
    return out


def _full_cat(graph: fx.Graph, like: fx.Node, pieces: list, dim: int, pos: int, sel: Selection, fake_mode: Any
              ) -> fx.Node:
    index = tuple(slice(None) if i == _SEQ_DIM else p for i, p in enumerate(sel.index))
    whole = add_node(graph, like, "call_function", operator.getitem, (sel.base, index), fake_mode)
    pieces = [whole if i == pos else p for i, p in enumerate(pieces)]
    return add_node(graph, like, "call_function", torch.cat, (pieces,), fake_mode, {"dim": dim})


def _valid_flags(graph: fx.Graph, like: fx.Node, sel: Selection, fake_mode: Any) -> fx.Node:
    if sel.via_nonzero:  # nonzero keeps the entries != 0 (True for bool)
        return add_node(graph, like, "call_function", operator.ne, (sel.valid_source, 0), fake_mode)
    return sel.valid_source


def _keep_flags(graph: fx.Graph, like: fx.Node, pieces: list, pos: int, valid: fx.Node, fake_mode: Any) -> fx.Node:
    """[L] bool: True for every token of the other pieces (their lengths read from the pieces
    themselves, so symbolic lengths need no size node), the mask's flags for the selection."""
    parts = []
    for i, piece in enumerate(pieces):
        if i == pos:
            parts.append(valid)
        else:
            row = add_node(graph, like, "call_function", operator.getitem, (piece, (0, 0, slice(None), 0)), fake_mode)
            parts.append(add_node(graph, like, "call_function", torch.ones_like, (row,), fake_mode, {"dtype": torch.bool}))
    return add_node(graph, like, "call_function", torch.cat, (parts,), fake_mode)


def _compact(graph: fx.Graph, like: fx.Node, out: fx.Node, keep: fx.Node, fake_mode: Any) -> fx.Node:
    """Rows of `out` ([B, H, L, D]) for kept tokens first, in order, then zeros: what the eager
    code's selection followed by the pad produces."""
    rows = add_node(graph, like, "call_method", "view", (keep, 1, 1, -1, 1), fake_mode)
    zeroed = add_node(graph, like, "call_function", torch.mul, (out, rows), fake_mode)
    dropped = add_node(graph, like, "call_method", "to", (add_node(graph, like, "call_function", operator.invert,
                                                                  (keep,), fake_mode), torch.uint8), fake_mode)
    order = add_node(graph, like, "call_function", torch.argsort, (dropped,), fake_mode, {"stable": True})
    return add_node(graph, like, "call_function", torch.index_select, (zeroed, 2, order), fake_mode)


def _erase_unused(graph: fx.Graph, start: list) -> None:
    """Erase the nodes in `start` that have no users left, then their inputs that have none left,
    and so on (in-place writes and calls with effects are never erased)."""
    stack = [n for n in start if isinstance(n, fx.Node)]
    while stack:
        node = stack.pop()
        if getattr(node, "_erased", False) or node.op not in ("call_function", "call_method") or node.users:
            continue
        if not _pure(node):
            continue
        inputs = list(node.all_input_nodes)
        graph.erase_node(node)
        stack.extend(inputs)


def _erase_dead_nonzero(graph: fx.Graph) -> None:
    """Erase data-dependent producers (`nonzero`, boolean indexing) whose results now only feed
    Dynamo's runtime asserts on their sizes (u >= 0, u <= T), with everything in between (tuple
    items, size arithmetic) and those asserts."""
    for node in [n for n in graph.nodes if is_function(n, *_NONZERO, torch.argwhere) or is_method(n, "nonzero", "argwhere")
                 or (is_function(n, torch.where) and len(n.args) == 1) or _bool_index(n)]:
        if getattr(node, "_erased", False):
            continue
        seen, frontier = [], [node]
        while frontier:
            current = frontier.pop()
            for user in current.users:
                if user not in seen:
                    seen.append(user)
                    frontier.append(user)
        if not seen or not all(n.op in ("call_function", "call_method") and (_is_size_assert(n) or _pure(n))
                               for n in seen):
            continue  # something else reads it: it stays
        order = {n: i for i, n in enumerate(graph.nodes)}
        for dead in sorted(seen, key=order.__getitem__, reverse=True):
            graph.erase_node(dead)
        inputs = list(node.all_input_nodes)
        graph.erase_node(node)
        _erase_unused(graph, inputs)


def _is_size_assert(node: fx.Node) -> bool:
    name = str(node.target)
    return any(s in name for s in ("_assert_scalar", "sym_constrain_range", "_check_is_size"))


def _pure(node: fx.Node) -> bool:
    """A node whose removal (when unused) changes nothing: not an in-place write or a call with
    effects (`operator.setitem`, `Tensor.copy_`, `*_` methods)."""
    if node.target in (operator.setitem,) or (isinstance(node.target, str) and node.target.endswith("_")):
        return False
    name = getattr(node.target, "__name__", str(node.target))
    if name.endswith("_") and not name.startswith("__"):
        return False
    return not node.is_impure()


__all__ = ["rewrite_valid_token_selections", "data_dependent_ops"]
