"""Count the attention calls a model really makes in eager mode (independent of the backend)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SDPA = {F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention}
SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}


class AttentionCounter(TorchFunctionMode):
    """Counts SDPA calls and softmax calls (every softmax in these models is an attention's)."""

    def __init__(self):
        super().__init__()
        self.sdpa = 0
        self.softmax = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SDPA:
            self.sdpa += 1
        elif func in SOFTMAX:
            self.softmax += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return self.sdpa + self.softmax


def count_eager_attention(model, inputs: dict) -> AttentionCounter:
    from tests.models.zoo import run_model

    counter = AttentionCounter()
    with torch.no_grad(), counter:
        run_model(model, inputs)
    return counter


class ExecutedAttention:
    """Counts attention calls executed by compiled graphs: our op, and SDPA calls left alone.

    Our op's implementation calls `ops.attention.run_plan`; a kept SDPA call in a graph's generated code
    looks up `torch._C._nn.scaled_dot_product_attention` at run time. Both are wrapped.
    """

    def __init__(self, monkeypatch):
        from ditcompile.ops import attention as ops

        self.ours = 0
        self.kept = 0
        dense, sdpa = ops.run_plan, torch._C._nn.scaled_dot_product_attention

        def counting_dense(*args, **kwargs):
            self.ours += 1
            return dense(*args, **kwargs)

        def counting_sdpa(*args, **kwargs):
            self.kept += 1
            return sdpa(*args, **kwargs)

        monkeypatch.setattr(ops, "run_plan", counting_dense)
        monkeypatch.setattr(torch._C._nn, "scaled_dot_product_attention", counting_sdpa)
