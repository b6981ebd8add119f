"""Which denoising step a call belongs to, and the per-generation state base every feature uses.

Diffusion pipelines call the transformer once per step (or once per classifier-free-guidance
branch per step, e.g. Wan's pipeline calls it for the conditional and then the unconditional
prediction with the same timestep). A `StepTracker` turns the sequence of timesteps it sees
into (generation, step, branch):

    t: 999 999 966 966 ... 5 5 | 999 999 ...
       s0b0 s0b1 s1b0 s1b1      | new generation (the timestep went up): s0b0 s0b1 ...

A call with the same timestep as the previous one is the next CFG branch of the same step; a
lower timestep starts the next step; a higher one starts a new generation.
`ditcompile.new_generation(model)` (or `with ditcompile.generation(model):`) forces a restart,
for schedules the rule cannot see (two generations that start at the same timestep).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass(frozen=True)
class StepInfo:
    generation: int   # 0 for the first generation this model runs, then 1, 2, ...
    step: int         # denoising step within the generation, from 0
    branch: int       # CFG branch within the step (order of the calls), from 0
    timestep: Optional[float]


@dataclass
class StepTracker:
    generation: int = -1
    step: int = 0
    branch: int = 0
    last_timestep: Optional[float] = None
    restart_requested: bool = True

    def observe(self, timestep: Optional[float]) -> StepInfo:
        """Advance with the timestep of a new call; None (unknown) counts every call as a step."""
        if self.restart_requested or (timestep is not None and self.last_timestep is not None
                                      and timestep > self.last_timestep):
            self.generation += 1
            self.step, self.branch = 0, 0
            self.restart_requested = False
        elif timestep is not None and timestep == self.last_timestep:
            self.branch += 1
        else:
            self.step += 1
            self.branch = 0
        self.last_timestep = timestep
        return StepInfo(self.generation, self.step, self.branch, timestep)

    def reset(self) -> None:
        """The next call starts a new generation (whatever its timestep)."""
        self.restart_requested = True


class GenerationState:
    """Base of a feature's run-time state that restarts with every generation.

    Subclasses keep their per-generation entries in `self.data` (key: a site path or a CFG
    branch) and say how to summarise them; the summaries of the last `KEEP_FINISHED` finished
    generations are kept in `finished`. An entry may define `release()`, called by `reset()` to
    drop the tensors it holds (its counts stay for the summary).
    """

    KEEP_FINISHED = 64

    def __init__(self) -> None:
        self.generation = -1
        self.data: dict = {}
        self.finished: collections.deque = collections.deque(maxlen=self.KEEP_FINISHED)

    def entry(self, key: Any, generation: int, factory: Callable[[], Any]) -> Any:
        """This generation's entry for `key`, created by `factory`."""
        if generation != self.generation:
            if self.data:
                self.finished.append(self.summary())
            self.data, self.generation = {}, generation
        return self.data.setdefault(key, factory())

    def reset(self) -> None:
        """The next call starts new entries (this generation's summary is archived then); the
        tensors the entries hold are released now."""
        self.generation = -1
        for entry in self.data.values():
            release = getattr(entry, "release", None)
            if release is not None:
                release()

    @property
    def used(self) -> bool:
        """True once the feature has run for this model."""
        return self.generation >= 0 or bool(self.data) or bool(self.finished)

    def stats(self) -> dict:
        """{"current": this generation's summary, "finished": summaries of finished generations}."""
        return {"current": self.summary(), "finished": list(self.finished)}

    def summary(self) -> dict:
        raise NotImplementedError


def timestep_value(value: Any) -> Optional[float]:
    """A call's timestep as a float (first element of a tensor; a host sync on GPU)."""
    if isinstance(value, torch.Tensor):
        return float(value.reshape(-1)[0].item()) if value.numel() else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


__all__ = ["StepInfo", "StepTracker", "GenerationState", "timestep_value"]
