"""The `ditaccel` torch.compile backend: options -> config -> analysis -> passes -> Inductor.

    torch.compile(model, backend="ditaccel", options={"preset": "wan2.1"})

Registered through the `torch_dynamo_backends` entry point, so no import is needed. For each
Dynamo graph:

    1. `resolve_config(options)`        bad options raise ConfigError here, before any work
    2. `rewrite_valid_token_selections` valid-token selections (nonzero) -> key-padding masks
       `analyze_graph(...)`             attention/linear sites, token grid, text segment
    3. `PassManager.from_config(...)`   ordered passes edit a copy of the graph
    4. the explain report is logged (INFO, logger "ditcompile") and handed to `explain()`
    5. `compile_fx` (Inductor), or the rewritten graph itself with `compiler="eager"`

If the analysis or a pass fails unexpectedly, the original graph is compiled unchanged and
the report says why (option `strict=True` raises instead; tests use it).
"""
from __future__ import annotations

import contextvars
import dataclasses
import copy
import functools
import logging
import threading
import traceback
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from .config import ConfigError, DitConfig, inductor_patch_dict, resolve_config
from .graph.analysis import analyze_graph
from .graph.valid_tokens import data_dependent_ops, rewrite_valid_token_selections
from .graph.sites import GraphAnalysis
from .ops.attention import host_sync_reason
from .passes.base import PassContext, attention_nodes, step_dependent
from .passes.manager import PassManager
from .report import GraphReport
from .runtime.wrapper import StepTrackingCall

log = logging.getLogger("ditcompile")

# Reports of the graphs compiled inside an `explain()` call (context-local, not global state).
_REPORT_SINK: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("ditaccel_report_sink", default=None)


def ditaccel_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], *, options: Any = None,
                     mode: Optional[str] = None) -> Callable:
    config = resolve_config(options)
    if mode and mode not in ("default", config.mode):  # torch.compile(mode=...) without options: checked like one
        config = dataclasses.replace(config, mode=mode)
    mode = config.mode
    report, compiled_gm, ctx = rewrite_graph(gm, example_inputs, config)
    needs_step = ctx is not None and step_dependent(compiled_gm)
    step_dependent_call = needs_step or (ctx is not None and ctx.runner_factory is not None)
    if step_dependent_call and ctx.analysis.timestep_input is None:
        report.notes.append("no timestep input in this graph: the denoising step is unknown, so step-dependent "
                            "plans take their safe path (dense attention, every step computed) unless "
                            "ditcompile.track_steps(model) follows the model's calls (regional compilation)")
    host_reads = host_sync_reasons(compiled_gm) if ctx is not None else []
    no_cudagraphs = step_dependent_call or bool(host_reads)
    if no_cudagraphs and _inductor_patches(config, mode).get("triton.cudagraphs"):  # said by explain() too
        why = ("the step cache decides per call which blocks run" if ctx.runner_factory is not None
               else "the plans depend on the denoising step, which a replayed graph would not see" if needs_step
               else f"{host_reads[0]}{f' (and {len(host_reads) - 1} more)' if len(host_reads) > 1 else ''}")
        report.notes.append(f"CUDA graphs off: {why}")
    for warning in features_off(report, config, ctx):
        level = logging.WARNING if _first_time(warning) else logging.INFO  # once per frame, not per recompile
        log.log(level, "ditaccel %s: %s", report.graph_id, warning)
    if config.report:
        log.info("%s", report.format())
    sink = _REPORT_SINK.get()
    if sink is not None:
        sink.append(report)
    if ctx is not None and ctx.runner_factory is not None:
        return ctx.runner_factory(lambda piece: _compile_piece(piece, config, mode, no_cudagraphs))
    compiled = compiled_gm.forward if config.compiler == "eager" else _inductor_or_uncompiled(
        compiled_gm, example_inputs, config, mode, no_cudagraphs, report)
    if needs_step:
        return StepTrackingCall(compiled, ctx.call_observer())
    return compiled


def _inductor_or_uncompiled(gm: fx.GraphModule, example_inputs: Sequence[Any], config: DitConfig,
                            mode: Optional[str], no_cudagraphs: bool, report: GraphReport) -> Callable:
    """Inductor's compiled graph; for a graph that still holds data-dependent sizes (captured
    because ditaccel traces with `capture_dynamic_output_shape_ops`) that Inductor fails on, the
    graph itself, uncompiled, with a warning: without the capture Dynamo would have broken the
    graph there and run those operations eagerly too. Other Inductor errors propagate."""
    try:
        return _inductor(gm, example_inputs, config, mode, no_cudagraphs)
    except Exception as err:
        kept = data_dependent_ops(gm)
        if not kept or config.strict:
            raise
        why = (f"Inductor failed on this graph ({kept[0]}; {type(err).__name__}: "
               f"{str(err).splitlines()[0][:160]}); it runs uncompiled. Set "
               "graph.capture_dynamic_output_shape_ops=false to let Dynamo break the graph there instead")
        report.notes.append(why)
        log.warning("ditaccel %s: %s", report.graph_id, why)
        return gm.forward


