"""What every pass is: a small class with a name, a uuid, and `__call__(gm, ctx) -> PassReport`.

A pass reads the shared, frozen `GraphAnalysis` in `ctx` (never re-matching the graph itself),
edits `gm.graph` in place, and returns a `PassReport` with one `SiteDecision` per site it
considered, so the explain report can say what changed and why anything was left alone.

The attention pass rewrites each site once into a `ditaccel::attention` node and records the
site's index in the node's meta (`SITE_INDEX`). Later passes find those nodes by op overload
(`attention_nodes`) and change only their plan argument (`set_plan`).
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
from ..ops.attention import PLAN_ARG, attention_op
from ..plans import AttentionPlan, parse_plan
from ..runtime.wrapper import CallObserver, CallRoles

REWRITTEN = "rewritten"  # the attention pass replaced the site with ditaccel::attention
KEPT = "kept"            # the site keeps its original computation (the reason says why)
PLANNED = "planned"      # a later pass considered the site's plan (changed it, or says why not)
LOWERED = "lowered"      # the site's dense SDPA plan became aten SDPA again (Inductor compiles it)

SITE_INDEX = "ditaccel_site_index"  # node.meta key: the AttentionSite a ditaccel::attention node computes


@dataclass(frozen=True)
class SiteDecision:
    site_index: int
    module_path: str
    action: str                     # REWRITTEN, KEPT, PLANNED or LOWERED
    plan: Optional[str] = None      # short plan description after this pass, e.g. "dense/sdpa"
    reason: Optional[str] = None    # why it was kept, or a note on the plan (why not sparse, density)
    kernel: Optional[str] = None    # what runs, when a pass fixes it at compile time (lowered sites)
    kernel_from_cache: Optional[bool] = None  # that choice confirmed by the tuning cache


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

    A pass whose effect needs Python at run time says so here: `runner_factory` replaces
    "compile the graph" by a runner that compiles and calls pieces of it (the step cache splits
    the graph into head, body and tail). At most one pass may set a runner. (Whether the
    plans depend on the denoising step is read from the plans themselves: `step_dependent`.)
    """

    config: DitConfig
    analysis: GraphAnalysis
    example_inputs: Sequence[Any]
    runner_factory: Optional[Callable[[Callable[[fx.GraphModule], Callable]], Callable]] = None
    name: str = "graph"  # for logs: "graph <Dynamo compile id>"
    frame: Optional[int] = None  # the Dynamo frame id (its recompiles share step tracking); None: unknown

    def call_observer(self) -> CallObserver:
        """The step observer (and state owner) of the callable compiled from this graph."""
        a = self.analysis
        return CallObserver(CallRoles(a.timestep_input, a.main_input_index, a.condition_inputs, a.anchor_input,
                                      a.main_output_index, a.latent_view), self.name, self.config, self.frame)


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


def attention_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, int, AttentionPlan]]:
    """Every `ditaccel::attention` node of the graph (found by op overload), with the index of
    the site it computes and its current plan, in graph order."""
    return [(node, node.meta[SITE_INDEX], parse_plan(node.args[PLAN_ARG])) for node in gm.graph.nodes
            if node.op == "call_function" and node.target is attention_op]


def set_plan(node: fx.Node, plan: AttentionPlan) -> None:
    """Replace the plan argument of a `ditaccel::attention` node (nothing else changes)."""
    node.update_arg(PLAN_ARG, plan.to_json())


def step_dependent(gm: fx.GraphModule) -> bool:
    """True when a plan in the graph changes with the denoising step (the backend then tracks steps)."""
    return any(plan.depends_on_step for _, _, plan in attention_nodes(gm))


@functools.lru_cache(maxsize=256)
def _uuid(cls: type, config_json: str) -> str:
    module = sys.modules[cls.__module__]
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        source = cls.__qualname__
    return hashlib.sha256((source + config_json).encode()).hexdigest()[:16]
