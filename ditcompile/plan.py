"""The static plan each rewritten attention site carries into `ditaccel::attention`.

A plan is a frozen dataclass serialised to canonical JSON and passed to the custom op as a
string argument, so Inductor's FX-graph cache key covers it and the op needs no hidden state.
Later passes add methods ("sparse", "int8", ...) by adding fields with defaults; an old plan
string keeps parsing.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

METHODS = ("dense",)
BACKENDS = ("sdpa", "triton")
QUANTS = ("none", "int8")


@dataclass(frozen=True)
class AttentionPlan:
    method: str = "dense"       # what the op computes: "dense" = softmax attention over all keys
    backend: str = "sdpa"       # "sdpa": torch SDPA; "triton": ditaccel's flash kernel on CUDA
    quant: str = "none"         # "int8": INT8 QK^T with K smoothing, FP8/16-bit P.V (triton only)
    site: str = ""              # module path of the site, for logs and runtime lookups

    def __post_init__(self) -> None:
        for name, value, accepted in (("method", self.method, METHODS), ("backend", self.backend, BACKENDS),
                                      ("quant", self.quant, QUANTS)):
            if value not in accepted:
                raise ValueError(f"attention plan {name} {value!r} is not one of {accepted}")
        if self.quant != "none" and self.backend != "triton":
            raise ValueError(f"attention plan quant={self.quant!r} needs backend 'triton'")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        quant = f"/{self.quant}" if self.quant != "none" else ""
        return f"{self.method}/{self.backend}{quant}"


@functools.lru_cache(maxsize=4096)
def parse_plan(text: str) -> AttentionPlan:
    """Plan from its JSON string (cached: the op parses the same few strings every call)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"ditaccel::attention got a plan that is not JSON: {text!r}") from err
    known = {f.name for f in dataclasses.fields(AttentionPlan)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"ditaccel::attention plan has unknown fields {unknown}; known: {sorted(known)}")
    return AttentionPlan(**data)