def trace_context_for(options: Any) -> Optional[Callable[[], Any]]:
    """What Dynamo enters around each call of a model compiled for ditaccel with `options`, so
    around its tracing (`compat.trace_context_of`): `capture_dynamic_output_shape_ops` on unless
    `graph.capture_dynamic_output_shape_ops` is false. Raises ConfigError for bad options."""
    config = resolve_config(options)
    if not config.graph.capture_dynamic_output_shape_ops:
        return None
    return functools.partial(torch._dynamo.config.patch, capture_dynamic_output_shape_ops=True)


ditaccel_backend.trace_context_for = trace_context_for  # read by compat's get_compiler_fn


def host_sync_reasons(gm: fx.GraphModule) -> list[str]:
    """Why calls of the graph's `ditaccel::attention` nodes read tensor values on the host (the
    graph then runs without CUDA graphs; `ops.attention.host_sync_reason`). Empty for a graph
    whose dense sites were lowered to aten SDPA."""
    return [r for r in (host_sync_reason(plan) for _, _, plan in attention_nodes(gm)) if r is not None]


def features_off(report: GraphReport, config: DitConfig, ctx: Optional[PassContext]) -> list[str]:
    """What the user enabled that this graph does not do, with the reasons (said at WARNING level:
    a feature that is silently off looks like a slow model). Graphs without attention are not
    considered (a model's small helper graphs), unless they compute softmax calls the matcher did
    not recognise as attention while an attention feature is on."""
    if ctx is None:
        return []
    if not report.analysis.attention:
        asked = [name for name, on in (("sparse.enabled", config.sparse.enabled),
                                        (f"attention.quant={config.attention.quant}", config.attention.quant != "none"))
                 if on and config.attention.enabled]
        if asked and report.analysis.unmatched_softmax:
            return [f"{', '.join(asked)}, but no attention of this graph is recognised: "
                    f"{report.analysis.unmatched_softmax} softmax call(s) kept as written (attention written with "
                    "einsum, or another spelling than SDPA / matmul-softmax-matmul?)"]
        return []
    kept = [note for note in report.notes if note.startswith("data-dependent size kept")]
    out = [f"{kept[0]}{f' (and {len(kept) - 1} more in the report)' if len(kept) > 1 else ''}; attention here "
           "may see sizes known only at run time. Set graph.capture_dynamic_output_shape_ops=false to trace as "
           "Dynamo does by default (a graph break there)"] if kept else []
    if config.attention.enabled and config.sparse.enabled:
        rows = report.rows()
        if not any(r["plan"].startswith("sparse") for r in rows):
            reasons = list(dict.fromkeys(r["note"] for r in rows if r["note"]))
            out.append("sparse.enabled, but no attention site of this graph runs sparse: " + "; ".join(reasons[:3]))
    if config.cache.enabled and ctx.runner_factory is None:
        notes = [n for p in report.passes if p.name == "step_cache" for n in p.notes] or ["no reason given"]
        out.append("cache.enabled, but this graph runs every step: " + "; ".join(notes))
    return out


def rewrite_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], config: DitConfig
                  ) -> tuple[GraphReport, fx.GraphModule, Optional[PassContext]]:
    """Run the analysis and passes on a copy of `gm`; return the report, the graph to run and
    the pass context (None when the passes failed and the original graph runs)."""
    compile_id = _compile_id()
    graph_id = str(compile_id) if compile_id is not None else "-"
    manager = PassManager.from_config(config)
    work = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    try:
        notes = rewrite_valid_token_selections(work) + data_dependent_ops(work)
        analysis = analyze_graph(work, example_inputs, config.graph.token_grid, config.graph.text_position)
        ctx = PassContext(config, analysis, example_inputs, name=f"graph {graph_id}",
                          frame=compile_id.frame_id if compile_id is not None else None)
        reports = manager.run(work, ctx)
    except Exception as err:  # never crash deep inside: keep the model's own computation
        if config.strict or isinstance(err, ConfigError):  # bad options always surface
            raise
        log.warning("ditaccel: rewriting graph %s failed, compiling it unchanged:\n%s",
                    graph_id, traceback.format_exc())
        error = f"{type(err).__name__}: {err}"
        return GraphReport(graph_id, GraphAnalysis.empty(), [], manager.names(), manager.uuid(), config.compiler,
                           config.preset, error=error), gm, None
    report = GraphReport(graph_id, analysis, reports, manager.names(), manager.uuid(), config.compiler, config.preset)
    report.notes.extend(notes)
    return report, work, ctx


_SAID: dict[int, set[str]] = {}  # Dynamo frame id -> warnings already given for its graphs


