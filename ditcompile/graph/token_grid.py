"""Discover the video token grid (frames x height x width after patching) and the main input.

The grid comes from the patch embedding applied to the model's main input:

    conv3d on [B, C, F, H, W]            -> [B, D, F', H', W']        grid F' x H' x W'
    conv2d on [B*F, C, H, W] (from 5-D)  -> [B*F, D, H', W']          grid F  x H' x W'
    conv2d on [B, C, H, W] (an image)    -> [B, D, H', W']            grid 1  x H' x W'
    meshgrid(arange(F), arange(H), arange(W)) with F*H*W == tokens     grid F  x H  x W
        (rotary coordinates of models fed pre-patched tokens, e.g. LTX-Video)

Models fed packed tokens with data-dependent positions (Flux's img_ids) have no discoverable
grid; the token count is still known from the main input, and `graph.token_grid` sets the grid.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from .fx_utils import dim_text, is_function, shape_of, static_shape, tensor_inputs, walk_back
from .module_path import module_path
from .sites import DynamicGrid
from ..geometry import MAIN_INPUT_NAMES, TIMESTEP_NAMES, TokenGrid
from ..runtime.continuity import LatentView, latent_view

CONV3D = {F.conv3d, torch.conv3d}
CONV2D = {F.conv2d, torch.conv2d}
_NOT_MAIN = re.compile(r"encoder|text|context|prompt|caption|_buffers_|_parameters_|timestep|pooled|guidance|ids|mask|freqs|rotary")


def _input_name(node: fx.Node) -> str:
    """'hidden_states' from Dynamo's placeholder names 'l_kwargs_hidden_states_' / 'l_hidden_states_'."""
    name = re.sub(r"^l_(kwargs_|args_)?", "", node.name)
    return re.sub(r"_+\d*$", "", name)


def find_main_input(graph: fx.Graph, example_inputs: Sequence) -> Optional[fx.Node]:
    """The placeholder carrying the noisy latents (the first forward argument of a DiT)."""
    candidates = []
    for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder"):
        value = example_inputs[i] if i < len(example_inputs) else None
        if not isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Parameter):
            continue
        if value.dim() < 3 or _NOT_MAIN.search(node.name):
            continue
        name = _input_name(node)
        rank = MAIN_INPUT_NAMES.index(name) if name in MAIN_INPUT_NAMES else len(MAIN_INPUT_NAMES)
        candidates.append((rank, i, node))
    return min(candidates)[2] if candidates else None




def find_timestep_input(graph: fx.Graph, example_inputs: Sequence) -> Optional[int]:
    """Index (into example_inputs) of the placeholder carrying the diffusion timestep: a number
    (a SymInt / SymFloat once Dynamo made it dynamic), or a tensor of shape [], [B] or [B, S] (per-token timesteps, e.g. image-to-video models)."""
    for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder"):
        value = example_inputs[i] if i < len(example_inputs) else None
        if isinstance(value, torch.nn.Parameter):
            continue
        number = isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(value, bool)
        if _input_name(node) in TIMESTEP_NAMES and (number or (isinstance(value, torch.Tensor) and value.dim() <= 2)):
            return i
    return None


# Inputs that do not tell CFG branches apart: parameters, buffers and positional tables (constant),
# and ControlNet-style residuals, which change at every step.
_NOT_CONDITION = re.compile(r"_buffers_|_parameters_|freqs|rotary|rope|(img|txt|position|pos)_ids|^l_self_"
                            r"|controlnet|block_samples|residual")


def find_condition_inputs(graph: fx.Graph, example_inputs: Sequence, exclude: Sequence[Optional[int]]) -> tuple[int, ...]:
    """Indices of the tensor inputs that condition a call (text embeddings, masks, guidance,
    pooled projections): every tensor placeholder that is not a parameter or buffer, not a
    positional table (rotary frequencies, token ids) and not one of `exclude` (the main input and
    the timestep). Their values tell CFG branches apart and stay the same across steps."""
    found = []
    for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder"):
        value = example_inputs[i] if i < len(example_inputs) else None
        if i in exclude or not isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Parameter):
            continue
        if _NOT_CONDITION.search(node.name):
            continue
        found.append(i)
    return tuple(found)


def find_main_output(graph: fx.Graph, main_input: Optional[fx.Node]) -> tuple[Optional[int], Optional[LatentView]]:
    """(index, view) of the first graph output comparable with the main input: the model's
    prediction (same rank and batch, at most one other size different -- image-conditioning
    channels in the input, learned variance in the output). (None, None) when there is none."""
    in_shape = static_shape(main_input) if main_input is not None else None
    if in_shape is None:
        return None, None
    outputs = graph.output_node().args[0]
    for i, node in enumerate(outputs if isinstance(outputs, (list, tuple)) else (outputs,)):
        out_shape = static_shape(node)
        view = latent_view(in_shape, out_shape) if out_shape is not None else None
        if view is not None:
            return i, view
    return None, None


def placeholder_index(graph: fx.Graph, node: Optional[fx.Node]) -> Optional[int]:
    """Position of a placeholder among the graph's inputs (None for None)."""
    if node is None:
        return None
    return [n for n in graph.nodes if n.op == "placeholder"].index(node)


