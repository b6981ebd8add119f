"""Attention kernel benchmark: ditaccel's Triton kernel vs SDPA (cuDNN, flash), FlexAttention, SageAttention.

One call, one GPU, under ~4 minutes (a time budget skips what does not fit)::

    python benchmarks/attention.py                 # Wan2.1-1.3B, Wan2.1-14B, HunyuanVideo 720p
    python benchmarks/attention.py --quick         # first shape only
    python benchmarks/attention.py --cpu-smoke     # tiny shape on CPU, reference paths only

For each shape, on the same bf16 inputs and the same block masks (128 x 128 blocks):

* ours: dense bf16, dense int8 (int8 QK, FP8 PV on sm89+), block-sparse bf16 at densities
  0.5 / 0.25 / 0.1 (random-but-structured masks: a local band around the diagonal plus
  random blocks, the same count per query block);
* SDPA with the cuDNN backend and with the flash backend (dense);
* FlexAttention, compiled once, with a ``BlockMask`` built from the same kv_num_blocks /
  kv_indices (``BlockMask.from_kv_blocks``, all listed blocks as full blocks);
* SageAttention (``sageattention.sageattn``) when importable;
* tuned: the op-level autotuner (``ditcompile.autotune.tune_problem``) validates and times every
  candidate of the op for the shape (dense: SDPA backends, our kernel configs, FlexAttention,
  flash_attn; 8-bit: our kernel, SageAttention; block-sparse at density 0.1: our kernel
  configs, FlexAttention with the same mask) and the winner is timed again as its own row.
  ``vs fixed`` in the note: the tuned row's time over the best fixed row of the same variant
  measured here (the target: <= 1.0 within noise).

Accuracy: relative L2 error against SDPA on the same inputs (dense variants: the cuDNN output;
sparse variants: SDPA with the token-level boolean mask on a sample of query rows).
Prints a table (ms, TFLOP/s, speedup vs cuDNN, rel. L2 error) and writes JSON to ``--out``.
TFLOP/s counts the FLOPs actually computed (4 * B * H * Sq * Skv * D * density).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ditcompile.autotune import TuneSettings, cuda_median_ms, median_ms, tune_problem
from ditcompile.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SHAPES = [  # name, B, H, S, D
    ("wan2.1-1.3b-480p", 1, 12, 32760, 128),
    ("wan2.1-14b-480p", 1, 40, 32760, 128),
    ("hunyuanvideo-720p", 1, 24, 118800, 128),
]
CPU_SMOKE_SHAPE = ("cpu-smoke", 1, 2, 300, 64)
DENSITIES = (0.5, 0.25, 0.1)
MASK_BLOCK = 128
SAMPLE_ROWS = 256  # query rows checked against masked SDPA for sparse variants


@dataclass
class Result:
    shape: str
    method: str
    density: float
    ms: float | None = None
    tflops: float | None = None
    speedup_vs_cudnn: float | None = None
    rel_l2: float | None = None
    error_vs: str = ""
    note: str = ""


@dataclass
class Bench:
    """Time keeping and the results so far."""

    budget_s: float
    cpu: bool
    start: float = field(default_factory=time.perf_counter)
    results: list[Result] = field(default_factory=list)

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.start > self.budget_s


# ---------------------------------------------------------------------- timing and errors


def time_ms(fn, cpu: bool, budget_s: float = 0.6, max_reps: int = 20) -> float:
    """Median time of ``fn`` after one warm-up call; repetitions fit in ``budget_s``."""
    if not cpu:
        return cuda_median_ms(fn, budget_s * 1e3, max_reps=max_reps, min_reps=2)
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def attention_flops(b: int, h: int, sq: int, skv: int, d: int, density: float = 1.0) -> float:
    return 4.0 * b * h * sq * skv * d * density


# ---------------------------------------------------------------------- masks


def structured_block_mask(heads: int, nqb: int, nkb: int, density: float, seed: int, device) -> torch.Tensor:
    """bool [1, H, NQB, NKB]: per query block, a local band around the diagonal (half the budget)
    plus random kv blocks, exactly ``round(density * NKB)`` blocks per row (balanced work)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    per_row = max(1, round(density * nkb))
    band = per_row / 2
    qi = torch.arange(nqb)[:, None] * (nkb / nqb)
    kj = torch.arange(nkb)[None, :]
    local = ((kj - qi).abs() <= band / 2).float()  # [NQB, NKB]
    priority = torch.rand(heads, nqb, nkb, generator=gen) + 2.0 * local
    top = priority.topk(per_row, dim=-1).indices
    blocks = torch.zeros(heads, nqb, nkb, dtype=torch.bool).scatter_(-1, top, True)
    return blocks[None].to(device)


