"""Module paths from `node.meta["nn_module_stack"]`, independent of the torch version's spelling.

Dynamo spells the same submodule differently across releases:

    torch 2.13: "L['self'].__dict__['_modules']['blocks'].0.attn1"
    older:      "L['self'].blocks[0].attn1"   or   "L__self___blocks_0_attn1"

`module_path(node)` turns all of them into the dotted path `model.named_modules()` uses,
`blocks.0.attn1`, and `block_of(path)` finds the repeated-block container and index in it.
"""
from __future__ import annotations

import re

import torch.fx as fx

from ..geometry import BlockRef, block_of

_ROOT = re.compile(r"^[LG]\[['\"][^'\"]+['\"]\]")  # L['self'], L['fn'], G['model']: the compiled object
_GETATTR = re.compile(r"getattr\(([^()]*), ['\"]([^'\"]+)['\"]\)")
_TOKEN = re.compile(r"\['([^']*)'\]|\[\"([^\"]*)\"\]|\[(\d+)\]|\.?([A-Za-z_]\w*|\d+)")
_SKIP = {"__dict__", "_modules", "getattr"}


def normalize_module_path(raw: str) -> str:
    """`"L['self'].__dict__['_modules']['blocks'].0.attn1"` -> `"blocks.0.attn1"`."""
    if raw.startswith("L__self___"):  # flattened spelling of old releases; '_' is ambiguous
        return raw[len("L__self___"):].replace("_", ".")
    text = raw.strip()
    while True:  # getattr(X, '0') -> X.0 (older releases spell numeric children this way)
        unwrapped = _GETATTR.sub(r"\1.\2", text)
        if unwrapped == text:
            break
        text = unwrapped
    parts = []
    for match in _TOKEN.finditer(_ROOT.sub("", text)):
        token = next(g for g in match.groups() if g is not None)
        if token in _SKIP:
            continue
        parts.append(token)
    return ".".join(parts)


def module_stack(node: fx.Node) -> list[tuple[str, str]]:
    """[(dotted path, class name), ...] from the outermost to the innermost module."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        raw, typ = value if isinstance(value, tuple) else (str(value), "")
        type_name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
        out.append((normalize_module_path(str(raw)), type_name.rsplit(".", 1)[-1]))
    return out


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost module that made this node ('' at the model's top level)."""
    stack = module_stack(node)
    return stack[-1][0] if stack else ""


def module_class(node: fx.Node) -> str:
    stack = module_stack(node)
    return stack[-1][1] if stack else ""




__all__ = ["module_stack", "module_path", "module_class", "normalize_module_path", "BlockRef", "block_of"]
