"""`explain()`: compile a model with the ditaccel backend (no Inductor) and return its report.

    report = ditcompile.explain(transformer, hidden_states=x, timestep=t,
                                encoder_hidden_states=text, options="wan2.1")
    print(report.format())

The model runs once (the rewritten graph in eager mode), so this is as slow as one eager
forward plus a Dynamo trace, and needs no GPU. Running it also tells, per rewritten site, which
kernel ran and whether the choice came from the tuning cache (`ditaccel autotune`).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from .autotune import clear_recorded_choices, recorded_choices
from .backend import _REPORT_SINK, ditaccel_backend, trace_context_for
from .config import resolve_config
from .report import Explanation
from .runtime.state import request_scope

log = logging.getLogger("ditcompile")


def explain(model: Any, *args: Any, options: Any = None, strict: bool = False, fullgraph: bool = False,
            dynamic: Any = None, **kwargs: Any) -> Explanation:
    config = resolve_config(options)
    config = dataclasses.replace(config, compiler="eager", report=False, strict=strict or config.strict)
    reports: list = []
    sink_token = _REPORT_SINK.set(reports)

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        return ditaccel_backend(gm, example_inputs, options=config)

    backend.trace_context_for = lambda _options: trace_context_for(config)  # type: ignore[attr-defined]

    clear_recorded_choices()
    try:
        compiled = torch.compile(model, backend=backend, fullgraph=fullgraph, dynamic=dynamic)
        with torch.no_grad(), request_scope("explain"):  # its run-time state goes with the scope
            compiled(*args, **kwargs)
    finally:
        _REPORT_SINK.reset(sink_token)
        _drop_compiled_code(backend)
    kernels = recorded_choices()  # the kernel each rewritten site ran, and whether from the cache
    for report in reports:
        report.kernels = kernels
    return Explanation(reports)


def _drop_compiled_code(backend: Any) -> None:
    """Remove what `explain` compiled from Dynamo's code cache: each call compiles with a new
    backend, and the entries would otherwise pile up on the model's code until Dynamo's
    recompile limit sends the user's own `torch.compile` of that code to eager. Only code whose
    entries all came from this `explain` call is reset (never the user's compiled entries)."""
    try:
        from torch._dynamo import convert_frame, eval_frame
        for ref in list(convert_frame.input_codes.seen):
            code = ref()
            entries = eval_frame._debug_get_cache_entry_list(code) if code is not None else []
            if entries and all(getattr(e.backend, "compiler_fn", e.backend) is backend for e in entries):
                eval_frame.reset_code(code)
    except Exception as err:  # noqa: BLE001 -- a cleanup that Dynamo internals may not offer
        log.debug("ditaccel explain: could not drop its compiled code (%s)", err)
