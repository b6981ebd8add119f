"""`analyze_graph`: one pass over a Dynamo graph producing the `GraphAnalysis` all passes share.

Order: main input -> token grid (patch embedding, rotary meshgrid, or the `graph.token_grid`
option) -> attention and linear sites -> per-site kind (self / cross / joint / spatial /
temporal) and text segment.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.fx as fx

from .attention_match import find_attention_sites, projection_input, unmatched_softmax
from .fx_utils import example_value, static_shape
from .joint import find_text_segment
from .linear_match import find_linear_sites
from ..geometry import TextSegment, TokenGrid
from .sites import CROSS, JOINT, SELF, SPATIAL, TEMPORAL, AttentionSite, GraphAnalysis
from .token_grid import (
    discover_dynamic_grid, discover_grid, discover_rope_grid, find_anchor_input, find_condition_inputs, find_main_input,
    find_main_output, find_timestep_input, placeholder_index, tokens_expr_of_main_input, tokens_of_main_input,
)


def analyze_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence,
    token_grid: Optional[Sequence[int]] = None,
    text_position: str = "auto",
) -> GraphAnalysis:
    """Describe every attention and linear site of `gm`.

    token_grid: (frames, height, width) overriding discovery (a preset or user option).
    text_position: "auto" (discover), "before"/"after" (override where a joint site's
        text segment cannot be discovered), or "none" (the model has no joint attention).
    """
    graph = gm.graph
    notes: list[str] = []
    main = find_main_input(graph, example_inputs)
    main_shape = static_shape(main) if main is not None else None
    batch = main_shape[0] if main_shape else None
    dynamic = any(isinstance(x, torch.SymInt) for x in example_inputs) or any(
        static_shape(n) is not None and None in static_shape(n)
        for n in graph.nodes if n.op == "placeholder" and example_value(n) is not None
    )

    grid = discover_grid(graph, main)
    num_tokens = grid.num_tokens if grid else tokens_of_main_input(main)
    if grid is None:
        grid = discover_rope_grid(graph, num_tokens)
    if token_grid is not None:
        option_grid = TokenGrid(*(int(x) for x in token_grid), source="option graph.token_grid")
        if grid is not None and grid.num_tokens != option_grid.num_tokens:
            notes.append(f"graph.token_grid {option_grid.frames}x{option_grid.height}x{option_grid.width} "
                         f"replaces the discovered grid {grid}")
        grid = option_grid
        num_tokens = grid.num_tokens
    if main is None:
        notes.append("no main latent input found (no placeholder named hidden_states/x/latents/sample)")
    elif grid is None and not dynamic:
        notes.append("token grid not discoverable (packed tokens with data-dependent positions?); "
                     "set graph.token_grid = [frames, height, width] to enable grid-based passes")

    dynamic_grid = discover_dynamic_grid(graph, main) if grid is None and num_tokens is None else None
    tokens_expr = str(num_tokens) if num_tokens else (
        dynamic_grid.tokens_expr if dynamic_grid else tokens_expr_of_main_input(main))
    found = find_attention_sites(graph)
    sites = tuple(_classify(site, grid, num_tokens, tokens_expr, batch, text_position) for site in found)
    if not sites:
        notes.append("no attention found in this graph")
    softmax_left = unmatched_softmax(graph, found)
    if softmax_left:
        notes.append(f"{softmax_left} softmax call(s) not recognised as attention (attention written with einsum "
                     "or another spelling than SDPA / matmul-softmax-matmul?): kept as written, no attention "
                     "feature applies to them")
    timestep = find_timestep_input(graph, example_inputs)
    main_index = placeholder_index(graph, main)
    output_index, view = find_main_output(graph, main)
    return GraphAnalysis(
        attention=sites, linear=tuple(find_linear_sites(graph, example_inputs)), grid=grid,
        num_video_tokens=num_tokens, batch=batch, main_input=main.name if main is not None else None,
        notes=tuple(notes), dynamic=dynamic, timestep_input=timestep,
        anchor_input=find_anchor_input(example_inputs), main_input_index=main_index,
        condition_inputs=find_condition_inputs(graph, example_inputs, (main_index, timestep)),
        dynamic_grid=dynamic_grid, main_output_index=output_index, latent_view=view,
        unmatched_softmax=softmax_left,
    )


def _classify(site: AttentionSite, grid: Optional[TokenGrid], num_tokens: Optional[int], tokens_expr: Optional[str],
              batch: Optional[int], text_position: str) -> AttentionSite:
    """The site with its kind (self / cross / joint / spatial / temporal), the tokens its queries
    are (video, video+text, other) and, for joint attention, where the text sits. `tokens_expr`:
    the printed number of video tokens (symbolic in a dynamic-shape graph)."""
    sq = site.q_len
    if text_position != "none" and site.q is not None and site.equal_lengths:
        segment = find_text_segment(site.q, site.q_len_expr, tokens_expr)
        if segment is None and text_position in ("before", "after") and sq and num_tokens and sq > num_tokens:
            segment = TextSegment(text_position, sq - num_tokens, "option graph.text_position")
        elif segment is not None and text_position in ("before", "after") and segment.position != text_position:
            segment = TextSegment(text_position, segment.length, "option graph.text_position")
        if segment is not None:
            return dataclasses.replace(site, kind=JOINT, tokens="video+text", text=segment)
    if grid is not None and sq is not None and site.equal_lengths and site.batch is not None and batch:
        if grid.frames > 1 and sq == grid.height * grid.width and site.batch == batch * grid.frames:
            return dataclasses.replace(site, kind=SPATIAL, tokens="video")
        if sq == grid.frames and site.batch == batch * grid.height * grid.width:
            return dataclasses.replace(site, kind=TEMPORAL, tokens="video")
    same_stream = _same_projection_input(site)
    kind = SELF if site.equal_lengths and same_stream is not False else CROSS
    per_frame = grid is not None and sq == grid.height * grid.width and site.batch == (batch or 0) * grid.frames
    tokens = site.tokens
    if (tokens_expr and site.q_len_expr == tokens_expr) or per_frame:
        tokens = "video"
    elif site.q_len_expr != "?":
        tokens = "other"
    return dataclasses.replace(site, kind=kind, tokens=tokens)


def _same_projection_input(site: AttentionSite) -> Optional[bool]:
    q_in, k_in = projection_input(site.q), projection_input(site.k)
    if q_in is None or k_in is None:
        return None
    return q_in is k_in
