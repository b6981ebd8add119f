"""Run-time state of the step cache: per CFG branch, per generation (read by `ditcompile.cache_stats`)."""
from __future__ import annotations

from ..step_cache_policies import BranchState
from .steps import GenerationState, StepInfo


class StepCacheState(GenerationState):
    """Per-CFG-branch `BranchState`s of the current generation (`data`: branch -> BranchState).

    `body_share`: the body's fraction of the trunk's blocks, so a reused call saves about that
    fraction of a call's compute (embeddings and the output projection are small in DiTs); set
    by the first runner that uses this state (a model with graph breaks has one runner per graph).
    """

    def __init__(self) -> None:
        super().__init__()
        self.body_share = 0.0

    def branch(self, info: StepInfo) -> BranchState:
        return self.entry(info.branch, info.generation, BranchState)

    def summary(self) -> dict:
        return {b: {"computed": s.computed, "reused": s.reused, "pattern": list(s.decisions),
                    "estimated_saving": round(self.body_share * s.reused / max(1, s.computed + s.reused), 4)}
                for b, s in sorted(self.data.items())}


def format_cache_stats(stats: dict) -> str:
    """One generation's summary as text: computed/reused steps and the compute saved per branch."""
    return "; ".join(f"branch {b}: {s['computed']} computed, {s['reused']} reused, "
                     f"~{100 * s['estimated_saving']:.0f}% of the transformer's compute saved"
                     for b, s in stats.items())


__all__ = ["StepCacheState", "format_cache_stats"]
