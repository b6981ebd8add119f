"""The shared vocabulary of tokens and tensors (a leaf module: torch and the standard library only).

Two different "layouts" appear everywhere in a DiT backend; this module names both:

* **tensor layout** -- the memory order of q/k/v/out as the attention op receives them:

      "bhsd"  [B, H, S, D]   (what SDPA takes)
      "bshd"  [B, S, H, D]   (what diffusers' projections produce before their permute)

  `seq_dim`, `heads_dim`, `to_bhsd` and `from_bhsd` are the only places that know which
  dimension is which; `to_bhsd`/`from_bhsd` return views (no copy).

* **token layout** -- where the text and the video tokens sit in one (joint) attention
  sequence, before any permutation a sparse pattern may apply::

      text "before":  [ text (T) | video (F*H*W, frame-major) ]
      text "after":   [ video (F*H*W, frame-major) | text (T) ]
      video token (f, h, w) sits at  video_start + f*H*W + h*W + w

  `TokenGrid` (frames x height x width after patching) and `TextSegment` (where the text sits,
  as the graph analysis finds it) are the inputs; `TokenLayout` is the validated, hashable
  combination the mask factories and the sparse executor use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- tensor layout

BHSD = "bhsd"  # [B, H, S, D]
BSHD = "bshd"  # [B, S, H, D]; the op writes its output in the same layout
TENSOR_LAYOUTS = (BHSD, BSHD)


def check_tensor_layout(layout: str) -> str:
    """`layout` itself; ValueError naming the accepted layouts otherwise."""
    if layout not in TENSOR_LAYOUTS:
        raise ValueError(f"layout must be one of {TENSOR_LAYOUTS}, got {layout!r}")
    return layout


def seq_dim(layout: str) -> int:
    """Index of the sequence dimension: 2 for "bhsd", 1 for "bshd"."""
    return 2 if check_tensor_layout(layout) == BHSD else 1


def heads_dim(layout: str) -> int:
    """Index of the heads dimension: 1 for "bhsd", 2 for "bshd"."""
    return 1 if check_tensor_layout(layout) == BHSD else 2


def to_bhsd(x: Tensor, layout: str) -> Tensor:
    """`x` in `layout` viewed as [B, H, S, D] (no copy)."""
    return x if check_tensor_layout(layout) == BHSD else x.transpose(1, 2)


def from_bhsd(x: Tensor, layout: str) -> Tensor:
    """A [B, H, S, D] tensor viewed in `layout` (no copy); the inverse of `to_bhsd`."""
    return to_bhsd(x, layout)


def tensor_layout_dims(layout: str) -> str:
    """Human-readable dims of a layout for error messages: "[B, H, S, D]" or "[B, S, H, D]"."""
    return "[B, H, S, D]" if check_tensor_layout(layout) == BHSD else "[B, S, H, D]"


# ----------------------------------------------------------------------------- token layout


@dataclass(frozen=True)
class TokenGrid:
    """Video tokens after patching: frames x height x width (images have frames == 1)."""

    frames: int
    height: int
    width: int
    source: str  # how it was found: "conv3d patch embedding at patch_embedding", "option", ...

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def dims(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width} ({self.source})"


TEXT_POSITIONS = ("before", "after")


@dataclass(frozen=True)
class TextSegment:
    """Where the text tokens sit inside a joint (text + video) attention sequence."""

    position: str  # "before" or "after" the video tokens
    length: Optional[int]  # None when it varies at run time (Mochi keeps only valid text tokens)
    source: str

    def token_range(self, total: int) -> tuple[int, int]:
        """[start, end) of the text tokens in a joint sequence of `total` tokens."""
        length = self.length or 0
        return (0, length) if self.position == "before" else (total - length, total)


GridLike = Union[TokenGrid, "TokenLayout", tuple, list]  # a TokenGrid, a TokenLayout or (F, H, W)


@dataclass(frozen=True)
class TokenLayout:
    """Where the video and text tokens sit in the joint sequence (all ints, hashable).

    Validated on construction (ValueError naming the field); `TokenLayout.of(grid, text)` builds
    one from a grid and a text segment.
    """

    frames: int
    height: int
    width: int
    text_len: int = 0
    text_before: bool = False

    def __post_init__(self) -> None:
        for name, value in (("grid.frames", self.frames), ("grid.height", self.height), ("grid.width", self.width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.text_len, bool) or not isinstance(self.text_len, int) or self.text_len < 0:
            raise ValueError(f"text.length must be an int >= 0, got {self.text_len!r}")
        if not isinstance(self.text_before, bool):
            raise ValueError(f"text_before must be a bool, got {self.text_before!r}")

    @classmethod
    def of(cls, grid: GridLike, text: Optional[TextSegment] = None) -> "TokenLayout":
        """Validate `grid` (a TokenGrid or an (F, H, W) tuple) and `text` (None: no text).

        Raises ValueError naming the bad field: grid sizes must be ints >= 1; a text segment
        needs position "before"/"after" and a concrete length >= 0 (not None). A TokenLayout
        given as `grid` (with no `text`) is returned as it is.
        """
        if isinstance(grid, TokenLayout) and text is None:
            return grid
        if isinstance(grid, TokenGrid):
            dims = grid.dims
        elif isinstance(grid, (tuple, list)) and len(grid) == 3:
            dims = tuple(grid)
        else:
            raise ValueError(f"grid must be a TokenGrid or a (frames, height, width) tuple, got {grid!r}")
        text_len, before = 0, False
        if text is not None:
            if not isinstance(text, TextSegment):
                raise ValueError(f"text must be a TextSegment or None, got {text!r}")
            if text.position not in TEXT_POSITIONS:
                raise ValueError(f"text.position must be 'before' or 'after', got {text.position!r}")
            if text.length is None:
                raise ValueError(
                    "text.length is None (it varies at run time); a mask needs a concrete text length: "
                    "pass a TextSegment with length set to an int >= 0"
                )
            text_len, before = text.length, text.position == "before"
        return cls(*dims, text_len=text_len, text_before=before and text_len > 0)

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_video(self) -> int:
        return self.frames * self.height * self.width

    @property
    def total(self) -> int:
        return self.num_video + self.text_len

    @property
    def video_start(self) -> int:
        return self.text_len if self.text_before else 0

    @property
    def text_range(self) -> Optional[tuple[int, int]]:
        """[start, end) of the text tokens, or None without text."""
        if self.text_len == 0:
            return None
        return (0, self.text_len) if self.text_before else (self.num_video, self.total)

    def video_coords(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(frame, row, col) of every video token in frame-major order: three int64 [F*H*W]."""
        idx = torch.arange(self.num_video, device=device)
        hw = self.tokens_per_frame
        return idx // hw, (idx % hw) // self.width, idx % self.width


