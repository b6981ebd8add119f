"""The kernels compile for real GPU targets (sm_80 / sm_90a), without a GPU.

The interpreter runs the kernels' Python, not Triton's compiler, so type or layout errors
that only the compiler sees would slip through the other tests.  Here the kernels are
compiled ahead of time (TTIR -> PTX -> cubin with Triton's bundled ptxas) in a subprocess
without ``TRITON_INTERPRET``.  This uses Triton internals (``ASTSource``); when their shape
differs from what this test expects it is skipped, not failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, compile as triton_compile
    except Exception as exc:
        print("SKIP: triton compiler API unavailable:", exc); sys.exit(0)
    from ditcompile.kernels.attention import flash_fwd as fa, quantize as qz

    def source(fn, types, constexprs):
        unknown = set(constexprs) - set(fn.arg_names)
        assert not unknown, f"test is out of date with {fn.__name__}: no parameters {unknown}"
        sig = {n: ("constexpr" if n in constexprs else types.get(n, "i32")) for n in fn.arg_names}
        pointers_and_strides = [n for n in fn.arg_names
                                if n not in constexprs and (sig[n].startswith("*") or n.startswith("stride"))]
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in pointers_and_strides}
        try:
            return ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        except Exception as exc:
            print("SKIP: ASTSource API differs:", exc); sys.exit(0)

    def attention(arch, quant, pv_fp8, sparse, warps, stages):
        types = {"Q": "*i8" if quant else "*bf16", "K": "*i8" if quant else "*bf16",
                 "V": "*fp8e4nv" if pv_fp8 else "*bf16", "OUT": "*bf16", "Q_SCALE": "*fp32",
                 "K_SCALE": "*fp32", "V_SCALE": "*fp32", "FULL_NUM": "*i32", "FULL_IDX": "*i32",
                 "PART_NUM": "*i32", "PART_IDX": "*i32", "PART_FLAG": "*i32", "KEY_BIAS": "*fp32", "qk_scale": "fp32",
                 "mask_stride_b": "i64", "mask_stride_h": "i64"}
        cx = dict(HEAD_DIM=128, HEAD_DIM_PAD=128, BLOCK_M=128, BLOCK_N=64, MASK_BLOCK_M=128,
                  MASK_BLOCK_N=128 if sparse else 64, SPARSE=sparse, HAS_KEY_BIAS=quant, QUANT_INT8=quant, PV_FP8=pv_fp8,
                  DOT_PRECISION="tf32", INTERPRETER=False, stride_qd=1, stride_kd=1, stride_od=1)
        cx["stride_vs" if pv_fp8 else "stride_vd"] = 1
        src = source(fa._sparse_attn_fwd_kernel, types, cx)
        return triton_compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": stages})

    for arch, quant, pv_fp8, sparse in [(90, False, False, False), (90, True, True, True), (80, True, False, True)]:
        kernel = attention(arch, quant, pv_fp8, sparse, 8, 3)
        assert "cubin" in kernel.asm, "no cubin produced"
        print("compiled attention", arch, quant, pv_fp8, sparse, "smem", kernel.metadata.shared)
    src = source(qz._quantize_int8_kernel, {"X": "*bf16", "MEAN": "*fp32", "OUT": "*i8", "SCALE": "*fp32"},
                 dict(HEAD_DIM=128, HEAD_DIM_PAD=128, BLOCK=128, HAS_MEAN=True, stride_xd=1))
    triton_compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    src = source(qz._quantize_fp8_kernel, {"X": "*bf16", "SCALE": "*fp32", "OUT": "*fp8e4nv"},
                 dict(HEAD_DIM=128, HEAD_DIM_PAD=128, BLOCK=64, EMULATE_ROUNDING=False, stride_xd=1))
    triton_compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    print("compiled quantize kernels")
    print("OK")
    """
)


def test_kernels_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a triton 3.9 notice; the default
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=200)
    if proc.stdout.startswith("SKIP:"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-6000:]
