"""What every pass is: a small class with a name, a uuid, and `__call__(gm, ctx) -> PassReport`.

A pass reads the shared `GraphAnalysis` in `ctx` (never re-matching the graph itself), edits
`gm.graph` in place, and returns a `PassReport` with one `SiteDecision` per site it considered,
so the explain report can say what changed and why anything was left alone.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import inspect
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch.fx as fx

from ..config import DitConfig
from ..graph.sites import GraphAnalysis

REWRITTEN = "rewritten"
KEPT = "kept"


@dataclass(frozen=True)
class SiteDecision:
    site_index: int
    module_path: str
    action: str                     # REWRITTEN or KEPT
    plan: Optional[str] = None      # short plan description, e.g. "dense/sdpa"
    reason: Optional[str] = None    # why it was kept, or a note on the plan (why not sparse, density)


@dataclass
class PassReport:
    name: str
    uuid: str
    decisions: list[SiteDecision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rewritten(self) -> int:
        return sum(d.action == REWRITTEN for d in self.decisions)


@dataclass
class PassContext:
    """What a pass may read besides the graph: the config, the analysis, the example inputs.

    A pass whose effect needs Python at run time says so here: `needs_step` asks the backend to
    track the denoising step around every call (plans that change over steps); `runner_factory`
    replaces "compile the graph" by a runner that compiles and calls pieces of it (the step
    cache splits the graph into head, body and tail). At most one pass may set a runner.
    """

    config: DitConfig
    analysis: GraphAnalysis
    example_inputs: Sequence[Any]
    needs_step: bool = False
    runner_factory: Optional[Callable[[Callable[[fx.GraphModule], Callable]], Callable]] = None


class DitPass(abc.ABC):
    """Base of all passes. Subclasses set `name` and `config_section` and implement `__call__`."""

    name: ClassVar[str]
    config_section: ClassVar[Optional[str]] = None

    def __init__(self, config: DitConfig):
        self.config = config

    @classmethod
    def enabled(cls, config: DitConfig) -> bool:
        section = config.section(cls.config_section) if cls.config_section else None
        return bool(getattr(section, "enabled", True))

    @abc.abstractmethod
    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassReport: ...

    def uuid(self) -> str:
        """Stable id of this pass's behaviour: hash of its module source and its config section.

        Changes when the pass's code or its settings change, which is what a compiled-graph
        cache must be keyed on.
        """
        return _uuid(type(self), self._config_json())

    def _config_json(self) -> str:
        section = self.config.section(self.config_section) if self.config_section else None
        data = dataclasses.asdict(section) if section is not None else None
        return json.dumps(data, sort_keys=True, default=str)

    def report(self) -> PassReport:
        return PassReport(self.name, self.uuid())


@functools.lru_cache(maxsize=None)
def _uuid(cls: type, config_json: str) -> str:
    module = sys.modules[cls.__module__]
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        source = cls.__qualname__
    return hashlib.sha256((source + config_json).encode()).hexdigest()[:16]
