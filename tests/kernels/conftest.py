"""Fixtures for the kernel tests.

Without a CUDA device the Triton kernels run in Triton's CPU interpreter:
``TRITON_INTERPRET=1`` is set here, before anything imports triton (conftest files are
imported before the test modules).  With a CUDA device the same tests run on the GPU, and
the variable is left alone so the rest of the suite (Inductor's Triton kernels) is not
interpreted.  Shapes are kept small so the interpreter stays fast.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernel inputs live: CPU under the interpreter, else the GPU."""
    if INTERPRET:
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("TRITON_INTERPRET=0 but no CUDA device")
    return "cuda"


@pytest.fixture
def rel_l2():
    """Relative L2 error ||out - ref|| / ||ref||, computed in float64."""

    def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
        out, ref = out.double().cpu(), ref.double().cpu()
        assert torch.isfinite(out).all(), "output has NaN/inf (unwritten or poisoned elements?)"
        denom = ref.norm().item()
        return (out - ref).norm().item() / (denom if denom > 0 else 1.0)

    return _rel_l2


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: new random data every run, and the seed is printed
    (pytest shows it with a failure) so a failing draw can be replayed."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)
