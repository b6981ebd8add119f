"""Find where the text tokens sit in a joint (text + video) attention sequence.

MM-DiT models concatenate the two streams along the sequence dimension before attention:

    Flux, CogVideoX:     q = cat([q_text, q_video], dim=seq)     text *before* video
    SD3, HunyuanVideo:   q = cat([q_video, q_text], dim=seq)     text *after* video

Starting at a site's q, the nearest upstream `cat` along a sequence dimension whose output is
the site's q length and one of whose two pieces is exactly the video tokens identifies the text
segment (the other piece). For single-stream blocks (Flux) the `cat` sits before the first
block and is reached through the residual stream.
"""
from __future__ import annotations

from typing import Optional

import torch.fx as fx

from .fx_utils import call_name, dim_text, shape_of, static_int, walk_back
from ..geometry import TextSegment

SEARCH_LIMIT = 400  # nodes visited per site: a block of a DiT has ~100 nodes


def find_text_segment(q: fx.Node, q_len_expr: str, video_tokens: Optional[str]) -> Optional[TextSegment]:
    """Text segment of a joint site whose q has sequence length `q_len_expr`, given the printed
    number of video tokens `video_tokens` (either may be symbolic: "3*((s18//2))*((s42//2))")."""
    if not video_tokens or q_len_expr in ("?", video_tokens):
        return None
    video = video_tokens
    for node in walk_back(q, SEARCH_LIMIT):
        if call_name(node) != "cat":
            continue
        pieces = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = shape_of(node)
        if out is None or not isinstance(pieces, (list, tuple)) or len(pieces) != 2 or not isinstance(dim, int):
            continue
        dim = dim % len(out)
        if dim in (0, len(out) - 1) or dim_text(out[dim]) != q_len_expr:
            continue
        lengths = [(shape_of(p) or (None,) * len(out))[dim] for p in pieces]
        texts = [dim_text(n) if n is not None else "?" for n in lengths]
        if texts[1] == video and texts[0] != "?":
            return TextSegment("before", static_int(lengths[0]), f"cat at {node.name}")
        if texts[0] == video and texts[1] != "?":
            return TextSegment("after", static_int(lengths[1]), f"cat at {node.name}")
    return None