def find_anchor_input(example_inputs: Sequence) -> Optional[int]:
    """Index of the first parameter input: identifies the model instance at run time."""
    for i, value in enumerate(example_inputs):
        if isinstance(value, torch.nn.Parameter):
            return i
    return None


def _depends_on(node: fx.Node, target: fx.Node, limit: int = 40) -> bool:
    return any(n is target for n in walk_back(node, limit))


def discover_grid(graph: fx.Graph, main_input: Optional[fx.Node]) -> Optional[TokenGrid]:
    if main_input is None:
        return None
    main_shape = static_shape(main_input) or ()
    batch = main_shape[0] if main_shape else None
    for node in graph.nodes:
        conv3d, conv2d = is_function(node, *CONV3D), is_function(node, *CONV2D)
        if not (conv3d or conv2d) or not _depends_on(node.args[0], main_input):
            continue
        out = static_shape(node)
        if out is None or None in out:
            return None  # dynamic spatial size: no static grid
        where = module_path(node) or "the model's top level"
        if conv3d and len(out) == 5:
            return TokenGrid(out[2], out[3], out[4], f"conv3d patch embedding at {where}")
        if conv2d and len(out) == 4:
            if len(main_shape) == 5 and batch and out[0] % batch == 0:
                return TokenGrid(out[0] // batch, out[2], out[3], f"conv2d patch embedding per frame at {where}")
            if len(main_shape) == 4:
                return TokenGrid(1, out[2], out[3], f"conv2d patch embedding at {where}")
    return None


def discover_dynamic_grid(graph: fx.Graph, main_input: Optional[fx.Node]) -> Optional[DynamicGrid]:
    """The grid of a dynamic-shape graph, from a patch embedding whose output has symbolic sizes:
    conv3d on [B, C, F, H, W] (dims 2, 3, 4), conv2d on an image [B, C, H, W] (1 x dims 2, 3), or
    conv2d per frame on [B*F, C, H, W] (dim 0 // the main input's batch x dims 2, 3)."""
    if main_input is None:
        return None
    main_shape = shape_of(main_input) or ()
    for node in graph.nodes:
        conv3d, conv2d = is_function(node, *CONV3D), is_function(node, *CONV2D)
        if not (conv3d or conv2d) or not _depends_on(node.args[0], main_input):
            continue
        out = shape_of(node)
        if out is None:
            return None
        frames_from = None
        if conv3d and len(out) == 5:
            dims: tuple = (2, 3, 4)
        elif conv2d and len(out) == 4 and len(main_shape) == 4:
            dims = (None, 2, 3)
        elif conv2d and len(out) == 4 and len(main_shape) == 5:  # per frame: [B*F, D, H', W']
            dims, frames_from = (0, 2, 3), main_input
        else:
            return None
        sizes = [1 if d is None else out[d] for d in dims]
        if frames_from is not None:
            sizes[0] = out[0] // main_shape[0]
        tokens = sizes[0] * sizes[1] * sizes[2]
        where = module_path(node) or "the model's top level"
        kind = "conv3d" if conv3d else "conv2d" if frames_from is None else "conv2d per frame"
        return DynamicGrid(node, dims, "x".join(dim_text(s) for s in sizes), dim_text(tokens),
                           f"{kind} patch embedding at {where}", frames_from=frames_from)
    return None


def discover_rope_grid(graph: fx.Graph, num_tokens: Optional[int]) -> Optional[TokenGrid]:
    """Grid from `meshgrid(arange(F), arange(H), arange(W))` rotary coordinates."""
    if not num_tokens:
        return None
    for node in graph.nodes:
        if not is_function(node, torch.meshgrid, torch.functional.meshgrid):
            continue
        axes = [static_shape(a) for a in tensor_inputs(node)]
        if len(axes) == 3 and all(a is not None and len(a) == 1 for a in axes):
            f, h, w = (a[0] for a in axes)
            if None not in (f, h, w) and f * h * w == num_tokens:
                return TokenGrid(f, h, w, f"rotary meshgrid at {module_path(node) or 'top level'}")
    return None


def tokens_of_main_input(main_input: Optional[fx.Node]) -> Optional[int]:
    """Sequence length of a main input that is already a token sequence [B, S, C]."""
    shape = static_shape(main_input) if main_input is not None else None
    return shape[1] if shape is not None and len(shape) == 3 else None


def tokens_expr_of_main_input(main_input: Optional[fx.Node]) -> Optional[str]:
    """The printed sequence length ('s2' when symbolic) of a main input [B, S, C] (a regionally
    compiled block's hidden states), or None."""
    shape = shape_of(main_input) if main_input is not None else None
    return dim_text(shape[1]) if shape is not None and len(shape) == 3 else None


__all__ = ["find_main_input", "find_timestep_input", "find_condition_inputs", "find_anchor_input",
           "placeholder_index", "discover_grid", "discover_dynamic_grid", "discover_rope_grid",
           "tokens_of_main_input", "tokens_expr_of_main_input", "find_main_output"]
