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

METHODS = ("dense", "sparse")
POLICIES = ("radial", "spatial_temporal", "antidiagonal", "tile")
BACKENDS = ("sdpa", "triton")
QUANTS = ("none", "int8")


@dataclass(frozen=True)
class AttentionPlan:
    method: str = "dense"       # what the op computes: "dense" = softmax attention over all keys
    backend: str = "sdpa"       # "sdpa": torch SDPA; "triton": ditaccel's flash kernel on CUDA
    quant: str = "none"         # "int8": INT8 QK^T with K smoothing, FP8/16-bit P.V (triton only)
    site: str = ""              # module path of the site, for logs and runtime lookups
    # sparse plans (method "sparse"): the mask policy and what it needs to build its mask
    policy: str = ""                        # one of POLICIES
    params: str = "{}"                      # the policy factory's keyword arguments, as JSON
    grid: tuple = ()                        # (frames, height, width) of the video tokens
    text_position: str = ""                 # "before"/"after" for joint attention, "" without text
    text_length: int = 0
    block_size: int = 128                   # mask block (query and key), a multiple of 16
    dense_steps: int = 0                    # denoising steps run dense at the start of a generation
    guard_every: int = 0                    # fidelity guard: check every N steps (0: off) ...
    guard_budget: float = 0.05              # ... switching to dense above this relative L2 error ...
    guard_rows: int = 64                    # ... measured on this many sampled query rows

    def __post_init__(self) -> None:
        for name, value, accepted in (("method", self.method, METHODS), ("backend", self.backend, BACKENDS),
                                      ("quant", self.quant, QUANTS)):
            if value not in accepted:
                raise ValueError(f"attention plan {name} {value!r} is not one of {accepted}")
        if self.quant != "none" and self.backend != "triton":
            raise ValueError(f"attention plan quant={self.quant!r} needs backend 'triton'")
        if self.method == "sparse":
            if self.policy not in POLICIES:
                raise ValueError(f"sparse attention plan policy {self.policy!r} is not one of {POLICIES}")
            if len(self.grid) != 3 or self.block_size % 16:
                raise ValueError(f"sparse attention plan needs a 3-D grid and a block size multiple of 16, "
                                 f"got grid={self.grid} block_size={self.block_size}")
        object.__setattr__(self, "grid", tuple(self.grid))

    @property
    def policy_params(self) -> dict:
        return json.loads(self.params)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        quant = f"/{self.quant}" if self.quant != "none" else ""
        if self.method == "sparse":
            warm = f", dense {self.dense_steps} steps" if self.dense_steps else ""
            return f"sparse/{self.policy}{quant}{warm}"
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
