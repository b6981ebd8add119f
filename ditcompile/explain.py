"""`explain()`: compile a model with the ditaccel backend (no Inductor) and return its report.

    report = ditcompile.explain(transformer, hidden_states=x, timestep=t,
                                encoder_hidden_states=text, options="wan2.1")
    print(report.format())

The model runs once (the rewritten graph in eager mode), so this is as slow as one eager
forward plus a Dynamo trace, and needs no GPU.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .backend import _REPORT_SINK, ditaccel_backend
from .config import resolve_config
from .report import Explanation


def explain(model: Any, *args: Any, options: Any = None, strict: bool = False, fullgraph: bool = False,
            dynamic: Any = None, **kwargs: Any) -> Explanation:
    config = resolve_config(options)
    config = dataclasses.replace(config, compiler="eager", report=False, strict=strict or config.strict)
    reports: list = []
    sink_token = _REPORT_SINK.set(reports)
    try:
        compiled = torch.compile(model, backend=lambda gm, ex: ditaccel_backend(gm, ex, options=config),
                                 fullgraph=fullgraph, dynamic=dynamic)
        with torch.no_grad():
            compiled(*args, **kwargs)
    finally:
        _REPORT_SINK.reset(sink_token)
    return Explanation(reports)
