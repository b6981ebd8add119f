"""scripts/train_fidelity.py end to end on a toy budget (1 layer, 2 steps)."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("PIL")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_fidelity.py"


def test_train_script_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_fidelity", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    out = tmp_path / "w.safetensors"
    try:
        rc = mod.main(["--steps", "2", "--warmup", "1", "--batch-size", "2", "--layers", "1", "--ffn-dim", "64",
                       "--sample-steps", "1", "--device", "cpu", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    text = capsys.readouterr().out
    assert "final loss" in text and "own_frame" in text and "frame distance" in text
    assert out.is_file() and out.with_name("w_samples.png").is_file()
    from ditcompile.fidelity.model import load_fidelity_model, training_metadata

    assert load_fidelity_model(out).config.num_layers == 1
    assert training_metadata(out)["steps"] == "2"
