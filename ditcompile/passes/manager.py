"""The pass manager: an ordered list of passes chosen by the config.

Order matters and is fixed here, not by registration side effects:

    1. attention        every supported attention site -> ditaccel::attention with a dense plan
    2. sparse           video self/joint sites get a sparse plan (sparse.enabled)
    3. attention_quant  every plan gets 8-bit attention (attention.quant = "int8")
    4. lower_dense      sites whose plan is plain dense SDPA become aten SDPA again (Inductor
                        compiles them as plain torch.compile would; attention.lower_dense)
    5. step_cache       splits the graph into head/body/tail pieces (must run last: the pieces
                        are compiled separately and the graph is not edited after it)

`PassManager.from_config(config)` keeps the passes that are enabled (`DitPass.enabled`).
"""
from __future__ import annotations

import hashlib

import torch.fx as fx

from ..config import DitConfig
from .attention import AttentionRewritePass
from .attention_quant import AttentionQuantPass
from .base import DitPass, PassContext, PassReport
from .lower_dense import DenseLoweringPass
from .sparse import SparseAttentionPass
from .step_cache import StepCachePass

PIPELINE: tuple[type[DitPass], ...] = (AttentionRewritePass, SparseAttentionPass, AttentionQuantPass, DenseLoweringPass,
                                       StepCachePass)


class PassManager:
    def __init__(self, passes: list[DitPass]):
        self.passes = passes

    @classmethod
    def from_config(cls, config: DitConfig) -> "PassManager":
        return cls([p(config) for p in PIPELINE if p.enabled(config)])

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> list[PassReport]:
        reports = []
        for p in self.passes:
            reports.append(p(gm, ctx))
            gm.graph.lint()
        gm.recompile()
        return reports

    def uuid(self) -> str:
        joined = ",".join(f"{p.name}:{p.uuid()}" for p in self.passes)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def names(self) -> list[str]:
        return [p.name for p in self.passes]
