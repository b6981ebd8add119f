"""Masked joint attention (HunyuanVideo with a padded prompt): SDPA with its mask vs ditaccel's plans.

    python benchmarks/masked_attention.py               # HunyuanVideo 720p (GPU)
    python benchmarks/masked_attention.py --cpu-smoke   # tiny shape on the CPU (reference paths)

One joint sequence of video tokens followed by a padded text prompt (the key-padding mask
HunyuanVideo builds, [B, 1, 1, S]), bf16 on a GPU (fp32 on the CPU), every row through
`ditcompile.ops.run_plan` (the op's own run-time path):

    sdpa-masked        F.scaled_dot_product_attention with the bool mask (torch picks the backend)
    sdpa-cudnn-nomask  SDPA cuDNN without the mask: the dense lower bound (not the same function)
    ours-dense         plan dense/triton+key-padding (the kernel adds the key bias in every tile)
    ours-int8          plan dense/triton/int8+key-padding
    ours-sparse        plan sparse/radial+key-padding (block 128, decay as the hunyuan preset)

Accuracy: relative L2 error against sdpa-masked. Each row's time is a median in the same
process (CUDA events on a GPU; wall time on the CPU, where only ratios mean anything). Prints a
table and writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ditcompile.autotune import cuda_median_ms  # noqa: E402
from ditcompile.fileio import atomic_write_text  # noqa: E402
from ditcompile.ops import run_plan  # noqa: E402
from ditcompile.plans import AttentionPlan, SparseSpec  # noqa: E402

# name, B, H, D, grid (frames, height, width), text tokens, valid text tokens, block
GPU_SHAPE = ("hunyuanvideo-720p", 1, 24, 128, (33, 45, 80), 256, 40, 128)
CPU_SHAPE = ("cpu-smoke", 1, 2, 32, (8, 4, 8), 24, 7, 16)


def rows(shape, device, dtype):
    name, b, h, d, grid, text, valid, block = shape
    s = grid[0] * grid[1] * grid[2] + text
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, generator=gen).to(device, dtype) for _ in range(3))  # [B, S, H, D]
    mask = torch.ones(b, 1, 1, s, dtype=torch.bool, device=device)
    mask[..., s - text + valid:] = False  # the padded end of the prompt
    spec = SparseSpec(policy="radial", grid=grid, text_position="after", text_length=text, block_size=block)
    plans = {
        "ours-dense": AttentionPlan(site_path="bench", backend="triton", mask="key_padding"),
        "ours-int8": AttentionPlan(site_path="bench", backend="triton", quant="int8", mask="key_padding"),
        "ours-sparse": AttentionPlan(site_path="bench", backend="triton", sparse=spec, mask="key_padding"),
    }
    calls = {"sdpa-masked": lambda: run_plan(q, k, v, "bshd", None, False, AttentionPlan(mask="key_padding"),
                                             None, mask)}
    if device == "cuda":
        def cudnn():
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        calls["sdpa-cudnn-nomask"] = cudnn
    for label, plan in plans.items():
        calls[label] = lambda plan=plan: run_plan(q, k, v, "bshd", None, False, plan, None, mask)
    return name, s, calls


def time_ms(fn, device, reps):
    if device == "cuda":
        return cuda_median_ms(fn, budget_ms=3000.0, max_reps=reps)
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per row (median)")
    parser.add_argument("--out", default="benchmarks/out/masked_attention.json", help="JSON output path")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("masked_attention.py: no CUDA device; the GPU shape needs one (use --cpu-smoke for the tiny CPU run)",
              file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_smoke else "cuda"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name, s, calls = rows(CPU_SHAPE if device == "cpu" else GPU_SHAPE, device, dtype)
    reference = calls["sdpa-masked"]().float()
    results = []
    for label, fn in calls.items():
        out = fn().float()
        error = float((out - reference).norm() / reference.norm()) if label != "sdpa-cudnn-nomask" else None
        results.append({"method": label, "ms": time_ms(fn, device, args.reps), "rel_l2_vs_sdpa_masked": error})
    base = results[0]["ms"]
    print(f"{name}: S={s} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else platform.machine()})")
    print(f"{'method':<20}{'ms':>10}{'speedup':>10}{'rel L2':>10}")
    for r in results:
        r["speedup_vs_sdpa_masked"] = base / r["ms"]
        err = "-" if r["rel_l2_vs_sdpa_masked"] is None else f"{r['rel_l2_vs_sdpa_masked']:.1e}"
        print(f"{r['method']:<20}{r['ms']:>10.2f}{r['speedup_vs_sdpa_masked']:>9.2f}x{err:>10}")
    info = {"shape": name, "seq": s, "device": device, "torch": torch.__version__, "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
