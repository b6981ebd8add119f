"""Run-time state of sparse attention: per site and per input shape, per generation
(read by `ditcompile.sparse_stats`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..masks import PatternChoice
from .steps import GenerationState


@dataclass
class SiteState:
    """What one sparse site remembers during a generation, for one input shape."""

    sparse_calls: int = 0
    dense_calls: int = 0
    guard_errors: list = field(default_factory=list)   # [(step, relative L2 error)]
    dense_from_step: Optional[int] = None               # set by the fidelity guard
    choice: Optional[PatternChoice] = None              # the policy's last data-dependent choice
    choice_step: int = -1                               # the step it was made at
    density: Optional[float] = None                     # of the last sparse call

    def release(self) -> None:
        """Drop the device tensors this site holds (its counts stay)."""
        self.choice = None

    def summary(self) -> dict:
        return {"sparse_calls": self.sparse_calls, "dense_calls": self.dense_calls,
                "guard_errors": list(self.guard_errors), "dense_from_step": self.dense_from_step,
                "density": self.density}


def shape_text(shape: tuple) -> str:
    """`(2, 12, 288, 64)` -> "2x12x288x64" (the key of per-shape summaries)."""
    return "x".join(str(s) for s in shape) or "-"


class SparseState(GenerationState):
    """`SiteState`s of the current generation (`data`: (site path, q's shape) -> SiteState)."""

    def site(self, path: str, generation: int, shape: tuple = ()) -> SiteState:
        return self.entry((path, tuple(shape)), generation, SiteState)

    def summary(self) -> dict:
        """Per site path: totals over the shapes it ran at, and "shapes": one summary per shape."""
        out: dict = {}
        for (path, shape), s in self.data.items():
            total = out.setdefault(path, {"sparse_calls": 0, "dense_calls": 0, "guard_errors": [],
                                          "dense_from_step": None, "density": None, "shapes": {}})
            total["sparse_calls"] += s.sparse_calls
            total["dense_calls"] += s.dense_calls
            total["guard_errors"] += s.guard_errors
            if s.dense_from_step is not None:
                total["dense_from_step"] = min(s.dense_from_step, total["dense_from_step"] or s.dense_from_step)
            if s.density is not None:
                total["density"] = s.density
            total["shapes"][shape_text(shape)] = s.summary()
        return out


__all__ = ["SiteState", "SparseState", "shape_text"]
