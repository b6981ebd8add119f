"""The built-in example models the CLI offers: real presets only, and `package.module:NAME` for others."""
import subprocess
import sys
from pathlib import Path

import pytest

from ditcompile.config import available_presets
from ditcompile.models import TINY_MODELS, load_model_spec
from tests.models import manual_dit

REPO = Path(__file__).resolve().parents[2]


def test_built_in_examples_use_shipped_presets_only():
    assert TINY_MODELS and all(spec.preset in available_presets() for spec in TINY_MODELS.values())
    assert "manual-dit-tiny" not in TINY_MODELS  # the hand-written DiT is a test fixture


def test_load_model_spec_by_name_or_module_path():
    assert load_model_spec("flux-tiny") is TINY_MODELS["flux-tiny"]
    assert load_model_spec("tests.models.manual_dit:EXAMPLE") is manual_dit.EXAMPLE
    with pytest.raises(KeyError, match="valid names: cogvideox-tiny"):
        load_model_spec("nope-tiny")
    with pytest.raises(ValueError, match="cannot load model 'tests.models.nope:X'"):
        load_model_spec("tests.models.nope:X")
    with pytest.raises(ValueError, match=r"has no \['build', 'make_inputs', 'preset'\]"):
        load_model_spec("tests.models.manual_dit:ManualVideoDiT")


def test_cli_rejects_a_bad_module_path_with_the_choices():
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "explain", "--model", "tests.models.nope:X"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2 and "unknown model 'tests.models.nope:X'" in out.stderr
    assert "wan2.1-tiny" in out.stderr and "package.module:NAME" in out.stderr