def flex_block_mask(mask, eager: bool):
    """torch BlockMask with the same kv_num_blocks / kv_indices, listed blocks as *full* blocks.

    The compiled flex kernel visits exactly the listed blocks and never evaluates a mask_mod on
    full blocks, so none is needed there (and none means no recompilation per mask).  The
    unfused eager path (CPU smoke) ignores block lists and applies only the mask_mod, so there
    it gets one that encodes the same block mask.
    """
    from torch.nn.attention.flex_attention import BlockMask

    mask_mod = None
    if eager:
        dense_blocks = mask.to_dense_block_mask()  # [1, H, NQB, NKB]
        bm, bn = mask.block_m, mask.block_n

        def block_mask_mod(b, h, q_idx, kv_idx):
            return dense_blocks[0, h, q_idx // bm, kv_idx // bn]

        mask_mod = block_mask_mod

    return BlockMask.from_kv_blocks(
        torch.zeros_like(mask.kv_num_blocks), torch.zeros_like(mask.kv_indices),
        full_kv_num_blocks=mask.kv_num_blocks, full_kv_indices=mask.kv_indices,
        BLOCK_SIZE=(mask.block_m, mask.block_n), mask_mod=mask_mod, seq_lengths=(mask.q_len, mask.kv_len),
    )  # fmt: skip


# ---------------------------------------------------------------------- methods


def sdpa_fn(q, k, v, backend_name: str | None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend_name is None:
        return lambda: F.scaled_dot_product_attention(q, k, v)
    backend = getattr(SDPBackend, backend_name)

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def masked_sdpa_rows(q, k, v, mask, rows: torch.Tensor) -> torch.Tensor:
    """SDPA with the token-level mask on a sample of query rows: [B, H, R, D].

    The benchmark masks are pure block masks (no dense text ranges), so the token mask is
    the block mask expanded.
    """
    blocks = mask.to_dense_block_mask()  # [1, H, NQB, NKB]
    cols = torch.arange(mask.kv_len, device=blocks.device)
    allowed = blocks[:, :, rows // mask.block_m][..., cols // mask.block_n]  # [1, H, R, Skv]
    out = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=allowed)
    return torch.nan_to_num(out, nan=0.0)  # rows with no key: 0, as in our kernel


def load_sageattention():
    try:
        from sageattention import sageattn
    except Exception:  # noqa: BLE001 -- optional dependency, any import failure means "absent"
        return None
    return sageattn


# ---------------------------------------------------------------------- one shape


def run_shape(bench: Bench, name: str, b: int, h: int, s: int, d: int, args) -> None:
    from ditcompile.kernels.attention.flash_fwd import sparse_flash_attention as kernel
    from ditcompile.kernels.block_mask import BlockSparseMask

    tuning = TuneSettings(max_candidates=args.tune_configs)

    def sparse_flash_attention(*a, **kw):  # ours, timed with the benchmark's tuning budget
        return kernel(*a, tuning=tuning, **kw)

    device = "cpu" if bench.cpu else "cuda"
    dtype = torch.float32 if bench.cpu else torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, h, s, d, device=device, dtype=dtype, generator=gen)
    k = torch.randn(b, h, s, d, device=device, dtype=dtype, generator=gen)
    k += 2.0 * torch.randn(b, h, 1, d, device=device, dtype=dtype, generator=gen)  # channel offsets
    v = torch.randn(b, h, s, d, device=device, dtype=dtype, generator=gen)
    dense_flops = attention_flops(b, h, s, s, d)
    nqb = nkb = -(-s // MASK_BLOCK)
    rows = torch.linspace(0, s - 1, min(SAMPLE_ROWS, s), device=device).long()
    cudnn_ms = None

    def record(method, fn, density=1.0, ref=None, error_vs="", flops=None, note=""):
        nonlocal cudnn_ms
        res = Result(name, method, density, note=note)
        if bench.out_of_time():
            res.note = "skipped: time budget"
            bench.results.append(res)
            print(f"  {method:<28} skipped (time budget)", flush=True)
            return None
        try:
            out = fn()
            res.ms = time_ms(fn, bench.cpu)
        except Exception as exc:  # noqa: BLE001 -- report and go on with the other methods
            res.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            bench.results.append(res)
            print(f"  {method:<28} {res.note}", flush=True)
            return None
        res.tflops = (flops if flops is not None else dense_flops * density) / (res.ms * 1e-3) / 1e12
        if method == "sdpa-cudnn":
            cudnn_ms = res.ms
        if cudnn_ms:
            res.speedup_vs_cudnn = cudnn_ms / res.ms
        if ref is not None:
            res.rel_l2 = rel_l2(ref[0](out), ref[1])
            res.error_vs = error_vs
        bench.results.append(res)
        err = "" if res.rel_l2 is None else f"  err {res.rel_l2:.2e}"
        print(f"  {method:<28} {res.ms:9.3f} ms {res.tflops:8.1f} TFLOP/s{err}", flush=True)
        return out

    print(f"\n{name}: B={b} H={h} S={s} D={d} {dtype}", flush=True)
    # ---- dense baselines
    if bench.cpu:
        ref_out = record("sdpa-math", sdpa_fn(q, k, v, "MATH"))
    else:
        ref_out = record("sdpa-cudnn", sdpa_fn(q, k, v, "CUDNN_ATTENTION"))
        flash_out = record("sdpa-flash", sdpa_fn(q, k, v, "FLASH_ATTENTION"))
        if ref_out is None:
            ref_out = flash_out
    ident = (lambda o: o)
    dense_ref = None if ref_out is None else (ident, ref_out)

    # ---- ours, dense
    record("ours-bf16" if not bench.cpu else "ours-ref", lambda: sparse_flash_attention(q, k, v),
           ref=dense_ref, error_vs="sdpa")  # fmt: skip
    record("ours-int8", lambda: sparse_flash_attention(q, k, v, quant="int8"), ref=dense_ref, error_vs="sdpa")
    sage = load_sageattention()
    if sage is not None and not bench.cpu:
        record("sageattention", lambda: sage(q, k, v, tensor_layout="HND", is_causal=False),
               ref=dense_ref, error_vs="sdpa")  # fmt: skip
    else:
        bench.results.append(Result(name, "sageattention", 1.0, note="not importable"))

    def tuned(label, problem, fixed: list[str], ref=None, error_vs="", density=1.0):
        """The autotuner's choice for `problem` as a row, compared with the best fixed row."""
        from ditcompile.ops.tunables import TUNABLES
        if bench.out_of_time():
            return
        tunable = TUNABLES[problem.op]
        try:
            result = tune_problem(tunable, problem, lambda fn, budget: median_ms(fn, budget, device), args.tune_budget_ms)
        except RuntimeError as exc:
            bench.results.append(Result(name, f"tuned-{label}", density, note=f"failed: {exc}"[:160]))
            return
        winner = tunable.candidate(result.winner)
        record(f"tuned-{label}", lambda: winner.run(problem), density=density, ref=ref, error_vs=error_vs,
               note=f"winner {result.winner} (default {result.default}, {len(result.times_ms)} timed)")
        row = bench.results[-1]
        best = [r.ms for r in bench.results if r.shape == name and r.method in fixed and r.ms]
        if row.ms and best:
            row.note += f"; vs fixed {row.ms / min(best):.2f}"

    from ditcompile.ops.tunables import AttentionProblem
    tuned("dense", AttentionProblem(q, k, v, "bhsd", None, False, default="sdpa"),
          ["sdpa-cudnn", "sdpa-flash", "sdpa-math", "ours-bf16", "ours-ref"], ref=dense_ref, error_vs="sdpa")
    tuned("int8", AttentionProblem(q, k, v, "bhsd", None, False, quant="int8",
                                   default="reference" if bench.cpu else "triton"),
          ["ours-int8", "sageattention"], ref=dense_ref, error_vs="sdpa")

    # ---- block-sparse: ours vs FlexAttention on the same masks
    flex = None
    try:
        from torch.nn.attention.flex_attention import flex_attention

        flex = flex_attention if bench.cpu else torch.compile(flex_attention, dynamic=False)
    except Exception as exc:  # noqa: BLE001
        print(f"  flex_attention unavailable: {exc}", flush=True)
    for i, density in enumerate(DENSITIES):
        blocks = structured_block_mask(h, nqb, nkb, density, seed=i, device=device)
        mask = BlockSparseMask.from_dense_block_mask(blocks, MASK_BLOCK, MASK_BLOCK, s, s)
        real = mask.density()
        sample_ref = None
        if not bench.out_of_time():
            sample_ref = (lambda o: o[:, :, rows], masked_sdpa_rows(q, k, v, mask, rows))
        record(f"ours-sparse-{density}", lambda mask=mask: sparse_flash_attention(q, k, v, mask), density=real,
               ref=sample_ref, error_vs=f"masked sdpa, {len(rows)} rows")  # fmt: skip
        if density == DENSITIES[-1]:
            record(f"ours-sparse-int8-{density}", lambda mask=mask: sparse_flash_attention(q, k, v, mask, quant="int8"),
                   density=real, ref=sample_ref, error_vs=f"masked sdpa, {len(rows)} rows")  # fmt: skip
        if flex is not None and not bench.out_of_time():
            block_mask = flex_block_mask(mask, eager=bench.cpu)
            record(f"flex-sparse-{density}", lambda bm=block_mask: flex(q, k, v, block_mask=bm), density=real,
                   ref=sample_ref, error_vs=f"masked sdpa, {len(rows)} rows")  # fmt: skip
        if density == DENSITIES[-1]:
            tuned(f"sparse-{density}", AttentionProblem(q, k, v, "bhsd", None, False, block_mask=mask,
                                                        default="reference" if bench.cpu else "triton"),
                  [f"ours-sparse-{density}", f"flex-sparse-{density}"], ref=sample_ref,
                  error_vs=f"masked sdpa, {len(rows)} rows", density=real)


# ---------------------------------------------------------------------- report


def format_table(results: list[Result]) -> str:
    header = f"{'shape':<20} {'method':<28} {'density':>7} {'ms':>10} {'TFLOP/s':>8} {'vs cuDNN':>8} {'rel L2':>9}  note"
    lines = [header, "-" * len(header)]
    for r in results:
        def fmt(x, spec):
            return format(x, spec) if x is not None else "-"

        lines.append(
            f"{r.shape:<20} {r.method:<28} {r.density:7.3f} {fmt(r.ms, '10.3f'):>10} {fmt(r.tflops, '8.1f'):>8} "
            f"{fmt(r.speedup_vs_cudnn, '7.2f') + ('x' if r.speedup_vs_cudnn else ''):>8} "
            f"{fmt(r.rel_l2, '9.2e'):>9}  {r.note or r.error_vs}"
        )
    return "\n".join(lines)


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the first shape (Wan2.1-1.3B 480p)")
    parser.add_argument("--out", default="benchmarks/out/attention.json", help="JSON output path")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shape on CPU with the reference paths (checks this script, not speed)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=210.0,
                        help="stop starting new measurements after this many seconds (default 210)")  # fmt: skip
    parser.add_argument("--tune-budget-ms", type=float, default=30.0,
                        help="timing budget per candidate of the op-level autotuner's rows (ms, default 30)")
    parser.add_argument("--tune-configs", type=int, default=4,
                        help="kernel configs the autotuner times per variant (TuneSettings.max_candidates)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU (none found). "
              "Use --cpu-smoke to check the script on CPU with a tiny shape.", file=sys.stderr)  # fmt: skip
        return 2
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "0"  # CPU tensors take the reference fallback
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    bench = Bench(budget_s=args.budget_s, cpu=args.cpu_smoke)
    shapes = [CPU_SMOKE_SHAPE] if args.cpu_smoke else (SHAPES[:1] if args.quick else SHAPES)
    with torch.inference_mode():
        for shape in shapes:
            run_shape(bench, *shape, args)
            if not bench.cpu:
                torch.cuda.empty_cache()  # the shape's tensors are gone with run_shape's frame
    print("\n" + format_table(bench.results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": environment(),
        "args": vars(args),
        "elapsed_s": round(time.perf_counter() - bench.start, 1),
        "results": [asdict(r) for r in bench.results],
    }
    atomic_write_text(out, json.dumps(payload, indent=2))
    print(f"\nwrote {out} ({payload['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
