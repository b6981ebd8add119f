import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. Set before anything imports
# triton (this conftest is imported before every test module); with a GPU, leave it alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no cache entries or recompile limits carried over)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