def _first_time(text: str) -> bool:
    """True the first time `text` is said for the frame being compiled: recompiles of one frame
    (new shapes, the blocks of a regionally compiled model) repeat it at INFO level only. A frame's
    first compile (also after `torch._dynamo.reset()`) starts afresh."""
    compile_id = _compile_id()
    if compile_id is None:
        return True
    if compile_id.frame_compile_id == 0:
        _SAID.pop(compile_id.frame_id, None)
    said = _SAID.setdefault(compile_id.frame_id, set())
    first = text not in said
    said.add(text)
    return first


def _compile_id() -> Any:
    try:
        return torch._guards.CompileContext.current_compile_id()
    except Exception:  # outside Dynamo (direct calls in tests)
        return None


def _compile_piece(gm: fx.GraphModule, config: DitConfig, mode: Optional[str], no_cudagraphs: bool) -> Callable:
    """A step-cache piece as a callable: as it is (compiler "eager"), or compiled by Dynamo +
    Inductor on its first call. The piece has no Dynamo example inputs of its own, so it goes
    through `torch.compile` again: Dynamo guards its inputs and recompiles for new shapes (a
    dynamic-shape graph's pieces run at several resolutions), and values a dynamic graph reads
    with `.item()` are handled as in any compiled model."""
    if config.compiler == "eager":
        return gm.forward
    backend = functools.partial(_piece_backend, config=config, mode=mode, no_cudagraphs=no_cudagraphs)
    if _changes_autocast(gm):
        return _PerSignaturePiece(gm, backend)
    return _LazyPiece(gm, backend)


def _changes_autocast(gm: fx.GraphModule) -> bool:
    """The graph enters or leaves an autocast region (`with torch.autocast(...)` in the model,
    e.g. Mochi's rotary embedding): Dynamo records it as `_enter_autocast` / `_exit_autocast`
    calls, which Inductor compiles in a Dynamo graph but which AOTAutograd refuses when Dynamo
    traces them again from a piece's code ("does not support tracing graphs that mutate the
    autocast state")."""
    targets = {getattr(torch.amp.autocast_mode, name, None) for name in ("_enter_autocast", "_exit_autocast")}
    return any(n.op == "call_function" and n.target in targets for n in gm.graph.nodes)


class _PerSignaturePiece:
    """A piece compiled by Inductor directly (no Dynamo trace of its code: see `_changes_autocast`),
    once per input signature: each tensor's shape, strides, dtype, device and grad flag and each
    other argument's value. Dynamo's guards would do this for a traced piece; without them a
    compiled piece must never see inputs it was not compiled for."""

    def __init__(self, gm: fx.GraphModule, backend: Callable):
        self.gm, self.backend = gm, backend
        self.compiled: dict[tuple, Callable] = {}
        self._lock = threading.Lock()

    @staticmethod
    def signature(args: Sequence[Any]) -> tuple:
        return tuple((tuple(a.shape), a.stride(), a.dtype, a.device, a.requires_grad) if isinstance(a, torch.Tensor)
                     else (type(a).__name__, a) for a in args)

    def __call__(self, *args: Any) -> Any:
        key = self.signature(args)
        fn = self.compiled.get(key)
        if fn is None:
            with self._lock:
                fn = self.compiled.get(key)
                if fn is None:
                    fn = self.compiled[key] = self.backend(copy.deepcopy(self.gm), list(args))
        return fn(*args)


class _LazyPiece:
    """`torch.compile(piece)`, made at the piece's first call with freshly generated code. The
    piece's `forward` was generated while Dynamo compiled the outer graph, and Dynamo does not
    trace that code object (seen on torch 2.13: no frame of it reaches the backend, the piece runs
    eagerly, silently); `recompile()` at the first call gives it a new one."""

    def __init__(self, gm: fx.GraphModule, backend: Callable):
        self.gm, self.backend = gm, backend
        self.compiled: Optional[Callable] = None
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            with self._lock:
                if self.compiled is None:
                    self.gm.recompile()
                    self.compiled = torch.compile(self.gm, backend=self.backend)
        return self.compiled(*args)


def _piece_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], *, config: DitConfig, mode: Optional[str],
                   no_cudagraphs: bool) -> Callable:
    return _inductor(gm, example_inputs, config, mode, no_cudagraphs)


def _inductor_patches(config: DitConfig, mode: Optional[str]) -> dict:
    patches: dict = {}
    if mode and mode != "default":
        patches.update(torch._inductor.list_mode_options(mode))
    patches.update(inductor_patch_dict(config.inductor))
    return patches


def _inductor(gm: fx.GraphModule, example_inputs: Sequence[Any], config: DitConfig, mode: Optional[str],
              no_cudagraphs: bool = False):
    """Inductor with the mode's and the config's patches; no CUDA graphs when plans are step-dependent
    or read tensor values on the host (`no_cudagraphs`)."""
    from torch._inductor.compile_fx import compile_fx  # heavy: imported when a graph is compiled

    patches = _inductor_patches(config, mode)
    if no_cudagraphs:
        patches["triton.cudagraphs"] = False
    return compile_fx(gm, list(example_inputs), config_patches=patches or None)