# Argument names DiTs give their inputs (diffusers' and common research code's spellings).
_BLOCK = re.compile(r"^(?P<container>(?:[A-Za-z_]\w*\.)*?[A-Za-z_]\w*)\.(?P<index>\d+)(?:\.|$)")


@dataclass(frozen=True)
class BlockRef:
    """A repeated block: `transformer_blocks.3` is container 'transformer_blocks', index 3."""

    container: str
    index: int

    @property
    def path(self) -> str:
        return f"{self.container}.{self.index}"


def block_of(path: str) -> Optional[BlockRef]:
    """The outermost `<container>.<int>` prefix of a module path, e.g. blocks.3.attn1 -> blocks.3."""
    match = _BLOCK.match(path)
    if not match:
        return None
    return BlockRef(match.group("container"), int(match.group("index")))


MAIN_INPUT_NAMES = ("hidden_states", "x", "latents", "latent", "sample", "video", "img", "inputs")
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas", "time", "noise_level")


def device_key(device: torch.device | str | None) -> str:
    """A hashable, canonical device name for cache keys ("cpu", "cuda:0", ...)."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (blocks needed to cover `a` tokens with blocks of `b`)."""
    return -(-a // b)


__all__ = [
    "BHSD", "BSHD", "TENSOR_LAYOUTS", "check_tensor_layout", "seq_dim", "heads_dim", "to_bhsd", "from_bhsd",
    "tensor_layout_dims", "TokenGrid", "TextSegment", "TEXT_POSITIONS", "GridLike", "TokenLayout", "device_key",
    "cdiv", "MAIN_INPUT_NAMES", "TIMESTEP_NAMES",
]
