"""Which generation, denoising step and CFG branch a call belongs to, and the per-generation
state base every feature uses.

A call tells the tracker three things (`Observation`, built by `observe_call`): its timestep
(one value for the whole call, or unknown), a fingerprint of its conditioning inputs (text
embeddings, masks, guidance: what tells CFG branches apart and stays the same across steps), and
the shape of its main input. `StepTracker.observe` turns the sequence into (generation, step,
branch). Timesteps usually fall from step to step; the rules below are for that direction, and a
tracker that sees timesteps rise step after step (e.g. Lumina-2's 1 - t) learns the other one:

    timestep moves against the direction (higher)  -> a new generation (a new sampling run)
    timestep moves along it (lower)                -> the next step of this generation
    same timestep, conditioning not yet seen at
      this step                                    -> another CFG branch of the same step
    same timestep, conditioning already seen at
      this step, at the first step                 -> a new generation (a re-run from the start,
                                                      a server, a 1-step model)
      a later step                                 -> another evaluation of the same step (Heun
                                                      and other second-order samplers repeat
                                                      each timestep); more than MAX_EVALUATIONS
                                                      -> a new generation
    more than MAX_BRANCHES different conditionings -> a new generation (said once: conditioning
                                                      that changes every step defeats tracking)

    t:    999 999 966 966 ... 5 5 | 999 999 ...       (cond, uncond each step)
          s0b0 s0b1 s1b0 s1b1     | new generation: s0b0 s0b1 ...

A branch keeps its index for the whole generation (keyed by its conditioning), so a warm-up call
or a reordered CFG pair never swaps two branches' state. When a call has no single timestep (no
timestep input, per-sample or per-token timesteps that differ, other than clean conditioning
tokens at 0) the step is *unknown* (`StepInfo.step is None`): step-dependent plans then take their
safe path (dense attention, every step computed) and the caller says so once. Samplers that
evaluate the model at several timesteps per step (DPM-Solver-2, SDE variants) count each as a
step. `ditcompile.new_generation(model)` (or `with ditcompile.generation(model):`) forces a restart.
"""
from __future__ import annotations

import collections
import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

MAX_BRANCHES = 8      # different conditionings per generation before a new generation is assumed
MAX_EVALUATIONS = 4   # calls of one branch at one step before a new generation is assumed


@dataclass(frozen=True)
class StepInfo:
    generation: int        # 0 for the first generation this caller runs, then 1, 2, ...
    step: Optional[int]    # denoising step within the generation, from 0; None: unknown
    branch: int            # CFG branch within the generation (by conditioning), from 0
    timestep: Optional[float]
    unknown_reason: Optional[str] = None  # why the step is unknown (None when it is known)
    note: Optional[str] = None            # a rule that fired and is worth saying once (branch cap, direction)


@dataclass(frozen=True)
class Observation:
    """What one call says about its place in a sampling run (see the module docstring)."""

    timestep: Optional[float]        # None: unknown (the reason says why)
    condition: bytes = b""           # fingerprint of the conditioning inputs (b"": none)
    shape: tuple = ()                # shape of the main input: state is kept per shape
    unknown_reason: Optional[str] = None


