"""run_trained_demo and `ditaccel demo` on the shipped fidelity model (CPU): rows, numbers checked
against an independent eager run and the metrics' definitions, the CPU's reference-path marking,
and the CLI end to end with --quick."""
import json
import math
import random

import numpy as np
import pytest
import torch

import ditcompile.demo.trained as trained
from ditcompile.cli import main
from ditcompile.demo import REFERENCE_NOTE, check_labels, demo_variants, run_trained_demo
from ditcompile.demo.variants import BLOCK, QUICK_KEYS
from ditcompile.fidelity import load_fidelity_model, sample, token_grid
from ditcompile.geometry import TokenLayout
from ditcompile.masks import get_policy
from ditcompile.ops.select import SDPA, TRITON, ImplChoice

pytest.importorskip("diffusers")
RNG = random.Random()
Q_SHAPE = (1, 4, 512, 32)


def test_reference_reason_on_the_cpu():
    for key, variant in demo_variants(10).items():
        reason = trained.reference_reason(variant, "cpu", torch.float32, Q_SHAPE)
        assert reason == (REFERENCE_NOTE if key in ("sparse", "int8", "all") else ""), key


def test_reference_reason_follows_select_impl(monkeypatch):
    variants = demo_variants(10)
    monkeypatch.setattr(trained, "select_impl", lambda *a, **k: ImplChoice(TRITON, None))
    assert all(trained.reference_reason(v, "cpu", torch.float32, Q_SHAPE) == "" for v in variants.values())
    monkeypatch.setattr(trained, "select_impl", lambda *a, **k: ImplChoice(SDPA, "head dim 33 unsupported"))
    note = trained.reference_reason(variants["int8"], "cpu", torch.float32, Q_SHAPE)
    assert note == "8-bit kernel unavailable (head dim 33 unsupported): ran dense SDPA"


@pytest.mark.parametrize("labels, message", [([], "at least one"), ([16], r"in \[0, 16\)"), ([-1], "got -1"),
                                             ([1.0], "got 1.0"), ([True], "got True"), ([1, 1], "label 1 is given twice"),
                                             (3, "must be a list"), ("1,10", "must be a list")])
def test_check_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        check_labels(labels)


def test_check_labels_accepts_tensors_and_tuples():
    labels = RNG.sample(range(16), 3)
    assert check_labels(torch.tensor(labels)) == labels == check_labels(tuple(labels))


@pytest.mark.parametrize("kwargs, message", [({"steps": 0}, "steps must be"), ({"rounds": 0}, "rounds must be"),
                                             ({"seed": -1}, "seed must be"), ({"compiler": "tvm"}, "compiler must"),
                                             ({"dtype": "int8"}, "dtype must"), ({"variants": ["x"]}, "unknown variant"),
                                             ({"variants": "cache"}, "variants must be a list"),
                                             ({"seed": 2 ** 63}, "seed must be an integer in"),
                                             ({"options": "flux"}, "options must be a dict"),
                                             ({"options": {"compiler": "inductor"}}, "options\\['compiler'\\]")])
