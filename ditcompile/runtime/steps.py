"""Which generation, denoising step and CFG branch a call belongs to, and the per-generation
state base every feature uses.

A call tells the tracker four things (`Observation`, built by `observe_call`): its timestep
(one value for the whole call, or unknown), a fingerprint of its conditioning inputs (text
embeddings, masks, guidance, image-conditioning channels: what tells CFG branches apart and stays
the same across steps), the shape of its main input, and a sample of its latents. After the
call, a sample of its output is recorded (`StepTracker.record_output`). `StepTracker.observe`
turns the sequence into (generation, step, branch). Timesteps usually fall from step to step; the
rules below are for that direction, and a tracker learns the other one (e.g. Lumina-2's 1 - t)
after three one-step "generations" in a row with the same conditioning:

    timestep moves against the direction            -> a new generation (a new sampling run; the
                                                       latents cannot tell: a re-run from the same
                                                       noise starts close to the old run)
    timestep moves along it, latents continue       -> the next step of this generation
                          latents do not continue   -> a new generation (a new run that starts
                                                       lower: img2img, an interrupted run followed
                                                       by another; or a stochastic sampler)
    same timestep, conditioning not yet seen here:
      latents of a call at this step                -> another CFG branch of the same step
      other latents                                 -> a new generation (a new run with another
                                                       prompt, where the last one stopped)
    same timestep, conditioning already seen here:
      the same latents (the same call again)        -> at the first step a new generation (a
                                                       re-run, a server, a 1-step model); later
                                                       another evaluation of the step
      latents that continue the run                 -> another evaluation of the step (Heun,
                                                       DPM-2 and other second-order samplers)
      latents that do not                           -> a new generation (another seed; two runs
                                                       interleaved in one caller)
    more than MAX_EVALUATIONS evaluations or
    MAX_BRANCHES conditionings                      -> a new generation (said once)

    t:    999 999 966 966 ... 5 5 | 999 999 ...       (cond, uncond each step)
          s0b0 s0b1 s1b0 s1b1     | new generation: s0b0 s0b1 ...

"Latents continue" is `continuity.continues`: the call's latents are a linear combination of the
run's recent latents and model outputs, as every deterministic sampler makes them (positions equal
to the last latents are left out: clean conditioning a pipeline puts back every step). When the test
cannot tell (no latents input, an output that is not comparable, a new shape), the rules fall
back to the timestep alone. A branch keeps its index for the whole generation (keyed by its
conditioning), so a warm-up call or a reordered CFG pair never swaps two branches' state.

When a call has no single timestep (no timestep input, per-sample or per-token timesteps that
differ, other than clean conditioning tokens at 0) the step is *unknown* (`StepInfo.step is
None`): step-dependent plans then take their safe path (dense attention, every step computed) and
the caller says so once. Samplers that evaluate the model at intermediate timesteps (DPM-2) count
each as a step. A *declared* generation (`with ditcompile.generation(model):`) skips the
heuristics: every call in it belongs to that generation, each new timestep is the next step and
a repeated one another evaluation -- the way to run stochastic samplers with step-dependent
plans. `ditcompile.new_generation(model)` forces a restart.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .continuity import HISTORY_STEPS, WHOLE, LatentView, continues, extra_part, latent_sample, tolerance_for

log = logging.getLogger("ditcompile")

MAX_BRANCHES = 8      # different conditionings per generation before a new generation is assumed
MAX_EVALUATIONS = 4   # calls of one branch at one step before a new generation is assumed
DISCONTINUITY_NOTE_AFTER = 2  # one-step generations in a row, ended by latents that do not continue
LATENTS, OUTPUT = "latents", "output"  # kinds of the vectors in the history


@dataclass(frozen=True)
class StepInfo:
    generation: int        # 0 for the first generation this caller runs, then 1, 2, ...
    step: Optional[int]    # denoising step within the generation, from 0; None: unknown
    branch: int            # CFG branch within the generation (by conditioning), from 0
    timestep: Optional[float]
    unknown_reason: Optional[str] = None  # why the step is unknown (None when it is known)
    note: Optional[str] = None            # a rule that fired and is worth saying once (branch cap, direction)


@dataclass(frozen=True, eq=False)
class Observation:
    """What one call says about its place in a sampling run (see the module docstring)."""

    timestep: Optional[float]        # None: unknown (the reason says why)
    condition: bytes = b""           # fingerprint of the conditioning inputs (b"": none)
    shape: tuple = ()                # shape of the main input: state is kept per shape
    unknown_reason: Optional[str] = None
    latents: Optional[torch.Tensor] = None          # [B, k] float64 (host): sampled latents
    tolerance: float = 1e-3                         # of the latents test, for the latents' dtype
    previous_output: Optional[torch.Tensor] = None  # [B, k] float64 (host): the previous call's output


class StepTracker:
    """(generation, step, branch) from the sequence of a caller's `Observation`s."""

    def __init__(self) -> None:
        self.generation = -1
        self.step = 0
        self.last_timestep: Optional[float] = None
        self.restart_requested = True
        self.direction = -1                      # -1: timesteps fall from step to step; +1: they rise
        self.events: collections.Counter = collections.Counter()  # why generations started, unknown steps
        self.pending_output: Optional[tuple] = None  # (generation, step, [B, k] device tensor, main shape,
        #                                              how many leading rows are latents, not outputs)
        self._last_shape: tuple = ()
        self._reversals = 0                      # one-step generations ended by a move against it
        self._cut_short = 0                      # one-step generations ended by latents that do not continue
        self._branches: dict[bytes, int] = {}   # conditioning -> branch index, this generation
        self._at_step: dict[bytes, list] = {}    # conditioning -> latents samples of its calls at this step
        self._history: collections.deque = collections.deque(maxlen=HISTORY_STEPS)  # [(step, [(shape, kind, [k])])]

    # ------------------------------------------------------------------ observing

    def observe(self, obs: Observation, declared: bool = False) -> StepInfo:
        """Advance with a new call (see the module docstring for the rules). `declared`: the call
        is inside `ditcompile.generation(model)` (no heuristics)."""
        self._take_output(obs.previous_output)
        if self.restart_requested or self.generation < 0:
            self._start_generation("restart" if self.generation >= 0 else "first call")
        if obs.timestep is None:
            self.events["unknown step: " + message_kind(obs.unknown_reason or "no timestep")] += 1
            return StepInfo(self.generation, None, self._branch_of(obs.condition), None,
                            obs.unknown_reason or "no timestep")
        if declared:
            return self._observe_declared(obs)
        t, last, note = obs.timestep, self.last_timestep, None
        if last is None:
            pass  # the generation's first known step
        elif t != last and (t - last) * self.direction < 0:  # against the direction
            # (not the latents: a re-run from the same noise is close to the old run's first steps)
            repeated = self.step == 0 and obs.condition in self._branches  # the same prompt, one step later
            if repeated and self._reversals >= 1:  # three one-step "generations" in a row: learn it
                self.direction, self._reversals = -self.direction, 0
                note = f"timesteps {'rise' if self.direction > 0 else 'fall'} from step to step: tracking them so"
                self._next_step()
            else:
                self._reversals = self._reversals + 1 if repeated else 0
                self._start_generation("timestep moved back")
        elif t != last:
            if self._continues(obs) is False:
                note = self._cut("the timestep moved on")
            else:
                self._next_step()
                self._reversals = self._cut_short = 0
        elif obs.condition not in self._at_step:
            if self._at_step and self._other_latents(obs):  # CFG branches of one step share their latents
                self._start_generation("a new conditioning with other latents")
        elif obs.condition in self._at_step:
            seen = self._at_step[obs.condition]
            if obs.latents is None or any(torch.equal(obs.latents, s) for s in seen if s is not None):
                if self.step == 0 or len(seen) >= MAX_EVALUATIONS:
                    self._start_generation("the same call again")
            else:
                joined = self._continues(obs)
                if joined is False:
                    self._start_generation("latents do not continue the run")
                elif (joined is None and self.step == 0) or len(seen) >= MAX_EVALUATIONS:
                    self._start_generation("the same call again")
        if obs.condition not in self._branches and len(self._branches) >= MAX_BRANCHES:
            note = (f"more than {MAX_BRANCHES} different conditionings in one generation (conditioning inputs "
                    "that change every step?): a new generation starts, step-dependent plans restart")
            self._start_generation("branch cap")
        self._record(obs)
        return StepInfo(self.generation, self.step, self._branch_of(obs.condition), t, note=note)

    def _observe_declared(self, obs: Observation) -> StepInfo:
        note = None
        if self.last_timestep is not None and obs.timestep != self.last_timestep:
            if (obs.timestep - self.last_timestep) * self.direction < 0 and self.step > 0:
                note = (f"inside `ditcompile.generation(model)` the timestep moved back ({self.last_timestep:g} -> "
                        f"{obs.timestep:g}): counted as the next step of the declared generation; if this is a "
                        "second sampling run, give each run its own `with ditcompile.generation(model):`")
            self._next_step()
        if obs.condition not in self._branches and len(self._branches) >= MAX_BRANCHES:
            reason = f"more than {MAX_BRANCHES} different conditionings in one declared generation"
            self.events["unknown step: " + reason] += 1
            return StepInfo(self.generation, None, 0, obs.timestep, reason)
        self._record(obs)
        return StepInfo(self.generation, self.step, self._branch_of(obs.condition), obs.timestep, note=note)

    def _cut(self, how: str) -> Optional[str]:
        """A call that would be the next step does not continue the run: a new generation."""
        self._cut_short = self._cut_short + 1 if self.step == 0 else 1
        self._start_generation("latents do not continue the run")
        if self._cut_short < DISCONTINUITY_NOTE_AFTER:
            return None
        return (f"{how} but the latents do not continue the run (they are not a combination of the last steps' "
                "latents and model outputs) in several steps in a row, so each starts a new generation and "
                "step-dependent plans keep taking their safe path -- a stochastic sampler (SDE, ancestral, LCM) "
                "or a non-linear step (latents clamped or thresholded)? "
                "declare each run with `with ditcompile.generation(model):`; two runs interleaved in one thread? "
                "give each its own `ditcompile.request_scope()`")

    # ------------------------------------------------------------------ latents and outputs

    def record_output(self, info: StepInfo, sample: Optional[torch.Tensor], latents: bool = False) -> None:
        """After a call: its output sampled ([B, k], device; copied to the host with the next
        call). Several samples of one call are kept together; `latents=True`: the sample is of
        the call's latents (`track_steps` learns the output's layout only after the first call
        and records that call's latents this way)."""
        if info.step is None or info.generation != self.generation or sample is None:
            return
        pending, latent_rows = self.pending_output, (len(sample) if latents else 0)
        if (pending is not None and pending[:2] == (info.generation, info.step) and pending[2].device == sample.device
                and pending[2].shape[1:] == sample.shape[1:]):
            sample = torch.cat([pending[2], sample]) if not latents else torch.cat([sample, pending[2]])
            latent_rows += pending[4]
        self.pending_output = (info.generation, info.step, sample, self._last_shape, latent_rows)

    def take_pending(self) -> Optional[torch.Tensor]:
        """The pending output samples for `observe_call` to copy (None if none)."""
        return self.pending_output[2] if self.pending_output is not None else None

    def _take_output(self, host: Optional[torch.Tensor]) -> None:
        pending, self.pending_output = self.pending_output, None
        if pending is not None and host is not None and pending[0] == self.generation:
            generation, step, _, shape, latent_rows = pending
            self._add_vectors(step, host[:latent_rows], shape, LATENTS)
            self._add_vectors(step, host[latent_rows:], shape, OUTPUT)

    def _record(self, obs: Observation) -> None:
        self.last_timestep = obs.timestep
        self._last_shape = obs.shape
        self._at_step.setdefault(obs.condition, []).append(obs.latents)
        if obs.latents is not None:
            self._add_vectors(self.step, obs.latents, obs.shape, LATENTS)

    def _add_vectors(self, step: int, rows: torch.Tensor, shape: tuple, kind: str) -> None:
        """Keep `rows` (samples of latents or outputs, `kind`, of calls whose main input had
        `shape`) in the history of `step`: the basis of the latents test for calls of the same
        shape."""
        if not len(rows):
            return
        if not self._history or self._history[-1][0] != step:
            if self._history and self._history[-1][0] > step:
                return  # an output of an older step arriving late: not needed
            self._history.append((step, []))
        group = self._history[-1][1]
        for row in rows:
            if row.shape and not any(key == shape and torch.equal(v, row) for key, _, v in group):
                group.append((shape, kind, row))

    def _other_latents(self, obs: Observation) -> bool:
        """True when the call's latents are known and equal none of the latents of this step's
        calls (CFG branches of one step share their latents: a new conditioning with other
        latents at the same timestep is a new run)."""
        seen = [s for calls in self._at_step.values() for s in calls]
        if obs.latents is None or not seen or any(s is None for s in seen):
            return False
        return not any(torch.equal(row, s_row) for row in obs.latents for s in seen for s_row in s)

    def _continues(self, obs: Observation) -> Optional[bool]:
        """The latents test against this generation's recent steps at the call's shape (None: no
        latents, or nothing yet at this shape -- a new resolution is not a new run).

        Positions where the latents equal the last recorded latents exactly are left out: a
        pipeline that puts clean conditioning back into the latents every step (the first frame
        of image-to-video, inpainting's known region, reference-image tokens) keeps them there,
        and they are not what the sampler advanced."""
        if obs.latents is None:
            return None
        entries = [(kind, v) for _, group in self._history for key, kind, v in group if key == obs.shape]
        basis = [v for _, v in entries]
        last = [v for kind, v in entries if kind == LATENTS][-MAX_BRANCHES:]
        verdicts = []
        for row in obs.latents:
            keep = None
            if last:
                same = max((v == row for v in last if v.shape == row.shape), key=lambda eq: int(eq.sum()),
                           default=None)
                if same is not None and bool(same.any()):
                    keep = ~same
            if keep is None:
                verdicts.append(continues(row[None], basis, obs.tolerance))
            else:
                verdicts.append(continues(row[keep][None], [v[keep] for v in basis if v.shape == row.shape],
                                          obs.tolerance))
        if any(v is False for v in verdicts):
            return False
        return None if any(v is None for v in verdicts) else True

    # ------------------------------------------------------------------ bookkeeping

    def _branch_of(self, condition: bytes) -> int:
        return self._branches.setdefault(condition, len(self._branches))

    def _next_step(self) -> None:
        self.step += 1
        self._at_step = {}

    def _start_generation(self, why: str) -> None:
        self.events["generation: " + why] += 1
        self.generation += 1
        self.step = 0
        self.last_timestep = None
        self._branches, self._at_step = {}, {}
        self._history.clear()
        self.restart_requested = False

    def reset(self) -> None:
        """The next call starts a new generation (whatever its timestep); drops the samples held."""
        self.restart_requested = True
        self.pending_output = None
        self._history.clear()

    def summary(self) -> dict:
        """{"generation": the current one, "events": {why generations started / steps were unknown: count}}."""
        return {"generation": self.generation, "events": dict(self.events)}


