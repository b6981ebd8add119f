"""The benchmark scripts run end to end on CPU (--cpu-smoke) and refuse to run without CUDA otherwise.

Each script runs in a subprocess, as a user would run it, from the repository root.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "benchmarks" / "e2e.py"
ATTENTION = ROOT / "benchmarks" / "attention.py"
MASKED = ROOT / "benchmarks" / "masked_attention.py"
OVERHEAD = ROOT / "benchmarks" / "overhead.py"
TIMEOUT_S = 300
# Variants whose features exist today: they must produce numbers, not a reason.
MUST_RUN = ("eager", "compile", "ditaccel-dense", "ditaccel-cache", "ditaccel-quant")


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)  # fmt: skip


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _e2e_variant_names() -> list[str]:
    spec = importlib.util.spec_from_file_location("_e2e_under_test", E2E)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)  # the script puts benchmarks/ on sys.path: undo that here
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
        sys.modules.pop("_e2e_models", None)
        sys.path[:] = saved_path
    return [v.name for v in module.VARIANTS]


def test_e2e_cpu_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    proc = _run(E2E, "--cpu-smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())

    names = _e2e_variant_names()
    rows = data["rows"]
    assert [r["variant"] for r in rows] == names  # one row per variant, in run order
    steps = data["args"]["steps"]
    for r in rows:
        assert r["status"] in ("ok", "not available", "skipped"), (r["variant"], r["status"], r["note"])
        if r["status"] == "ok":
            for key in ("step_ms", "compile_s", "loop_s", "step_speedup", "loop_speedup", "max_abs_diff",
                        "rel_l2_diff"):  # fmt: skip
                assert _number(r[key]), (r["variant"], key, r[key])
            assert r["finite"] is True, r["variant"]
            assert r["loop_calls"] == steps and len(r["loop_call_ms"]) == steps
        else:
            assert r["note"].strip(), f"{r['variant']}: {r['status']} without a reason"
    by_name = {r["variant"]: r for r in rows}
    for name in MUST_RUN:
        assert by_name[name]["status"] == "ok", (name, by_name[name]["note"])
    ref = by_name["compile"]
    assert ref["step_speedup"] == pytest.approx(1.0) and ref["loop_speedup"] == pytest.approx(1.0)
    assert ref["max_abs_diff"] == 0.0
    cache = by_name["ditaccel-cache"]
    assert cache["steps_computed"] + cache["steps_reused"] == steps

    env = data["environment"]
    for key in ("torch", "diffusers", "date", "command", "gpu"):
        assert key in env
    assert data["models"][0]["name"] == "wan2.1-tiny"

    # the table
    assert "step ms" in proc.stdout and "loop x" in proc.stdout
    table = proc.stdout[proc.stdout.index("step ms"):]
    for name in names:
        assert name in table
    if importlib.util.find_spec("matplotlib") or importlib.util.find_spec("PIL"):
        assert out.with_suffix(".png").is_file()


def test_attention_cpu_smoke(tmp_path):
    out = tmp_path / "att.json"
    proc = _run(ATTENTION, "--cpu-smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    results = data["results"]
    assert results
    for r in results:
        assert _number(r["ms"]) or r["note"].strip(), r
    assert any(_number(r["ms"]) for r in results)
    assert "method" in proc.stdout and "TFLOP/s" in proc.stdout
    tuned = {r["method"]: r for r in results if r["method"].startswith("tuned-")}
    assert set(tuned) == {"tuned-dense", "tuned-int8", "tuned-sparse-0.1"}
    for r in tuned.values():  # the autotuner's winner, validated, timed as its own row, compared with fixed rows
        assert _number(r["ms"]) and "winner" in r["note"] and "vs fixed" in r["note"], r
        assert r["rel_l2"] < (3e-2 if "int8" in r["method"] else 1e-5), r


def test_masked_attention_cpu_smoke(tmp_path):
    out = tmp_path / "masked.json"
    proc = _run(MASKED, "--cpu-smoke", "--reps", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"sdpa-masked", "ours-dense", "ours-int8", "ours-sparse"}
    assert results["ours-dense"]["rel_l2_vs_sdpa_masked"] < 1e-5  # exact with the padding
    assert results["ours-int8"]["rel_l2_vs_sdpa_masked"] < 4e-2
    assert all(_number(r["ms"]) for r in results.values())


def test_overhead_cpu_smoke(tmp_path):
    """The overhead benchmark runs (it times on the CPU too) and its profile sees the mechanism:
    default ditaccel runs no op of ours and no more transposes than torch.compile; the opaque
    variant runs one op per attention call."""
    out = tmp_path / "overhead.json"
    proc = _run(OVERHEAD, "--cpu-smoke", "--models", "wan2.1-tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    rows = {(r["variant"], r["what"]): r for r in data["rows"]}
    assert set(rows) == {(v, w) for v in ("compile", "ditaccel", "ditaccel-opaque") for w in ("call", "generation")}
    for r in rows.values():
        assert _number(r["median"]) and _number(r["vs_compile"]) and len(r["times"]) == 2, r
        assert r["rel_l2_diff"] < 1e-5 and r["unit"] == "ms", r
    assert rows["compile", "call"]["vs_compile"] == pytest.approx(1.0)
    prof = {p["variant"]: p for p in data["profile"]}
    steps = data["args"]["steps"]
    assert prof["compile"]["attention_op_calls"] == prof["ditaccel"]["attention_op_calls"] == 0
    assert prof["ditaccel-opaque"]["attention_op_calls"] > 0
    assert prof["ditaccel-opaque"]["attention_op_calls"] % steps == 0
    assert prof["ditaccel"]["transposes"] == prof["compile"]["transposes"] < prof["ditaccel-opaque"]["transposes"]
    assert prof["ditaccel"]["copies"] == prof["compile"]["copies"]
    for key in ("torch", "date", "command", "device"):
        assert key in data["environment"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
@pytest.mark.parametrize("script", [E2E, ATTENTION, MASKED], ids=["e2e", "attention", "masked"])
def test_scripts_need_cuda(script, tmp_path):
    proc = _run(script, "--out", str(tmp_path / "out.json"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CUDA" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "out.json").exists()
