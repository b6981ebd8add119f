"""The deprecated `torch.backends.cuda.sdp_kernel(...)` around attention no longer breaks the graph:
the attention inside is seen and rewritten, outputs equal eager, and eager use still warns."""
import random
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ditcompile
from ditcompile import compat

RNG = random.Random()


class LegacyContext(nn.Module):
    """Open-Sora style: each attention call inside the legacy backend-selection context."""

    def __init__(self, flags):
        super().__init__()
        self.qkv, self.flags = nn.Linear(32, 96), flags

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, 2, 16).unbind(2)
        with torch.backends.cuda.sdp_kernel(**self.flags):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).flatten(2)


def _flags():
    flags = {name: RNG.random() < 0.5 for name in ("enable_flash", "enable_mem_efficient", "enable_cudnn")}
    return {**flags, "enable_math": True}  # the CPU needs the math backend


def test_legacy_sdp_kernel_is_traced_and_rewritten():
    torch.manual_seed(RNG.randrange(2**31))
    model, x = LegacyContext(_flags()).eval(), torch.randn(2, 8, 32)
    report = ditcompile.explain(model, x, options={"compiler": "eager"})
    assert len(report.graphs) == 1 and report.rewritten == 1, report.format()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = model(x)
        out = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_shim_keeps_torch_semantics():
    assert torch.backends.cuda.sdp_kernel is compat.sdp_kernel
    with pytest.warns(FutureWarning, match="sdp_kernel\\(\\)` is deprecated"):
        ctx = torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False,
                                             enable_cudnn=False)
    with ctx:  # only the math backend: SDPA still runs on the CPU
        q = torch.randn(1, 2, 4, 8)
        torch.testing.assert_close(F.scaled_dot_product_attention(q, q, q),
                                   torch.softmax(q @ q.transpose(-1, -2) / 8 ** 0.5, -1) @ q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.backends.cuda.sdp_kernel(enable_math=False, enable_flash=False, enable_mem_efficient=False,
                                            enable_cudnn=False):
            with pytest.raises(RuntimeError):  # no backend enabled: torch refuses, as with its own version
                F.scaled_dot_product_attention(q, q, q)
    compat.uninstall()
    try:
        assert torch.backends.cuda.sdp_kernel is not compat.sdp_kernel
    finally:
        compat.install()