def message_kind(text: str) -> str:
    """The kind of a message: its text before any parenthesised values ("the timestep tensor (2,)
    holds ..." -> "the timestep tensor"); warnings and event counts are per kind."""
    return text.split(" (")[0]


def warn_once(seen: set, text: str, message: str, *args: Any) -> None:
    """`log.warning(message, *args)` the first time the kind of `text` is met (`seen` remembers)."""
    kind = message_kind(text)
    if kind not in seen:
        seen.add(kind)
        log.warning(message, *args)


@functools.lru_cache(maxsize=32)
def _projection(numel: int, device: str) -> torch.Tensor:
    """Fixed pseudo-random weights in [-1, 1] (float64) for fingerprinting tensors of `numel` elements."""
    generator = torch.Generator().manual_seed(numel)
    return (torch.rand(numel, generator=generator, dtype=torch.float64) * 2 - 1).to(device)


def observe_call(timestep: Any, main: Any, conditions: Sequence[Any], view: Optional[LatentView] = WHOLE,
                 pending_output: Optional[torch.Tensor] = None) -> Observation:
    """The `Observation` of a call from its timestep input (a number, a tensor of any shape, or
    None when the graph has none), its main input (the latents), its conditioning inputs, the
    `LatentView` relating the main input to the model's output (None: not comparable, no latents
    test) and the previous call's pending output sample (copied to the host here).

    The timestep tensor gives one value when all its elements are equal, or when they are 0 and
    one other value (clean conditioning tokens and noisy ones, as image-to-video models pass per
    token); else the step is unknown. Each conditioning tensor (and the main input's part the
    output does not predict, e.g. image-conditioning channels) is fingerprinted by its shape,
    dtype and a float64 projection on fixed random weights plus its sum (every element counts).
    Costs one small device-to-host copy per device.
    """
    shape = tuple(main.shape) if isinstance(main, torch.Tensor) else ()
    reason = None
    values: dict[torch.device, list[torch.Tensor]] = collections.defaultdict(list)
    if isinstance(timestep, torch.Tensor) and timestep.numel():
        t = timestep.detach()
        values[t.device].append(torch.stack([t.amin(), t.amax()]).double())
    elif isinstance(timestep, torch.SymInt) or isinstance(timestep, torch.SymFloat):
        timestep = float(timestep)
    elif not isinstance(timestep, (int, float)) or isinstance(timestep, bool):
        reason = "no timestep input" if timestep is None else f"timestep of type {type(timestep).__name__}"
    extra = extra_part(main, view) if view is not None else None
    meta = []
    for c in list(conditions) + ([extra] if extra is not None else []):
        if isinstance(c, torch.Tensor):
            flat = c.detach().reshape(-1).double()
            values[flat.device].append(torch.stack([flat @ _projection(flat.numel(), str(flat.device)),
                                                    flat.sum()]))
            meta.append((tuple(c.shape), str(c.dtype)))
        elif isinstance(c, (int, float, bool)):
            meta.append(c)
    samples = {}  # name -> (device, rows, numel)
    for name, tensor in (("latents", latent_sample(main, view) if view is not None else None),
                         ("output", pending_output)):
        if tensor is not None:
            samples[name] = (tensor.device, tensor.shape, len(values[tensor.device]))
            values[tensor.device].append(tensor.reshape(-1).double())
    host = {d: torch.cat(v).cpu() for d, v in values.items()}  # one sync per device
    value: Optional[float] = None
    digest = hashlib.blake2b(repr(meta).encode(), digest_size=16)
    fetched = {}
    for d, h in host.items():
        parts = list(torch.split(h, [v.numel() for v in values[d]]))
        for name, (device, rows, index) in samples.items():
            if device == d:
                fetched[name] = parts[index].reshape(rows)
        parts = [p for i, p in enumerate(parts) if not any(s[0] == d and s[2] == i for s in samples.values())]
        h = torch.cat(parts) if parts else h.new_zeros(0)
        if isinstance(timestep, torch.Tensor) and d == timestep.device and value is None and reason is None:
            low, high, h = float(h[0]), float(h[1]), h[2:]
            if low == high or low == 0.0:
                value = high
            else:
                reason = f"the timestep tensor {tuple(timestep.shape)} holds different values ({low:g} .. {high:g})"
        digest.update(h.numpy().tobytes())
    if isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
        value = float(timestep)
    return Observation(value, digest.digest(), shape, reason if value is None else None,
                       latents=fetched.get("latents"), previous_output=fetched.get("output"),
                       tolerance=tolerance_for(main.dtype) if isinstance(main, torch.Tensor) else 1e-3)


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
           "message_kind", "warn_once",
           "MAX_BRANCHES", "MAX_EVALUATIONS"]
