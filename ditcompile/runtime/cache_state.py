"""Run-time state of the step cache: per CFG branch and input shape, per generation
(read by `ditcompile.cache_stats`)."""
from __future__ import annotations

import itertools

from ..step_cache_policies import BranchState
from .steps import GenerationState, StepInfo, shape_text

_ORDER = itertools.count()  # call order across the branch states of a generation


class StepCacheState(GenerationState):
    """`BranchState`s of the current generation (`data`: (branch, main input shape) -> BranchState):
    a call at a new resolution starts fresh state for that shape.

    `body_share`: the body's fraction of the trunk's blocks, so a reused call saves about that
    fraction of a call's compute (embeddings and the output projection are small in DiTs); set
    by the first runner that uses this state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body_share = 0.0

    def branch(self, info: StepInfo, shape: tuple = ()) -> BranchState:
        return self.entry((info.branch, tuple(shape)), info.generation, BranchState)

    @staticmethod
    def record(state: BranchState, computed: bool) -> None:
        """Count one call of a branch (computed or reused) in call order."""
        state.decisions.append((next(_ORDER), computed))
        if computed:
            state.computed += 1
        else:
            state.reused += 1

    def summary(self) -> dict:
        """Per branch: computed/reused calls, the decision per call in order ("pattern"), the
        estimated saving, and "shapes": computed/reused per input shape."""
        out: dict = {}
        for (branch, shape), s in sorted(list(self.data.items()), key=lambda kv: (kv[0][0], kv[1].decisions[:1])):
            total = out.setdefault(branch, {"computed": 0, "reused": 0, "_calls": [], "shapes": {}})
            total["computed"] += s.computed
            total["reused"] += s.reused
            total["_calls"] += s.decisions
            total["shapes"][shape_text(shape)] = {"computed": s.computed, "reused": s.reused}
        for total in out.values():
            total["pattern"] = [computed for _, computed in sorted(total.pop("_calls"))]
            calls = max(1, total["computed"] + total["reused"])
            total["estimated_saving"] = round(self.body_share * total["reused"] / calls, 4)
        return dict(sorted(out.items()))


def format_cache_stats(stats: dict) -> str:
    """One generation's summary as text: computed/reused steps and the compute saved per branch
    (computed/reused per input shape when there are several)."""
    def shapes(s: dict) -> str:
        if len(s.get("shapes", {})) < 2:
            return ""
        return " (" + ", ".join(f"{shape}: {n['computed']}/{n['reused']}" for shape, n in s["shapes"].items()) + ")"
    return "; ".join(f"branch {b}: {s['computed']} computed, {s['reused']} reused{shapes(s)}, "
                     f"~{100 * s['estimated_saving']:.0f}% of the transformer's compute saved"
                     for b, s in stats.items())


__all__ = ["StepCacheState", "format_cache_stats"]
