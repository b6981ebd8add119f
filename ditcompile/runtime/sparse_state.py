"""Run-time state of sparse attention: per site, CFG branch and input shape, per generation
(read by `ditcompile.sparse_stats`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..masks import PatternChoice
from .steps import GenerationState, shape_text


@dataclass
class SiteState:
    """What one sparse site remembers during a generation, for one CFG branch and input shape."""

    sparse_calls: int = 0
    dense_calls: int = 0
    guard_errors: list = field(default_factory=list)   # [(step, relative L2 error, branch)]
    dense_from_step: Optional[int] = None               # set by the fidelity guard
    choice: Optional[PatternChoice] = None              # the policy's last data-dependent choice
    choice_step: int = -1                               # the step it was made at
    density: Optional[float] = None                     # of the last sparse call
    invalid_pattern: Optional[str] = None               # why the policy's pattern was refused (ran dense)

    def release(self) -> None:
        """Drop the device tensors this site holds (its counts stay)."""
        self.choice = None

    def summary(self) -> dict:
        return {"sparse_calls": self.sparse_calls, "dense_calls": self.dense_calls,
                "guard_errors": list(self.guard_errors), "dense_from_step": self.dense_from_step,
                "density": self.density, "invalid_pattern": self.invalid_pattern}


class SparseState(GenerationState):
    """`SiteState`s of the current generation (`data`: (site path, CFG branch, q's shape) ->
    SiteState): each branch classifies its own heads and has its own fidelity guard, and a new
    resolution starts fresh."""

    def site(self, path: str, generation: int, shape: tuple = (), branch: int = 0) -> SiteState:
        return self.entry((path, branch, tuple(shape)), generation, SiteState)

    def summary(self) -> dict:
        """Per site path: totals over its branches and shapes, "shapes": per shape (branches
        summed), "branches": sparse/dense calls per CFG branch."""
        out: dict = {}
        for (path, branch, shape), s in list(self.data.items()):
            total = out.setdefault(path, {"sparse_calls": 0, "dense_calls": 0, "guard_errors": [],
                                          "dense_from_step": None, "density": None, "invalid_pattern": None,
                                          "shapes": {}, "branches": {}})
            total["sparse_calls"] += s.sparse_calls
            total["dense_calls"] += s.dense_calls
            total["guard_errors"] += s.guard_errors
            if s.dense_from_step is not None and (total["dense_from_step"] is None
                                                  or s.dense_from_step < total["dense_from_step"]):
                total["dense_from_step"] = s.dense_from_step
            if s.density is not None:
                total["density"] = s.density
            if s.invalid_pattern is not None:
                total["invalid_pattern"] = s.invalid_pattern
            per_shape = total["shapes"].setdefault(shape_text(shape), {"sparse_calls": 0, "dense_calls": 0})
            per_shape["sparse_calls"] += s.sparse_calls
            per_shape["dense_calls"] += s.dense_calls
            per_branch = total["branches"].setdefault(branch, {"sparse_calls": 0, "dense_calls": 0})
            per_branch["sparse_calls"] += s.sparse_calls
            per_branch["dense_calls"] += s.dense_calls
        return out


__all__ = ["SiteState", "SparseState"]
