"""Run-time state of sparse attention: per site, per generation (read by `ditcompile.sparse_stats`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..masks import PatternChoice
from .steps import GenerationState


@dataclass
class SiteState:
    """What one sparse site remembers during a generation."""

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


class SparseState(GenerationState):
    """Per-site `SiteState`s of the current generation (`data`: site path -> SiteState)."""

    def site(self, path: str, generation: int) -> SiteState:
        return self.entry(path, generation, SiteState)

    def summary(self) -> dict:
        return {path: {"sparse_calls": s.sparse_calls, "dense_calls": s.dense_calls,
                       "guard_errors": list(s.guard_errors), "dense_from_step": s.dense_from_step,
                       "density": s.density}
                for path, s in self.data.items()}


__all__ = ["SiteState", "SparseState"]