def test_bad_arguments_fail_before_loading(kwargs, message, monkeypatch):
    monkeypatch.setattr(trained, "load_fidelity_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ValueError, match=message):
        run_trained_demo(device="cpu", **kwargs)


def test_rows_against_an_independent_eager_run():
    label, seed, steps = RNG.randrange(16), RNG.randrange(1000), 3
    result = run_trained_demo(labels=[label], steps=steps, seed=seed, variants=["cache", "sparse"], device="cpu",
                              rounds=2, options={"cache.threshold": 100.0})
    assert [r.key for r in result.rows] == ["eager", "cache", "sparse"]
    assert result.compiler == "eager" and result.baseline == "eager" and result.dtype == "float32"
    rows = {r.key: r for r in result.rows}

    reference = sample(load_fidelity_model(), [label], steps=steps, seed=seed)
    assert torch.equal(result.videos["eager"], reference)
    for key in ("cache", "sparse"):  # PSNR by its definition: peak 1 on [0, 1] pixels
        mse = (((result.videos[key].double() - reference.double()) / 2) ** 2).mean().item()
        expected = math.inf if mse == 0 else 10 * math.log10(1 / mse)
        assert rows[key].psnr_db == pytest.approx(expected, rel=1e-9)
        assert 0 < rows[key].ssim <= 1

    # timed rows: eager and the step cache (real on the CPU); sparse runs the reference: untimed
    assert len(rows["eager"].times_s) == len(rows["cache"].times_s) == 2
    assert rows["sparse"].times_s == [] and rows["sparse"].note == REFERENCE_NOTE and rows["sparse"].speedup is None
    assert rows["cache"].speedup == pytest.approx(np.median(rows["eager"].times_s) / np.median(rows["cache"].times_s))
    # threshold 100: every step after the 2 warm-up steps is reused
    assert (rows["cache"].steps_computed, rows["cache"].steps_reused) == (2, steps - 2)
    assert (rows["sparse"].steps_computed, rows["sparse"].steps_reused) == (steps, 0)
    # density: 1 dense warm-up step of 3, then the radial mask's own density (from the policy itself)
    params = get_policy("radial").params(**demo_variants(steps)["sparse"].options["sparse.radial"])
    (pattern,) = get_policy("radial").static_patterns(TokenLayout.of(token_grid()), BLOCK, params, "cpu")
    assert rows["sparse"].density == pytest.approx((1 + 2 * pattern.density) / 3)
    assert rows["sparse"].density < 1


def test_overrides_rename_and_reclassify_rows():
    """-o that turns sparse attention on in the cache row: the row says so, is not timed on the CPU
    (reference path), and with 1 step all in the dense warm-up it says no sparse call ran."""
    result = run_trained_demo(labels=[RNG.randrange(16)], steps=1, variants=["cache"], device=torch.device("cpu"),
                              rounds=1, options={"sparse.enabled": True, "sparse.block_size": 16,
                                                 "sparse.dense_steps": 1})
    row = result.rows[1]
    assert row.title == "ditaccel step cache + sparse (1 dense)"
    assert row.note.startswith(REFERENCE_NOTE) and "no sparse call: all 1 steps were dense" in row.note
    assert row.times_s == [] and row.speedup is None and row.density == 1.0
    assert row.psnr_db == math.inf  # every call dense and the cache cannot reuse step 1: identical


def test_cli_quick_end_to_end(capsys, tmp_path):
    pil = pytest.importorskip("PIL.Image")
    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("variant"))):]
    titles = [v.title for k, v in demo_variants(8).items() if k in QUICK_KEYS]
    body = table[2:2 + len(titles)]
    assert [line[:len(t)] for line, t in zip(body, titles)] == titles
    assert all(line.endswith(REFERENCE_NOTE) for line in body[2:])  # sparse and all: CPU reference
    label = trained.DEFAULT_LABELS[0]
    for name in (f"strip_label{label}.png", f"video_label{label}.gif"):
        image = pil.open(out / name)
        image.load()  # decodes
        assert image.width > 100 and image.height > 100
    data = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in data["rows"]] == list(QUICK_KEYS)
    assert data["meta"]["steps"] == 8 and data["meta"]["labels"] == [label]
    assert f"wrote: {out / f'strip_label{label}.png'}" in captured.out
    assert data["meta"]["command"] == f"ditaccel demo --quick --out {out}"
    assert data["meta"]["files"][-1] == str(out / "results.json")
    assert f"ditaccel demo: generation 1/{len(QUICK_KEYS) + len(QUICK_KEYS) - 2}" in captured.err  # not a TTY: lines


@pytest.mark.parametrize("argv, fragment", [
    (["--labels", "16"], "argument --labels: must be comma-separated labels in [0, 16)"),
    (["--labels", "1,x"], "argument --labels: must be comma-separated labels"),
    (["--variants", "cache,foo"], "argument --variants: must be comma-separated variants from eager,compile"),
    (["--variants", "cache,cache"], "argument --variants: variant 'cache' is given twice"),
    (["--model", "wan2.1-tiny", "--labels", "1"], "argument --labels: applies to the trained-model demo"),
    (["--model", "wan2.1-tiny", "--quick"], "argument --quick: applies to the trained-model demo"),
    (["--model", "wan2.1-tiny", "--compiler", "auto"], "argument --compiler: the plumbing demo (--model) takes"),
    (["--dtype", "int8"], "argument --dtype: invalid choice"),
    (["-o", "cache.threshold=-1"], "argument -o/--option"),
    (["--seed", str(2 ** 64)], "argument --seed: must be an integer in [0, 2**63 - 1]"),
])
def test_cli_usage_errors(capsys, argv, fragment):
    code = main(["demo", *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_cli_unwritable_out_fails_before_the_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(trained, "load_fidelity_model", lambda *a, **k: pytest.fail("ran before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr("ditcompile.cli.output_dir", lambda text: __import__("pathlib").Path(text))
    code = main(["demo", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot write into the output folder" in err[0]
