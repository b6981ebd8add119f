"""Plans from strings: the cached parser the op calls on the JSON of `AttentionPlan.to_json()`.

    {"version": 2, "site_path": "blocks.0.attn1", "backend": "triton", "quant": "none",
     "sparse": {"policy": "radial", "params_json": "{...}", "grid": [21, 30, 52], ...}}

Version 1 (ditaccel 0.1: one flat object with "method", "site", "policy", ...) still parses, so
a graph compiled and cached by an older release keeps running.
"""
from __future__ import annotations

import dataclasses
import functools
import json

from .attention import PLAN_VERSION, AttentionPlan, SparseSpec

_V1_SPARSE = ("policy", "params", "grid", "text_position", "text_length", "block_size", "dense_steps",
              "guard_every", "guard_budget", "guard_rows")
_V1_RENAMED = {"params": "params_json"}


@functools.lru_cache(maxsize=4096)
def parse_plan(text: str) -> AttentionPlan:
    """Plan from its JSON string (cached: the op parses the same few strings every call).

    Raises ValueError when the text is not JSON, has unknown fields or invalid values.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"ditaccel::attention got a plan that is not JSON: {text!r}") from err
    if not isinstance(data, dict):
        raise ValueError(f"ditaccel::attention got a plan that is not a JSON object: {text!r}")
    version = data.pop("version", 1)
    if version == 1:
        data = _from_v1(data)
    elif version != PLAN_VERSION:
        raise ValueError(f"ditaccel::attention plan version {version} is not supported (this release reads "
                         f"versions 1 and {PLAN_VERSION}); recompile the model")
    known = {f.name for f in dataclasses.fields(AttentionPlan)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"ditaccel::attention plan has unknown fields {unknown}; known: {sorted(known)}")
    sparse = data.pop("sparse", None)
    if sparse is not None:
        sparse_known = {f.name for f in dataclasses.fields(SparseSpec)}
        if not isinstance(sparse, dict) or set(sparse) - sparse_known:
            raise ValueError(f"ditaccel::attention plan has an invalid sparse part {sparse!r}; "
                             f"known fields: {sorted(sparse_known)}")
        sparse = SparseSpec(**sparse)
    return AttentionPlan(sparse=sparse, **data)


def _from_v1(data: dict) -> dict:
    """ditaccel 0.1's flat plan -> version 2 fields (unknown v1 fields stay and are reported)."""
    method = data.pop("method", "dense")
    if method not in ("dense", "sparse"):
        raise ValueError(f"ditaccel::attention plan method {method!r} is not one of ('dense', 'sparse')")
    if "site" in data:
        data["site_path"] = data.pop("site")
    sparse = {_V1_RENAMED.get(k, k): data.pop(k) for k in _V1_SPARSE if k in data}
    data["sparse"] = sparse if method == "sparse" else None
    return data


__all__ = ["parse_plan"]