class StepTracker:
    """(generation, step, branch) from the sequence of a caller's `Observation`s."""

    def __init__(self) -> None:
        self.generation = -1
        self.step = 0
        self.last_timestep: Optional[float] = None
        self.restart_requested = True
        self.direction = -1                      # -1: timesteps fall from step to step; +1: they rise
        self._reversals = 0                      # one-step generations ended by a move against it
        self._branches: dict[bytes, int] = {}   # conditioning -> branch index, this generation
        self._at_step: dict[bytes, int] = {}     # conditioning -> calls at the current step

    def observe(self, obs: Observation) -> StepInfo:
        """Advance with a new call (see the module docstring for the rules)."""
        if self.restart_requested or self.generation < 0:
            self._start_generation()
        if obs.timestep is None:
            return StepInfo(self.generation, None, self._branch_of(obs.condition), None,
                            obs.unknown_reason or "no timestep")
        t, last, note = obs.timestep, self.last_timestep, None
        if last is None:
            pass  # the generation's first known step
        elif t != last and (t - last) * self.direction < 0:  # against the direction
            continues = self.step == 0 and obs.condition in self._branches  # the same prompt, one step later
            if continues and self._reversals >= 1:  # three one-step "generations" in a row: learn it
                self.direction, self._reversals = -self.direction, 0
                note = f"timesteps {'rise' if self.direction > 0 else 'fall'} from step to step: tracking them so"
                self._next_step()
            else:
                self._reversals = self._reversals + 1 if continues else 0
                self._start_generation()
        elif t != last:
            self._next_step()
            self._reversals = 0
        elif obs.condition in self._at_step and (self.step == 0 or self._at_step[obs.condition] >= MAX_EVALUATIONS):
            self._start_generation()  # the same call again: a new run
        if obs.condition not in self._branches and len(self._branches) >= MAX_BRANCHES:
            note = (f"more than {MAX_BRANCHES} different conditionings in one generation (conditioning inputs "
                    "that change every step?): a new generation starts, step-dependent plans restart")
            self._start_generation()
        self._at_step[obs.condition] = self._at_step.get(obs.condition, 0) + 1
        self.last_timestep = t
        return StepInfo(self.generation, self.step, self._branch_of(obs.condition), t, note=note)

    def _branch_of(self, condition: bytes) -> int:
        return self._branches.setdefault(condition, len(self._branches))

    def _next_step(self) -> None:
        self.step += 1
        self._at_step = {}

    def _start_generation(self) -> None:
        self.generation += 1
        self.step = 0
        self.last_timestep = None
        self._branches, self._at_step = {}, {}
        self.restart_requested = False

    def reset(self) -> None:
        """The next call starts a new generation (whatever its timestep)."""
        self.restart_requested = True


@functools.lru_cache(maxsize=32)
def _projection(numel: int, device: str) -> torch.Tensor:
    """Fixed pseudo-random weights in [-1, 1] (float64) for fingerprinting tensors of `numel` elements."""
    generator = torch.Generator().manual_seed(numel)
    return (torch.rand(numel, generator=generator, dtype=torch.float64) * 2 - 1).to(device)


def observe_call(timestep: Any, main: Any, conditions: Sequence[Any]) -> Observation:
    """The `Observation` of a call from its timestep input (a number, a tensor of any shape, or
    None when the graph has none), its main input (the latents) and its conditioning inputs.

    The timestep tensor gives one value when all its elements are equal, or when they are 0 and
    one other value (clean conditioning tokens and noisy ones, as image-to-video models pass per
    token); else the step is unknown. Each conditioning tensor is fingerprinted by its shape,
    dtype and a float64 projection on fixed random weights plus its sum (every element counts).
    Costs one small device-to-host copy per device.
    """
    shape = tuple(main.shape) if isinstance(main, torch.Tensor) else ()
    reason = None
    values: dict[torch.device, list[torch.Tensor]] = collections.defaultdict(list)
    if isinstance(timestep, torch.Tensor) and timestep.numel():
        t = timestep.detach()
        values[t.device].append(torch.stack([t.amin(), t.amax()]).double())
    elif not isinstance(timestep, (int, float)) or isinstance(timestep, bool):
        reason = "no timestep input" if timestep is None else f"timestep of type {type(timestep).__name__}"
    meta = []
    for c in conditions:
        if isinstance(c, torch.Tensor):
            flat = c.detach().reshape(-1).double()
            values[flat.device].append(torch.stack([flat @ _projection(flat.numel(), str(flat.device)),
                                                    flat.sum()]))
            meta.append((tuple(c.shape), str(c.dtype)))
        elif isinstance(c, (int, float, bool)):
            meta.append(c)
    host = {d: torch.cat(v).cpu() for d, v in values.items()}  # one sync per device
    value: Optional[float] = None
    digest = hashlib.blake2b(repr(meta).encode(), digest_size=16)
    for d, h in host.items():
        if isinstance(timestep, torch.Tensor) and d == timestep.device and value is None and reason is None:
            low, high, h = float(h[0]), float(h[1]), h[2:]
            if low == high or low == 0.0:
                value = high
            else:
                reason = f"the timestep tensor {tuple(timestep.shape)} holds different values ({low:g} .. {high:g})"
        digest.update(h.numpy().tobytes())
    if isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
        value = float(timestep)
    return Observation(value, digest.digest(), shape, reason if value is None else None)


def shape_text(shape: tuple) -> str:
    """`(2, 12, 288, 64)` -> "2x12x288x64" (the key of per-shape summaries)."""
    return "x".join(str(s) for s in shape) or "-"


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


__all__ = ["StepInfo", "Observation", "StepTracker", "GenerationState", "observe_call", "shape_text",
           "MAX_BRANCHES", "MAX_EVALUATIONS"]
