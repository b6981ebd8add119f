import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. Set before anything imports
# triton (this conftest is imported before every test module); with a GPU, leave it alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_tuning_cache(tmp_path_factory):
    """The tests never read or write the user's tuning cache: $DITACCEL_AUTOTUNE_DIR points to a
    session folder (tests that need their own pass autotune.cache_dir or set it themselves)."""
    from ditcompile.autotune import ENV_DIR, reset_autotuners
    old = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(tmp_path_factory.mktemp("autotune-cache"))
    reset_autotuners()
    yield
    if old is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = old
    reset_autotuners()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no cache entries or recompile limits carried over)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
